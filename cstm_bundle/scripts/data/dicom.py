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
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from ..errors import CSTMInputError

DICOM_DIR = "dicom"
"""A study folder's DICOM series, in place of ``image.nii.gz``."""

_SAME = {"ImageOrientationPatient": "orientation", "Rows": "row count", "Columns": "column count", "PixelSpacing": "pixel spacing"}
_TOLERANCE_MM = 1e-3
_GAP_TOLERANCE = 0.1
"""Slice gaps may differ by this fraction of their median (rounding of positions in the headers); more is refused."""


def _attribute(ds: Any, name: str, path: Path) -> Any:
    if name not in ds:
        raise CSTMInputError(path, f"DICOM image without {name}", "a cine MR image with position and timing tags")
    return ds.data_element(name).value


def _read_headers(folder: Path) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue  # README, DICOMDIR-less extras: not images of the series
        if "PixelData" in ds or "Rows" in ds:
            found.append((path, ds))
    if not found:
        raise CSTMInputError(folder, "no DICOM image found", "a folder holding one cine series")
    return found


def _check_one_acquisition(folder: Path, headers: list[tuple[Path, Any]]) -> None:
    for name, what in _SAME.items():
        values = {tuple(np.round(np.atleast_1d(np.asarray(_attribute(ds, name, p), float)), 4)) for p, ds in headers}
        if len(values) > 1:
            series = sorted({str(getattr(ds, "SeriesDescription", ds.get("SeriesInstanceUID", "?"))) for _, ds in headers})
            raise CSTMInputError(folder, f"mixed series: {len(values)} different {what}s among {len(headers)} "
                                         f"images (series {', '.join(series)})", "the images of one cine acquisition")


class CineSeries(NamedTuple):
    """A cine series sorted from its headers: ``files[z][t]``, the volume shape (H, W, Z, T) and the RAS affine."""

    files: list[list[Path]]
    shape: tuple[int, int, int, int]
    affine: np.ndarray


def scan_cine_dicom(folder: str | os.PathLike) -> CineSeries:
    """Sort a cine series folder from its headers alone (no pixel data is read).

    Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected onto the cross
    product of the column and row directions, so the voxel axes are right-handed in LPS), phases by ``TriggerTime`` (``InstanceNumber`` where absent).

    Raises:
        CSTMInputError: no images, mixed series, missing position/timing tags or unequal phase counts, naming the
            folder or file.
    """
    folder = Path(folder)
    headers = _read_headers(folder)
    _check_one_acquisition(folder, headers)
    path0, ds0 = headers[0]
    orientation = np.asarray(_attribute(ds0, "ImageOrientationPatient", path0), float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(col_dir, row_dir)  # axis 0 x axis 1: a right-handed (LPS) voxel frame

    slices: dict[float, list[tuple[float, Path]]] = {}
    origin: dict[float, np.ndarray] = {}
    for path, ds in headers:
        corner = np.asarray(_attribute(ds, "ImagePositionPatient", path), float)
        position = float(np.dot(corner, normal))
        key = next((k for k in slices if abs(k - position) < _TOLERANCE_MM), position)
        when = float(ds.TriggerTime) if "TriggerTime" in ds else float(_attribute(ds, "InstanceNumber", path))
        slices.setdefault(key, []).append((when, path))
        origin.setdefault(key, corner)
    positions = sorted(slices)
    counts = sorted({len(slices[s]) for s in positions})
    if len(counts) > 1:
        raise CSTMInputError(folder, f"slices have different numbers of phases ({counts})",
                             "every slice imaged at every phase")

    gaps = np.diff(positions)
    if len(gaps) > 1 and np.ptp(gaps) > max(_GAP_TOLERANCE * np.median(gaps), 0.1):
        raise CSTMInputError(folder, f"slice gaps are uneven ({', '.join(f'{g:.2f}' for g in gaps)} mm: a slice missing "
                             "or a second stack?)", "evenly spaced slices: one affine cannot place uneven slices, and "
                             "volumes and EF would be wrong")
    row_spacing, col_spacing = (float(v) for v in ds0.PixelSpacing)
    step = (positions[-1] - positions[0]) / (len(positions) - 1) if len(positions) > 1 else float(
        ds0.get("SliceThickness", 1.0))
    lps = np.eye(4)
    lps[:3, 0] = col_dir * row_spacing  # down the rows (array axis 0)
    lps[:3, 1] = row_dir * col_spacing  # along a row (array axis 1)
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin[positions[0]]
    files = [[path for _, path in sorted(slices[s])] for s in positions]
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
            volume[:, :, z, t] = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    return volume, series.affine


class CineDicomReader(ImageReader):
    """A MONAI ``ImageReader`` for :func:`read_cine_dicom`: ``LoadImaged(keys, reader=CineDicomReader())`` reads a
    series folder into a (H, W, Z, T) ``MetaTensor`` with its RAS affine; NIfTI files go to the next reader."""

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and Path(names[0]).is_dir()

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        return read_cine_dicom(data if isinstance(data, (str, os.PathLike)) else data[0])

    def get_data(self, img: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, dict]:
        volume, affine = img
        meta = {MetaKeys.AFFINE: affine, MetaKeys.ORIGINAL_AFFINE: affine.copy(), MetaKeys.SPATIAL_SHAPE:
                np.asarray(volume.shape[:3]), MetaKeys.SPACE: SpaceKeys.RAS, MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel"}
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
