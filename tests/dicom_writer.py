"""Write a (H, W, Z, T) volume as a cine MR DICOM series, so tests know the 4D order the reader must recover."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_cine_dicom(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    series_per_slice: bool = False,
    seed: int = 0,
    description: str = "cine SAX",
    series_uid: str | None = None,
    acquisition_number: int | None = None,
) -> list[Path]:
    """One file per frame, under shuffled names; uint16 pixels with a rescale slope.

    Args:
        volume: (H, W, Z, T) image, values >= 0.
        affine: voxel-to-RAS affine (4, 4) of ``volume``.
        folder: created if missing.
        series_per_slice: store every slice as its own series (as many scanners do).
        series_uid: the SeriesInstanceUID (one series only); None makes a new one.
        acquisition_number: written as AcquisitionNumber when given.
    Returns:
        the written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    col_dir, row_dir, normal = (lps[:3, i] / spacing[i] for i in range(3))
    slope = float(volume.max()) / 4000 or 1.0
    rng = np.random.default_rng(seed)
    h, w, z_count, t_count = volume.shape
    series = [series_uid or generate_uid() for _ in range(z_count if series_per_slice else 1)]
    names = rng.permutation(z_count * t_count)
    paths = []
    for z in range(z_count):
        for t in range(t_count):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
            ds.SeriesInstanceUID = series[z if series_per_slice else 0]
            ds.SeriesDescription = description
            ds.InstanceNumber = t + 1
            if acquisition_number is not None:
                ds.AcquisitionNumber = acquisition_number
            ds.TriggerTime = 40.0 * t
            ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + z * lps[:3, 2]]
            ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
            ds.SliceThickness = float(spacing[2])
            ds.Rows, ds.Columns = h, w
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = slope, 0
            ds.PixelData = np.round(volume[:, :, z, t] / slope).astype(np.uint16).tobytes()
            path = folder / f"IM{names[z * t_count + t]:05d}"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def retag(path: Path, edit: Callable[[Dataset], None]) -> None:
    """Rewrite the DICOM file ``path`` after ``edit(dataset)`` (to damage one file of a series)."""
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
