"""Cine DICOM in: 4D order and affine recovered from tags, mixed series refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import EnsureChannelFirstd, LoadImaged

from dicom_writer import retag, write_cine_dicom
from scripts.data import make_phantom_study
from scripts.data.dicom import CineDicomReader, read_cine_dicom, scan_cine_dicom
from scripts.errors import CSTMInputError, find_input_error


@pytest.fixture(scope="module")
def study():
    return make_phantom_study(seed=7, image_size=(40, 48), num_slices=4, num_phases=5)


@pytest.mark.parametrize("series_per_slice", [False, True], ids=["one_series", "series_per_slice"])
def test_volume_and_affine_are_recovered(study, series_per_slice: bool, tmp_path: Path) -> None:
    write_cine_dicom(study.image, study.affine, tmp_path / "dicom", series_per_slice)
    volume, affine = read_cine_dicom(tmp_path / "dicom")
    assert volume.shape == study.image.shape == (40, 48, 4, 5)
    np.testing.assert_allclose(volume, study.image, atol=study.image.max() / 4000)  # uint16 quantisation
    np.testing.assert_allclose(affine, study.affine, atol=1e-5)


def test_oblique_orientation_round_trips(study, tmp_path: Path) -> None:
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = study.affine.copy()
    affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = [10.0, -20.0, 35.0]
    write_cine_dicom(study.image, affine, tmp_path / "dicom")
    np.testing.assert_allclose(scan_cine_dicom(tmp_path / "dicom").affine, affine, atol=1e-5)


def test_load_imaged_reads_a_series_folder(study, tmp_path: Path) -> None:
    write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    (tmp_path / "dicom" / "README.txt").write_text("not an image")  # skipped
    d = LoadImaged("image", reader=CineDicomReader(), image_only=True)({"image": str(tmp_path / "dicom")})
    d = EnsureChannelFirstd("image", channel_dim="no_channel")(d)
    assert d["image"].shape == (1, 40, 48, 4, 5)
    np.testing.assert_allclose(d["image"].affine.numpy(), study.affine, atol=1e-5)


def test_mixed_series_are_refused(study, tmp_path: Path) -> None:
    write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    localiser = np.zeros((32, 32, 1, 1), np.float32) + 1
    write_cine_dicom(localiser, np.diag([-2.0, -2.0, 10.0, 1.0]), tmp_path / "dicom" / "loc", description="localizer")
    with pytest.raises(CSTMInputError, match=r"dicom: mixed series: 2 different .* \(series cine SAX, localizer\)"):
        scan_cine_dicom(tmp_path / "dicom")


def test_unequal_phase_counts_and_empty_folders_are_refused(study, tmp_path: Path) -> None:
    files = write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    files[0].unlink()
    with pytest.raises(CSTMInputError, match=r"slices have different numbers of phases \(\[4, 5\]\)"):
        scan_cine_dicom(tmp_path / "dicom")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CSTMInputError, match="empty: no DICOM image found"):
        scan_cine_dicom(tmp_path / "empty")


def test_a_missing_slice_is_refused_not_averaged(study, tmp_path: Path) -> None:
    """Slices at 0, 1, 3 (slice 2's files gone): one affine would spread them evenly and the volumes would be wrong."""
    import pydicom

    files = write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    z_of = {f: round(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), 3) for f in files}
    third = sorted(set(z_of.values()))[2]
    for f, z in z_of.items():
        if z == third:
            f.unlink()
    with pytest.raises(CSTMInputError, match=r"dicom: slice gaps are uneven \(.* mm: a slice missing"):
        scan_cine_dicom(tmp_path / "dicom")


def _scanner_cine(folder: Path, gap_mm: float = 7.5) -> dict:
    """A 2-slice, 3-phase cine made from pydicom's MR test file (a real scanner's header, 0.3125 mm pixels), each
    frame in another transfer syntax (explicit little, big endian, implicit): files our own writer did not make."""
    import pydicom
    from pydicom.data import get_testdata_file

    sources = [get_testdata_file(n) for n in ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm")]
    folder.mkdir(parents=True)
    frames = {}
    for z in range(2):
        for t in range(3):
            ds = pydicom.dcmread(sources[(z + t) % 3])
            orientation = np.asarray(ds.ImageOrientationPatient, float)
            normal = np.cross(orientation[3:], orientation[:3])
            ds.ImagePositionPatient = [
                float(v) for v in np.asarray(ds.ImagePositionPatient, float) + z * gap_mm * normal
            ]
            ds.TriggerTime = 40.0 * t
            ds.InstanceNumber = 1 + 3 * z + t
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(folder / f"IM{5 - 3 * z - t:04d}", enforce_file_format=True)
            frames[z, t] = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
                ds.get("RescaleIntercept", 0)
            )
    return frames


def test_a_scanner_series_in_three_transfer_syntaxes_is_read_in_order(tmp_path: Path) -> None:
    frames = _scanner_cine(tmp_path / "dicom")
    volume, affine = read_cine_dicom(tmp_path / "dicom")
    assert volume.shape == (64, 64, 2, 3)
    for (z, t), frame in frames.items():
        np.testing.assert_allclose(volume[:, :, z, t], frame)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.3125, 0.3125, 7.5], atol=1e-4)  # anisotropic


def test_a_truncated_scanner_file_is_refused_by_name(tmp_path: Path) -> None:
    _scanner_cine(tmp_path / "dicom")
    victim = sorted((tmp_path / "dicom").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-4000])  # pixel data cut short
    with pytest.raises(CSTMInputError, match=victim.name):
        read_cine_dicom(tmp_path / "dicom")


def test_a_repeat_with_another_acquisition_number_is_refused(study, tmp_path: Path) -> None:
    """One series, the cine acquired twice (AcquisitionNumber 1 and 2): each slice would get both cycles."""
    uid = pydicom.uid.generate_uid()
    write_cine_dicom(study.image, study.affine, tmp_path / "dicom" / "a", series_uid=uid, acquisition_number=1)
    write_cine_dicom(study.image, study.affine, tmp_path / "dicom" / "b", series_uid=uid, acquisition_number=2)
    with pytest.raises(CSTMInputError, match=r"dicom: 2 acquisitions at slice position .* differ in AcquisitionNumber"):
        scan_cine_dicom(tmp_path / "dicom")


def _colour(ds: pydicom.Dataset) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = ds.PixelData * 3


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda path: path.write_bytes(path.read_bytes()[:300]),
            "DICOM image without an image header",
        ),  # cut in the header
        (lambda path: retag(path, _colour), r"3 samples per pixel \(RGB\); expected a greyscale MR image"),
    ],
    ids=["header_cut_short", "colour"],
)
def test_a_damaged_or_colour_file_is_refused_by_name(study, damage, expected: str, tmp_path: Path) -> None:
    files = write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    damage(files[3])
    with pytest.raises(CSTMInputError, match=f"{files[3].name}: {expected}"):
        scan_cine_dicom(tmp_path / "dicom")


def test_an_unreadable_file_is_refused_not_skipped(study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file we may not read (chmod does not stop root, so dcmread is made to fail) would drop one frame."""
    files = write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    dcmread = pydicom.dcmread

    def denied(path, *args, **kwargs):
        if Path(path) == files[3]:
            raise PermissionError(13, "Permission denied", str(path))
        return dcmread(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", denied)
    with pytest.raises(CSTMInputError, match=f"{files[3].name}: cannot read the file \\(Permission denied\\)"):
        scan_cine_dicom(tmp_path / "dicom")


def test_our_refusal_is_not_hidden_by_another_reader(study, tmp_path: Path) -> None:
    """Given a reader, MONAI's LoadImage tries every registered reader when one fails: our error must still reach the
    user, not "cannot find a suitable reader" nor MONAI's PydicomReader reading the folder we refused."""
    files = write_cine_dicom(study.image, study.affine, tmp_path / "dicom")
    files[0].write_bytes(files[0].read_bytes()[:-500])  # pixel data cut short
    with pytest.raises(Exception) as raised:
        LoadImaged("image", reader=CineDicomReader(), image_only=True)({"image": str(tmp_path / "dicom")})
    error = find_input_error(raised.value)
    assert error is not None, f"{type(raised.value).__name__}: {raised.value}"
    assert f"{files[0].name}: cannot read the DICOM pixel data" in str(error)
