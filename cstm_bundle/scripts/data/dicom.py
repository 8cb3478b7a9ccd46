"""Cine MRI from DICOM: a folder of 2D images sorted into a (H, W, Z, T) volume with its RAS affine.

Many scanners store a short-axis cine as one series per slice: several series are accepted when they are parts of one
acquisition (same orientation, matrix and pixel spacing, distinct slice positions, the same number of phases).
Anything else (a localiser beside the cine, two cines of different matrix) is a "mixed series" error that names the
folder and what differs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.utils import MetaKeys, SpaceKeys

from ..errors import CSTMInputError
from ..logs import quiet_known_noise

DICOM_DIR = "dicom"
"""A study folder's DICOM series, in place of ``image.nii.gz``."""

_SAME = {
    "ImageOrientationPatient": "orientation",
    "Rows": "row count",
    "Columns": "column count",
    "PixelSpacing": "pixel spacing",
}
_TOLERANCE_MM = 1e-3
_SAME_PHASE_MS = 1e-3
"""Trigger times closer than this are one phase (two files of it at one position: a duplicate)."""
_GAP_TOLERANCE = 0.1
"""Slice gaps may differ by this fraction of their median (rounding of positions in the headers); more is refused."""


def _attribute(ds: Any, name: str, path: Path) -> Any:
    if name not in ds:
        raise CSTMInputError(path, f"DICOM image without {name}", "a cine MR image with position and timing tags")
    return ds.data_element(name).value


def _number(ds: Any, name: str, path: Path) -> float:
    """The tag ``name`` of ``ds`` as a float (a DS or IS value), or an error naming the file and the tag."""
    value = _attribute(ds, name, path)
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise CSTMInputError(path, f"DICOM {name} is {value!r}", "a number") from e


def _read_headers(folder: Path) -> list[tuple[Path, Any]]:
    """The headers of the images under ``folder``; other files (README, DICOMDIR, reports) are skipped, but an
    unreadable file, a file of the images' SOP class without an image header (a header cut short) and a multi-frame
    or colour image are refused, naming the file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    found, other = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # README, notes: not DICOM files
        except OSError as e:  # skipping an unreadable image would drop a frame silently
            raise CSTMInputError(path, f"cannot read the file ({e.strerror or e})", "a readable DICOM file") from e
        except Exception as e:  # pydicom raises many types for a damaged header
            raise CSTMInputError(path, f"cannot be read as DICOM ({e})", "a complete DICOM file") from e
        (found if "PixelData" in ds or "Rows" in ds else other).append((path, ds))
    if not found:
        raise CSTMInputError(folder, "no DICOM image found", "a folder holding one cine series")
    image_classes = {_sop_class(ds) for _, ds in found}
    for path, ds in other:
        if _sop_class(ds) in image_classes:
            raise CSTMInputError(
                path,
                "DICOM image without an image header (Rows, Columns): file cut short?",
                "a complete image file, or no such file in the series folder",
            )
    for path, ds in found:
        frames = ds.get("NumberOfFrames", 1)
        if int(frames or 1) > 1:
            raise CSTMInputError(
                path,
                f"multi-frame DICOM image ({frames} frames in one file)",
                "one 2D frame per file (export an enhanced multi-frame series as classic images)",
            )
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise CSTMInputError(
                path,
                f"{ds.SamplesPerPixel} samples per pixel " f"({ds.get('PhotometricInterpretation', 'colour')})",
                "a greyscale MR image",
            )
    return found


def _sop_class(ds: Any) -> str | None:
    """The file's SOP class (MR Image Storage, ...), from the dataset or else its file meta information."""
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID", None) or (meta.get("MediaStorageSOPClassUID", None) if meta else None)
    return None if uid is None else str(uid)


def _check_one_acquisition(folder: Path, headers: list[tuple[Path, Any]]) -> None:
    for name, what in _SAME.items():
        values = {tuple(np.round(np.atleast_1d(np.asarray(_attribute(ds, name, p), float)), 4)) for p, ds in headers}
        if len(values) > 1:
            series = sorted(
                {str(getattr(ds, "SeriesDescription", ds.get("SeriesInstanceUID", "?"))) for _, ds in headers}
            )
            raise CSTMInputError(
                folder,
                f"mixed series: {len(values)} different {what}s among {len(headers)} "
                f"images (series {', '.join(series)})",
                "the images of one cine acquisition",
            )
    timed = [p for p, ds in headers if "TriggerTime" in ds]
    if 0 < len(timed) < len(headers):
        untimed = next(p for p, ds in headers if "TriggerTime" not in ds)
        raise CSTMInputError(
            untimed,
            f"DICOM image without TriggerTime, while {len(timed)} of the {len(headers)} "
            "images of the folder have one",
            "TriggerTime on every image (or on none: " "then InstanceNumber orders the phases)",
        )


_ACQUISITION = ("SeriesInstanceUID", "AcquisitionNumber")
"""The tags that tell one acquisition from another (a repeat of a slice has other values)."""


def _acquisition(ds: Any) -> tuple[str, ...]:
    return tuple(str(ds.get(name, "")) for name in _ACQUISITION)


def _check_one_frame_each(folder: Path, position: float, frames: list[tuple[float, Path, Any]]) -> None:
    """Every image at one slice position comes from one acquisition and has its own phase.

    Args:
        folder: the series folder, for the message.
        position: the slice position along the normal (mm).
        frames: (trigger time or instance number, file, header) of the images at ``position``, sorted.
    Raises:
        CSTMInputError: two acquisitions (series or acquisition numbers) at one position, or two files of one phase.
    """
    first: dict[tuple[str, ...], Path] = {}
    for _, path, ds in frames:
        first.setdefault(_acquisition(ds), path)
    if len(first) > 1:
        (a, path_a), (b, path_b) = list(first.items())[:2]
        differ = " and ".join(name for name, x, y in zip(_ACQUISITION, a, b, strict=True) if x != y)
        raise CSTMInputError(
            folder,
            f"{len(first)} acquisitions at slice position {position:.2f} mm "
            f"({path_a.relative_to(folder)} and {path_b.relative_to(folder)} differ in {differ})",
            "one acquisition of each slice: move the repeat into a study folder of its own",
        )
    for (when_a, path_a, ds), (when_b, path_b, _) in zip(frames, frames[1:], strict=False):
        if abs(when_b - when_a) < _SAME_PHASE_MS:
            phase = f"trigger time {when_a:g} ms" if "TriggerTime" in ds else f"instance number {when_a:g}"
            raise CSTMInputError(
                folder,
                f"duplicate frame: {path_a.relative_to(folder)} and "
                f"{path_b.relative_to(folder)} have the same slice position ({position:.2f} mm)"
                f" and {phase}",
                "one file per slice and phase",
            )


class CineSeries(NamedTuple):
    """A cine series sorted from its headers: ``files[z][t]``, the volume shape (H, W, Z, T) and the RAS affine."""

    files: list[list[Path]]
    shape: tuple[int, int, int, int]
    affine: np.ndarray


def scan_cine_dicom(folder: str | os.PathLike) -> CineSeries:
    """Sort a cine series folder from its headers alone (no pixel data is read).

    Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected onto the cross
    product of the column and row directions, so the voxel axes are right-handed in LPS), phases by ``TriggerTime``
    (``InstanceNumber`` where absent).

    Raises:
        CSTMInputError: naming the folder or file: no images; mixed series; a multi-frame, colour or cut-short file;
            missing or unreadable position/timing tags, or TriggerTime on some images only; two acquisitions at one
            slice position (series or AcquisitionNumber); two files of one slice and phase; unequal phase counts;
            uneven slice gaps.
    """
    folder = Path(folder)
    headers = _read_headers(folder)
    _check_one_acquisition(folder, headers)
    path0, ds0 = headers[0]
    orientation = np.asarray(_attribute(ds0, "ImageOrientationPatient", path0), float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(col_dir, row_dir)  # axis 0 x axis 1: a right-handed (LPS) voxel frame

    slices: dict[float, list[tuple[float, Path, Any]]] = {}
    origin: dict[float, np.ndarray] = {}
    for path, ds in headers:
        corner = np.asarray(_attribute(ds, "ImagePositionPatient", path), float)
        position = float(np.dot(corner, normal))
        key = next((k for k in slices if abs(k - position) < _TOLERANCE_MM), position)
        when = _number(ds, "TriggerTime" if "TriggerTime" in ds else "InstanceNumber", path)
        slices.setdefault(key, []).append((when, path, ds))
        origin.setdefault(key, corner)
    positions = sorted(slices)
    for s in positions:
        slices[s].sort(key=lambda frame: frame[:2])
        _check_one_frame_each(folder, s, slices[s])
    counts = sorted({len(slices[s]) for s in positions})
    if len(counts) > 1:
        raise CSTMInputError(
            folder, f"slices have different numbers of phases ({counts})", "every slice imaged at every phase"
        )

    gaps = np.diff(positions)
    if len(gaps) > 1 and np.ptp(gaps) > max(_GAP_TOLERANCE * np.median(gaps), 0.1):
        raise CSTMInputError(
            folder,
            f"slice gaps are uneven ({', '.join(f'{g:.2f}' for g in gaps)} mm: a slice missing " "or a second stack?)",
            "evenly spaced slices: one affine cannot place uneven slices, and " "volumes and EF would be wrong",
        )
    row_spacing, col_spacing = (float(v) for v in ds0.PixelSpacing)
    step = (
        (positions[-1] - positions[0]) / (len(positions) - 1)
        if len(positions) > 1
        else float(ds0.get("SliceThickness", 1.0))
    )
    lps = np.eye(4)
    lps[:3, 0] = col_dir * row_spacing  # down the rows (array axis 0)
    lps[:3, 1] = row_dir * col_spacing  # along a row (array axis 1)
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin[positions[0]]
    files = [[path for _, path, _ in slices[s]] for s in positions]
    shape = (int(ds0.Rows), int(ds0.Columns), len(positions), counts[0])
    return CineSeries(files, shape, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)  # LPS -> RAS


def read_cine_dicom(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a cine series folder (see :func:`scan_cine_dicom`), applying ``RescaleSlope`` / ``RescaleIntercept``.

    Args:
        folder: the series folder (searched recursively; non-DICOM files are skipped).
    Returns:
        the image (H, W, Z, T) float32, rows along H, and its voxel-to-RAS affine (4, 4).
    Raises:
        CSTMInputError: as :func:`scan_cine_dicom`, or unreadable pixel data (naming the file).
    """
    import pydicom

    series = scan_cine_dicom(folder)
    volume = np.empty(series.shape, np.float32)
    for z, phases in enumerate(series.files):
        for t, path in enumerate(phases):
            try:
                ds = pydicom.dcmread(path)
                pixels = ds.pixel_array.astype(np.float32)
            except Exception as e:  # pydicom raises many types for damaged or undecodable pixel data
                raise CSTMInputError(path, f"cannot read the DICOM pixel data ({e})", "a readable image") from e
            if pixels.shape != series.shape[:2]:
                raise CSTMInputError(
                    path,
                    f"DICOM pixel data of shape {pixels.shape}",
                    f"one {series.shape[0]} x {series.shape[1]} greyscale frame",
                )
            volume[:, :, z, t] = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    return volume, series.affine


class CineTags(NamedTuple):
    """The patient and timing tags of a cine series that clinical reports use; None where no image has a usable value.

    Patient and per-image tags are the median over the images that carry a positive number (an empty, zero or
    unreadable value counts as absent: anonymised exports blank PatientSize/PatientWeight or write 0).
    """

    patient_size_m: float | None
    """PatientSize (0010,1020), metres."""
    patient_weight_kg: float | None
    """PatientWeight (0010,1030), kg."""
    slice_thickness_mm: float | None
    """SliceThickness (0018,0050): the excited slab, not the centre-to-centre slice spacing."""
    nominal_interval_ms: float | None
    """NominalInterval (0018,1062): the average R-R interval the scanner gated on."""
    heart_rate_bpm: float | None
    """HeartRate (0018,1088)."""
    trigger_times_ms: np.ndarray | None
    """(Z, T) TriggerTime (0018,1060) of ``files[z][t]`` in :func:`scan_cine_dicom`'s order; None without them."""


_TAG_NAMES = ("PatientSize", "PatientWeight", "SliceThickness", "NominalInterval", "HeartRate", "TriggerTime")


def read_cine_tags(folder: str | os.PathLike) -> CineTags:
    """The :class:`CineTags` of a cine series folder, from its headers (no pixel data is read).

    Raises:
        CSTMInputError: as :func:`scan_cine_dicom`.
    """
    import pydicom

    series = scan_cine_dicom(folder)
    headers = [
        [pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAG_NAMES)) for path in phases]
        for phases in series.files
    ]  # (Z, T)
    flat = [ds for phases in headers for ds in phases]

    def median(name: str) -> float | None:
        values = [v for v in (_positive(ds, name) for ds in flat) if v is not None]
        return float(np.median(values)) if values else None

    times = None
    if all("TriggerTime" in ds for ds in flat):  # scan_cine_dicom allows all or none
        times = np.array([[float(ds.TriggerTime) for ds in phases] for phases in headers])  # (Z, T)
    return CineTags(
        median("PatientSize"),
        median("PatientWeight"),
        median("SliceThickness"),
        median("NominalInterval"),
        median("HeartRate"),
        times,
    )


def _positive(ds: Any, name: str) -> float | None:
    """The tag ``name`` of ``ds`` as a positive float, or None (absent, empty, 0 or not a number)."""
    try:
        value = float(ds.get(name, None))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


class CineDicomReader(ImageReader):
    """A MONAI ``ImageReader`` for :func:`read_cine_dicom`: ``LoadImaged(keys, reader=CineDicomReader())`` reads a
    series folder into a (H, W, Z, T) ``MetaTensor`` with its RAS affine, and hands a NIfTI file to MONAI's
    ``NibabelReader`` itself.

    ``read`` only takes the folder and ``get_data`` reads it: given a reader, MONAI's ``LoadImage`` calls every
    registered reader's ``read`` in turn inside ``try/except Exception`` (monai/transforms/io/array.py,
    ``LoadImage.__call__``), so an error raised in ``read`` would be hidden behind "cannot find a suitable reader",
    or MONAI's own ``PydicomReader`` would read the folder we refused. ``get_data`` runs outside that ``try``, so our
    :class:`CSTMInputError` reaches the user. A NIfTI file is read here by the ``NibabelReader`` that ``LoadImage``
    would try next (same defaults, same result): refusing it would make ``LoadImage`` log "CineDicomReader: unable
    to load .../image.nii.gz" for every NIfTI study.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nifti = NibabelReader()
        quiet_known_noise()  # before LoadImage builds its default readers (nvImageCodec's notice)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """One DICOM series folder, or one NIfTI file (``.nii``, ``.nii.gz``)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and (Path(names[0]).is_dir() or self.nifti.verify_suffix(names[0]))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """The series folder, unread (see the class docstring), or the NIfTI file opened by ``NibabelReader``.

        Raises:
            CSTMInputError: ``data`` is neither one folder nor one NIfTI file (``LoadImage`` then tries its next
                reader).
        """
        if not self.verify_suffix(data):
            raise CSTMInputError(str(data), "not a DICOM series folder", "a folder or a NIfTI file")
        name = Path(data if isinstance(data, (str, os.PathLike)) else data[0])
        return name if name.is_dir() else self.nifti.read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Read the series folder ``img`` (:func:`read_cine_dicom`) into (H, W, Z, T) and its MONAI metadata; a NIfTI
        image as ``NibabelReader`` does."""
        if not isinstance(img, Path):
            return self.nifti.get_data(img)
        volume, affine = read_cine_dicom(img)
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape[:3]),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
        }
        return volume, meta


def to_nifti(folder: str, output: str, overwrite: bool = False) -> None:
    """Write a cine series folder as a 4D NIfTI (H, W, Z, T), e.g. to draw the annotation on it.

    ``cd cstm_bundle && python -m scripts.data.dicom SERIES_DIR OUT.nii.gz``
    """
    from ..io import save_nifti

    volume, affine = read_cine_dicom(folder)
    print(f"{folder}: {volume.shape} (H, W, Z, T) written to {save_nifti(volume, affine, output, overwrite)}")


if __name__ == "__main__":
    import fire

    fire.Fire(to_nifti)
