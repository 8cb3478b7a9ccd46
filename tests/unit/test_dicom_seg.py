"""DICOM SEG out for DICOM in: the label map survives the round trip through highdicom, frame by source instance."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from dicom_writer import retag, write_cine_dicom
from scripts.data import SaveDicomSegd, make_phantom_study, scan_cine_dicom
from scripts.data.dicom_seg import SEG_FILE, SEGMENTS
from scripts.errors import CSTMInputError


@pytest.fixture(scope="module")
def study():
    return make_phantom_study(seed=7, image_size=(40, 48), num_slices=4, num_phases=5)


def _dicom_study(study, folder: Path, series_per_slice: bool = False) -> Path:
    """``folder/dicom/``: the phantom as a cine series with the UIDs a scanner writes (one study, one frame of
    reference), shuffled file names."""
    files = write_cine_dicom(study.image, study.affine, folder / "dicom", series_per_slice)
    study_uid, frame_uid = generate_uid(), generate_uid()

    def scanner_uids(ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.PatientID = study_uid, frame_uid, "phantom"

    for f in files:
        retag(f, scanner_uids)
    return folder / "dicom"


def read_seg_labels(path: Path, series_dir: Path) -> tuple[np.ndarray, hd.seg.Segmentation]:
    """The (H, W, Z, T) label map of a SEG file, rebuilt from each frame's referenced source instance: the instance
    at (z, t) of the series (in the reader's order) gets the SEG's pixels for its SOP Instance UID."""
    seg = hd.seg.segread(path)
    series = scan_cine_dicom(series_dir)
    uids = [[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in row] for row in series.files]
    flat = [uid for row in uids for uid in row]
    pixels = seg.get_pixels_by_source_instance(flat, combine_segments=True)  # (Z*T, H, W)
    z_count, t_count = series.shape[2:]
    return pixels.reshape(z_count, t_count, *series.shape[:2]).transpose(2, 3, 0, 1), seg  # (H, W, Z, T)


@pytest.mark.parametrize("series_per_slice", [False, True], ids=["one_series", "series_per_slice"])
def test_seg_reads_back_to_the_label_map(study, series_per_slice: bool, tmp_path: Path) -> None:
    series_dir = _dicom_study(study, tmp_path / "s1", series_per_slice)
    labels = study.label.astype(np.uint8)  # (H, W, Z, T), classes 0..3
    writer = SaveDicomSegd("pred", tmp_path / "out", studies=[{"study": "s1", "study_dir": str(tmp_path / "s1")}])
    pred = torch.as_tensor(labels)[None]  # (1, H, W, Z, T)
    writer({"pred": pred, "study": "s1", "study_dir": str(tmp_path / "s1")})
    path = tmp_path / "out" / "s1" / SEG_FILE
    assert writer.output_files("s1") == [path] and path.is_file()

    back, seg = read_seg_labels(path, series_dir)
    np.testing.assert_array_equal(back, labels)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_dir.iterdir()]
    sources = {str(ds.SOPInstanceUID) for ds in headers}
    triples = {
        tuple(str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")) for ds in headers
    }
    assert {tuple(map(str, uids)) for uids in seg.get_source_image_uids()} == triples  # every instance, its series
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame references one source instance of the series
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        assert str(source.ReferencedSOPInstanceUID) in sources
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.get_segment_numbers() == [1, 2, 3]
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == list(SEGMENTS.values())
    types = [seg.get_segment_description(n).segmented_property_type for n in (1, 2, 3)]
    blood, myocardium = ("SCT", "87612001"), ("SCT", "49848007")
    assert [(c.scheme_designator, c.value) for c in types] == [blood, myocardium, blood]
    regions = [seg.get_segment_description(n).anatomic_regions for n in (1, 3)]
    assert [r[0].value for r in regions] == ["53085002", "87878005"]  # right and left ventricle
    present = {(n, z, t) for n in SEGMENTS for z in range(4) for t in range(5) if (labels[:, :, z, t] == n).any()}
    assert int(seg.NumberOfFrames) == len(present)  # one frame per (class, slice, phase) where the class is
    assert str(seg.StudyInstanceUID) == str(pydicom.dcmread(next(series_dir.iterdir())).StudyInstanceUID)


def test_overwrite_and_nifti_studies(study, tmp_path: Path) -> None:
    _dicom_study(study, tmp_path / "s1")
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "image.nii.gz").write_bytes(b"")  # only its name matters here
    studies = [{"study": s, "study_dir": str(tmp_path / s)} for s in ("s1", "nifti")]
    writer = SaveDicomSegd("pred", tmp_path / "out", studies=studies)
    first = {
        "pred": torch.zeros((1, 40, 48, 4, 5), dtype=torch.uint8),
        "study": "s1",
        "study_dir": studies[0]["study_dir"],
    }
    writer(first)
    with pytest.raises(CSTMInputError, match=f"{SEG_FILE}: output file exists"):
        writer(first)
    SaveDicomSegd("pred", tmp_path / "out", overwrite=True)(first)  # an empty label map: a valid, empty SEG
    back, _ = read_seg_labels(tmp_path / "out" / "s1" / SEG_FILE, tmp_path / "s1" / "dicom")
    assert not back.any()
    writer({"pred": first["pred"], "study": "nifti", "study_dir": studies[1]["study_dir"]})
    assert writer.output_files("nifti") == [] and not (tmp_path / "out" / "nifti").exists()
    assert SaveDicomSegd("pred", tmp_path / "out", enabled=False, studies=studies).output_files("s1") == []


def test_a_series_without_frame_of_reference_is_refused_by_name(study, tmp_path: Path) -> None:
    series_dir = _dicom_study(study, tmp_path / "s1")
    victim = sorted(series_dir.iterdir())[2]

    def strip(ds: pydicom.Dataset) -> None:
        del ds.FrameOfReferenceUID

    retag(victim, strip)
    writer = SaveDicomSegd("pred", tmp_path / "out")
    with pytest.raises(CSTMInputError, match=f"{victim.name}: DICOM image without FrameOfReferenceUID"):
        writer({"pred": torch.zeros((1, 40, 48, 4, 5)), "study": "s1", "study_dir": str(tmp_path / "s1")})
