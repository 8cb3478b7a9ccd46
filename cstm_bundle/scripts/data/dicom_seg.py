"""DICOM out for DICOM in: the 4D label map as one DICOM SEG on the source series' frames (highdicom).

``<output_dir>/<study>/segmentation.dcm`` is a BINARY Segmentation with one segment per class (1 RV blood pool,
2 LV myocardium, 3 LV blood pool, SNOMED CT codes) and one frame per (segment, slice, phase) where that class is
present; each frame references the source MR instance that the reader placed at that (z, t) (its SOP Instance UID
in the frame's Derivation Image Sequence) and carries the source's plane position.

highdicom 0.28 refuses frames that share a plane position ("Plane positions must not contain duplicates"; 3D+t is
an open request, highdicom issues #174 and #369) and source images of more than one series, while a cine puts T
frames at every position, often one series per slice. So highdicom builds one Segmentation per (series, phase),
whose frames are all at distinct positions, and :func:`cine_segmentation` joins them into one instance: the
per-frame functional groups as highdicom wrote them, a third dimension index (Temporal Position Index in the Frame
Content Sequence, as the standard's multi-frame temporal images do), the union of the referenced series and the
bit-packed frames. Everything else (patient, study, equipment, segment descriptions, shared functional groups)
is highdicom's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..errors import CSTMInputError
from ..io import write_atomic
from .dicom import DICOM_DIR, scan_cine_dicom
from .outputs import output_folder
from .readers import study_image

logger = logging.getLogger(__name__)

SEG_FILE = "segmentation.dcm"
SEGMENTS = {1: "RV blood pool", 2: "LV myocardium", 3: "LV blood pool"}
"""Segment number (= label value) -> segment label."""
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
"""Type 1 attributes of the source images that a SEG needs (its study, references and frame of reference)."""
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
"""Type 2 attributes that highdicom copies into the SEG: written empty where the source leaves them out."""
_TEMPORAL_POSITION_INDEX = 0x00209128
_FRAME_CONTENT_SEQUENCE = 0x00209111


def bundle_version() -> str:
    """The bundle's version, from ``configs/metadata.json`` ("unknown" if it cannot be read)."""
    try:
        return str(
            json.loads((Path(__file__).resolve().parents[2] / "configs" / "metadata.json").read_text())["version"]
        )
    except (OSError, ValueError, KeyError):
        return "unknown"


def segment_descriptions(version: str) -> list[Any]:
    """The three segments (numbers 1-3 = label values), coded in SNOMED CT: blood (category tissue) in the right
    or left ventricle (anatomic region), and the left ventricle myocardium (category anatomical structure).

    Args:
        version: the software version recorded as the segmentation algorithm's version.
    Returns:
        ``highdicom.seg.SegmentDescription`` items in segment-number order.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="CSTM", version=version, family=codes.cid7162.ArtificialIntelligence
    )
    blood = {"segmented_property_category": codes.SCT.Tissue, "segmented_property_type": codes.SCT.Blood}
    kinds = {
        1: {**blood, "anatomic_regions": [codes.SCT.RightVentricle]},
        2: {
            "segmented_property_category": codes.SCT.AnatomicalStructure,
            "segmented_property_type": codes.SCT.LeftVentricleMyocardium,
        },
        3: {**blood, "anatomic_regions": [codes.SCT.LeftVentricle]},
    }
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            **kinds[number],
        )
        for number, label in SEGMENTS.items()
    ]


def read_source_headers(folder: str | os.PathLike) -> list[list[Any]]:
    """The headers (no pixel data) of a cine series folder, ``headers[z][t]`` in the reader's order
    (:func:`~.dicom.scan_cine_dicom`, the order of :func:`~.dicom.read_cine_dicom`'s volume).

    Raises:
        CSTMInputError: as :func:`~.dicom.scan_cine_dicom`; or a source image without a Type 1 attribute the SEG
            needs (``FrameOfReferenceUID``, ``StudyInstanceUID``, ...), or images of several studies or frames of
            reference (naming the file).
    """
    import pydicom

    series = scan_cine_dicom(folder)
    headers = [[pydicom.dcmread(path, stop_before_pixels=True) for path in phases] for phases in series.files]
    first: dict[str, tuple[Any, Path]] = {}
    for path, ds in ((p, headers[z][t]) for z, phases in enumerate(series.files) for t, p in enumerate(phases)):
        missing = [name for name in _REQUIRED if not ds.get(name)]
        if missing:
            raise CSTMInputError(
                path,
                f"DICOM image without {', '.join(missing)}",
                "the UIDs that a DICOM SEG references (--dicom_seg false skips it)",
            )
        for name in ("StudyInstanceUID", "FrameOfReferenceUID"):
            if first.setdefault(name, (ds.get(name), path))[0] != ds.get(name):
                raise CSTMInputError(
                    path,
                    f"{name} differs from that of {first[name][1].name}",
                    "one study and frame of reference (--dicom_seg false skips the SEG)",
                )
        for name in _TYPE2:
            if name not in ds:
                setattr(ds, name, None)
    return headers


def cine_segmentation(labels: np.ndarray, headers: Sequence[Sequence[Any]], version: str = "unknown") -> Any:
    """A BINARY DICOM SEG of a cine label map on its source instances (see the module docstring).

    Args:
        labels: (H, W, Z, T) integer label map, values 0..3 (0 background), on the grid of ``headers``.
        headers: ``headers[z][t]``, the source instance of frame (z, t) (:func:`read_source_headers`).
        version: software version written into the SEG.
    Returns:
        the ``highdicom.seg.Segmentation`` (a pydicom ``Dataset``); frames sorted by (segment, phase, slice),
        empty frames left out.
    Raises:
        ValueError: ``labels`` does not match ``headers`` or holds values outside 0..3.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    h, w, z_count, t_count = labels.shape
    if (len(headers), len(headers[0])) != (z_count, t_count) or (
        int(headers[0][0].Rows),
        int(headers[0][0].Columns),
    ) != (h, w):
        raise ValueError(
            f"labels of shape {labels.shape} (H, W, Z, T) do not match the {len(headers)} x {len(headers[0])} "
            f"source images of {headers[0][0].Rows} x {headers[0][0].Columns}."
        )
    if labels.min() < 0 or labels.max() > max(SEGMENTS):
        raise ValueError(f"labels hold values {np.unique(labels).tolist()}; a SEG describes 0..{max(SEGMENTS)}.")
    descriptions = segment_descriptions(version)
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for z in range(z_count):
        for t in range(t_count):
            groups.setdefault((str(headers[z][t].SeriesInstanceUID), t), []).append((z, t))
    where = {str(headers[z][t].SOPInstanceUID): (z, t) for z in range(z_count) for t in range(t_count)}
    series_uid, sop_uid = generate_uid(), generate_uid()
    frames: list[tuple[int, int, int, Dataset]] = []
    referenced: dict[str, dict[str, Dataset]] = {}
    sources: dict[str, Dataset] = {}
    seg = None
    for frame_ids in groups.values():
        part = hd.seg.Segmentation(
            source_images=[headers[z][t] for z, t in frame_ids],
            pixel_array=np.stack([labels[:, :, z, t] for z, t in frame_ids]).astype(np.uint8),  # (F, H, W)
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=9901,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="cstm_bundle",
            manufacturer_model_name="CSTM",
            software_versions=version,
            device_serial_number="none",
            series_description="CSTM segmentation",
            content_description="RV blood pool, LV myocardium, LV blood pool",
            omit_empty_frames=False,
        )
        seg = part if seg is None else seg
        for item in part.PerFrameFunctionalGroupsSequence:
            uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            z, t = where[uid]
            content = item.FrameContentSequence[0]
            content.DimensionIndexValues = [segment, z + 1, t + 1]  # slices are sorted along the normal, as z
            content.TemporalPositionIndex = t + 1
            frames.append((segment, t, z, item))
        for series in part.ReferencedSeriesSequence:
            instances = referenced.setdefault(str(series.SeriesInstanceUID), {})
            instances.update({str(i.ReferencedSOPInstanceUID): i for i in series.ReferencedInstanceSequence})
        sources.update({str(i.ReferencedSOPInstanceUID): i for i in part.SourceImageSequence})
    assert seg is not None
    frames.sort(key=lambda f: f[:3])
    # empty frames are left out; an empty label map keeps one (empty) frame, as a SEG has at least one
    frames = [f for f in frames if (labels[:, :, f[2], f[1]] == f[0]).any()] or frames[:1]
    seg.PerFrameFunctionalGroupsSequence = DicomSequence([item for *_, item in frames])
    seg.NumberOfFrames = len(frames)
    masks = np.stack([labels[:, :, z, t] == segment for segment, t, z, _ in frames]).astype(np.uint8)  # (F, H, W)
    seg.PixelData = pack_bits(masks)
    temporal = Dataset()
    temporal.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    temporal.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    temporal.FunctionalGroupPointer = _FRAME_CONTENT_SEQUENCE
    temporal.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence.append(temporal)
    series_items = []
    for uid, instances in referenced.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedInstanceSequence = DicomSequence(list(instances.values()))
        series_items.append(item)
    seg.ReferencedSeriesSequence = DicomSequence(series_items)
    seg.SourceImageSequence = DicomSequence(list(sources.values()))
    return seg


class SaveDicomSegd(MapTransform):
    """Write ``<output_dir>/<study>/segmentation.dcm`` (:func:`cine_segmentation`) for a study read from a DICOM
    series (``<study>/dicom/``); a NIfTI study gets none (logged once). Written atomically; an existing file is
    replaced only with ``overwrite``.

    Args:
        keys: the prediction key, (1, H, W, Z, T), on the series' grid (as ``label_4d.nii.gz``).
        output_dir: the output folder.
        overwrite: replace an existing SEG.
        enabled: False makes this transform a no-op (config switch ``dicom_seg``).
        studies: the run's studies (:func:`~.readers.list_studies`), so that :meth:`output_files` knows which of
            them are DICOM studies; None: it names no file.
        version: the software version written into the SEG; None: the bundle's (``configs/metadata.json``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        enabled: bool = True,
        studies: Sequence[Mapping[str, Any]] | None = None,
        version: str | None = None,
    ):
        super().__init__(keys)
        self.output_dir, self.overwrite, self.enabled = Path(output_dir), overwrite, enabled
        self.version = bundle_version() if version is None else version
        self.study_dirs = {s["study"]: Path(s["study_dir"]) for s in studies or ()}
        self._told_nifti = False

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        image = study_image(d["study_dir"])
        if image is None or image.name != DICOM_DIR:
            if not self._told_nifti:
                logger.info(f"{d['study']}: a NIfTI study, no DICOM SEG (written for studies read from {DICOM_DIR}/)")
                self._told_nifti = True
            return d
        labels = torch.as_tensor(d[self.first_key(d)])[0].cpu().numpy().astype(np.int64)  # (H, W, Z, T)
        seg = cine_segmentation(labels, read_source_headers(image), self.version)
        path = write_atomic(
            output_folder(d, self.output_dir) / SEG_FILE,
            lambda tmp: seg.save_as(tmp, enforce_file_format=True),
            self.overwrite,
        )
        logger.info(f"{d['study']}: DICOM SEG ({seg.NumberOfFrames} frames) written to {path}")
        return d

    def output_files(self, study: str) -> list[Path]:
        """The file that this transform writes for ``study``: the SEG if enabled and ``study`` is a DICOM study."""
        study_dir = self.study_dirs.get(study)
        image = None if study_dir is None or not self.enabled else study_image(study_dir)
        return [self.output_dir / study / SEG_FILE] if image is not None and image.name == DICOM_DIR else []
