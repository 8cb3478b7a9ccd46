"""Dictionary transforms for study folders: annotation and labels in, 3-frame training samples, label maps out."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Hashable, Mapping

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Rand2DElasticd, RandAffined, Randomizable
from scipy.ndimage import distance_transform_edt

from ..errors import CSTMInputError
from ..inferers.schedule import Frame, slice_regions
from ..io import save_nifti
from .outputs import output_folder
from .readers import base_first_from_affine, image_geometry, read_label, study_image
from .roi import crop_resize, foreground_center, heart_box
from .study import (
    CLASS_NAMES,
    IMAGE_FILE,
    INFO_FILE,
    annotation_source,
    check_info_ranges,
    label_file,
    labelled_slices,
    labels_complete,
    phase_index,
    read_info,
    slice_classes,
)

logger = logging.getLogger(__name__)

UNLABELLED = 255
"""Label value of pixels without ground truth (unlabelled frames); masked out of losses and metrics."""

OUTPUT_FILE = "label_4d.nii.gz"


def _image_path(d: Mapping[Hashable, Any]) -> Path:
    return study_image(d["study_dir"]) or Path(d["study_dir"]) / IMAGE_FILE


class LoadStudyd(MapTransform):
    """Check the loaded image and add the study's annotation (and, optionally, its ED/ES labels as a 4D label map).

    Expects the image at ``keys`` as (1, H, W, Z, T) (after ``LoadImaged`` + ``EnsureChannelFirstd``) and the
    ``study_dir`` item from :func:`~.readers.list_studies`. Adds:

    - ``annotation`` (H, W) uint8: labels of the primary annotated frame, from ``annotation.nii.gz`` (phase
      ``info["annotated_phase"]``, or a 4D file) if present, else from ``label_ed`` at phase ``info["ed"]``; the slice
      is the middle one of the non-empty labelled slices (of those drawing every class, where per-class slice lists
      leave some out).
    - ``annotation_slice``, ``annotation_phase``: z_a and t_a.
    - ``anchor_frames`` (N, 2) long and ``anchor_labels`` (N, H, W) uint8: every annotated frame (every labelled
      frame of ``annotation.nii.gz``; from the ground truth, ``reference_anchors`` of them): :func:`read_annotation`.
    - ``image_spacing``: (2,) in-plane spacing in mm of rows and columns, from the affine.
    - ``base_first``: z = 0 is the most basal slice: ``info["base_first"]`` if given, else from an oblique scanner
      affine (:func:`~.readers.base_first_from_affine`), else True (the ACDC and M&Ms convention).
    - ``labels_complete``: the study's ground truth is complete over the stack (:func:`~.study.labels_complete`:
      ``info.json``, else the item's own ``labels_complete`` from a split file, else False).
    - with ``with_labels``: ``label`` (1, H, W, Z, T) uint8 holding ``label_ed``/``label_es`` on their annotated slices
      (every slice of a complete stack: a slice the truth leaves out is background there, in training and in
      evaluation) and :data:`UNLABELLED` everywhere else; ``ed``, ``es``.

    Partial labels, for training: which classes each labelled slice draws is :func:`~.study.slice_classes`
    (``labels_<phase>``, ``labels``, per-class slice lists). Where a slice lacks a class that other frames have
    (Sunnybrook: no myocardium at ES), its background pixels within ``partial_margin_mm`` of the drawn structures may belong to the
    missing class: with a margin given, they become :data:`UNLABELLED`, out of the loss, instead of background
    (evaluation instead scores only the drawn classes, :mod:`scripts.metrics.report`). A class drawn at no phase (RV in
    Sunnybrook) is absent from the annotation too, so propagation must not produce it: it stays background.

    Args:
        keys: the image key.
        with_labels: also load the ED/ES labels (training, validation, evaluation).
        partial_margin_mm: width of the unlabelled band around the drawn structures of a partially labelled phase;
            None leaves the labels as drawn.
        reference_anchors: without ``annotation.nii.gz``, how many annotated frames to take from the ground truth
            (:data:`REFERENCE_ANCHORS`: 1 the ED middle slice, the paper's setting; 2 + ES; 3 + an ED apical slice).
        annotation: "required" (no annotation: error), "if_missing" or "auto" (:func:`read_annotation`; the
            anchor then comes from :class:`~scripts.inferers.AutoAnchord`, next in the inference chain).
    Raises:
        CSTMInputError: wrong dimensionality, NaN/Inf or constant image, missing or empty annotation, bad label files.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        with_labels: bool = False,
        partial_margin_mm: float | None = None,
        reference_anchors: int = 1,
        annotation: str = "required",
    ):
        super().__init__(keys)
        self.with_labels = with_labels
        self.partial_margin_mm = partial_margin_mm
        self.reference_anchors = reference_anchors
        self.annotation = annotation

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        path = _image_path(d)
        image = d[self.first_key(d)]
        shape = tuple(image.shape[1:])
        if image.ndim != 5:
            raise CSTMInputError(path, f"image has shape {shape}", "a 4D image (H, W, Z, T)")
        arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if not np.isfinite(arr).all():
            raise CSTMInputError(path, "image contains NaN or Inf values", "finite intensities")
        if arr.min() == arr.max():
            raise CSTMInputError(path, f"image is constant ({arr.min()})", "an image with contrast")
        affine, _ = image_geometry(path)
        d["image_spacing"] = torch.as_tensor(
            affine_to_spacing(affine, r=2, suppress_zeros=False), dtype=torch.float32
        )  # (2,) mm
        info = read_info(d["study_dir"])
        from_affine = base_first_from_affine(affine)
        d["base_first"] = bool(info.get("base_first", True if from_affine is None else from_affine))
        d.update(
            read_annotation(
                Path(d["study_dir"]), info, shape, affine, self.reference_anchors, d["base_first"], self.annotation
            )
        )
        d["labels_complete"] = labels_complete(info, bool(d.get("labels_complete", False)))
        if self.with_labels:
            d.update(self._labels(Path(d["study_dir"]), info, shape, affine, d["labels_complete"]))
        return d

    def _labels(
        self, study: Path, info: dict[str, Any], shape: tuple[int, ...], affine: np.ndarray, complete: bool
    ) -> dict[str, Any]:
        full = np.full((1, *shape), UNLABELLED, dtype=np.uint8)
        names = [n for n in ("ed", "es") if (study / label_file(n)).is_file() and n in info]
        if len(names) == 2 and shape[3] > 1 and info["ed"] == info["es"]:
            raise CSTMInputError(
                study / INFO_FILE,
                f"'ed' and 'es' are both {info['ed']}",
                "the ED and ES phases, which differ in a cine of several phases",
            )
        frames = {
            (n, z): slice_classes(info, n, z, study)
            for n in names
            for z in labelled_slices(info, n, shape[2], study, complete)
        }
        drawn_somewhere = set().union(*frames.values())
        spacing = affine_to_spacing(affine, r=2, suppress_zeros=False)
        for name in names:
            phase = phase_index(info, name, shape[3], study, label_file(name))
            label = read_label(study / label_file(name), shape, affine)
            for z in (z for n, z in frames if n == name):
                frame = label[:, :, z].copy()
                if self.partial_margin_mm is not None and frames[name, z] != drawn_somewhere:
                    frame[_ambiguous_background(frame, spacing, self.partial_margin_mm)] = UNLABELLED
                full[0, :, :, z, phase] = frame
        return {"label": torch.as_tensor(full), "ed": info.get("ed", 0), "es": info.get("es", 0)}


REFERENCE_ANCHORS = ("ED middle slice", "ES middle slice", "ED apical slice")
"""The annotated frames taken from the ground truth, in order, when a study has no ``annotation.nii.gz``
(``reference_anchors`` of :func:`read_annotation`: the first 1, 2 or 3)."""


def read_annotation(
    study: Path,
    info: dict[str, Any],
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference_anchors: int = 1,
    base_first: bool = True,
    annotation: str = "required",
) -> dict[str, Any]:
    """The annotated frames of a study (no pixel data of the image needed), as :class:`LoadStudyd` documents them:
    ``annotation`` (H, W) uint8, ``annotation_slice`` and ``annotation_phase`` of the primary frame, and every
    annotated frame as ``anchor_frames`` (N, 2) long (z, t) and ``anchor_labels`` (N, H, W) uint8.

    - ``annotation.nii.gz``: every labelled frame is an anchor: a 3D file labels slices of phase
      ``info["annotated_phase"]``, a 4D file (H, W, Z, T) any frames. The primary frame is the middle labelled slice
      of the first labelled phase.
    - else the ground truth ``label_ed.nii.gz``: the middle labelled slice at ED (of those drawing every class, where
      per-class slice lists leave some out); with ``reference_anchors`` 2 also the same slice at ES, with 3 also the
      middle labelled slice of the apical third at ED (:data:`REFERENCE_ANCHORS`), each where the truth has it.

    Args:
        study: the study folder; info: its ``info.json``; shape: the image's (H, W, Z, T); affine: its (4, 4) affine.
        reference_anchors: how many of :data:`REFERENCE_ANCHORS` to take from the ground truth (1-3).
        base_first: z = 0 is the most basal slice (which slices are apical).
        annotation: "required": no annotation is an error; "if_missing": a study without one gets no anchor, for
            :class:`~scripts.inferers.AutoAnchord` to make it; "auto": no anchor read, every study gets AutoAnchord's.
    Returns:
        also ``anchor_source``: the annotation file's name, or None where no anchor was read (then ``anchor_frames``
        is empty and ``annotation`` all background).
    Raises:
        CSTMInputError: no annotation file, a phase or slice of ``info.json`` outside the image (any of them, whether
            read here or later: :func:`~.study.check_info_ranges`), a label file off the grid, an empty annotation,
            an ``annotation.nii.gz`` drawing a class that ``info["labels"]`` does not declare.
    """
    if annotation not in ("required", "if_missing", "auto"):
        raise ValueError(f"annotation must be 'required', 'if_missing' or 'auto', got {annotation!r}.")
    check_info_ranges(info, shape, study)
    try:
        if annotation == "auto":
            return _no_anchor(shape)
        path, phase_key, phase_name = annotation_source(study)
    except CSTMInputError:
        if annotation == "if_missing":
            return _no_anchor(shape)
        raise
    if phase_name is None and _label_ndim(path) == 4:
        volume = read_label(path, shape, affine, phases=True)  # (H, W, Z, T)
        _check_declared(path, volume, info, study)
        anchors = {(z, t): volume[:, :, z, t] for z, t in zip(*np.nonzero(volume.any(axis=(0, 1))), strict=True)}
        if not anchors:
            raise CSTMInputError(path, "annotation is empty (no labelled pixel)", "labels 1-3 on at least one frame")
        first = min(t for _, t in anchors)
        zs = sorted(z for z, t in anchors if t == first)
        primary = (zs[len(zs) // 2], first)
    else:
        phase = phase_index(info, phase_key, shape[3], study, path.name)
        label = read_label(path, shape, affine)
        if phase_name is None:
            _check_declared(path, label, info, study)
        candidates = labelled_slices(info, phase_name, shape[2], study) if phase_name else range(shape[2])
        slices = [z for z in candidates if label[:, :, z].any()]
        if not slices:
            raise CSTMInputError(path, "annotation is empty (no labelled pixel)", "labels 1-3 on at least one slice")
        if phase_name:  # a slice with every class drawn at this phase, where there is one (per-class slice lists)
            classes = {z: slice_classes(info, phase_name, z, study) for z in slices}
            most = set().union(*classes.values())
            slices = [z for z in slices if classes[z] == most] or slices
        primary = (slices[len(slices) // 2], phase)
        if phase_name is None:  # the user's annotation: every labelled slice
            anchors = {(z, phase): label[:, :, z] for z in candidates if label[:, :, z].any()}
        else:
            anchors = {primary: label[:, :, primary[0]]}
            anchors.update(
                _reference_anchors(study, info, shape, affine, label, primary, slices, reference_anchors, base_first)
            )
    frames = sorted(anchors)
    return {
        "annotation": torch.as_tensor(anchors[primary]),
        "annotation_slice": primary[0],
        "annotation_phase": primary[1],
        "anchor_frames": torch.as_tensor(frames, dtype=torch.long).reshape(-1, 2),
        "anchor_labels": torch.as_tensor(np.stack([anchors[f] for f in frames])),
        "anchor_source": path.name,
    }


def _check_declared(path: Path, label: np.ndarray, info: dict[str, Any], study: Path) -> None:
    """An ``annotation.nii.gz`` draws only classes that ``info["labels"]`` declares, where it declares them (the
    ground-truth files' classes are checked per phase and slice by :func:`~.study.slice_classes`).

    Raises:
        CSTMInputError: naming the annotation, its classes and the declared ones.
    """
    if "labels" not in info:
        return
    drawn = sorted(int(v) for v in np.unique(label) if v)
    extra = sorted(set(drawn) - set(info["labels"]))
    if extra:
        names = ", ".join(f"{c} {CLASS_NAMES[c]}" for c in extra)
        raise CSTMInputError(
            path,
            f"draws {names}, which 'labels' of {INFO_FILE} ({info['labels']}) does not declare",
            "the classes of 'labels' only (or 'labels' listing every class drawn)",
        )


def _no_anchor(shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "annotation": torch.zeros(shape[:2], dtype=torch.uint8),
        "annotation_slice": -1,
        "annotation_phase": -1,
        "anchor_frames": torch.zeros((0, 2), dtype=torch.long),
        "anchor_labels": torch.zeros((0, *shape[:2]), dtype=torch.uint8),
        "anchor_source": None,
    }


def _label_ndim(path: Path) -> int:
    try:
        shape = nib.load(str(path)).shape
    except Exception:  # read_label reports it
        return 3
    return 4 if len(shape) == 4 and shape[3] > 1 else 3


def _reference_anchors(
    study: Path,
    info: dict[str, Any],
    shape: tuple[int, ...],
    affine: np.ndarray,
    label_ed: np.ndarray,
    primary: Frame,
    ed_slices: list[int],
    count: int,
    base_first: bool,
) -> dict[Frame, np.ndarray]:
    """The ES middle and ED apical anchors of :data:`REFERENCE_ANCHORS` (beyond the first), where the truth has them."""
    if not 1 <= count <= len(REFERENCE_ANCHORS):
        raise ValueError(f"reference_anchors must be 1-{len(REFERENCE_ANCHORS)}, got {count}.")
    anchors: dict[Frame, np.ndarray] = {}
    z_a, ed = primary
    es_file = study / label_file("es")
    if count >= 2 and es_file.is_file() and "es" in info:
        es = phase_index(info, "es", shape[3], study, es_file.name)
        label_es = read_label(es_file, shape, affine)
        drawn = slice_classes(info, "ed", z_a, study) <= slice_classes(info, "es", z_a, study)
        if es != ed and drawn and z_a in labelled_slices(info, "es", shape[2], study) and label_es[:, :, z_a].any():
            anchors[(z_a, es)] = label_es[:, :, z_a]
    if count >= 3:
        regions = slice_regions(shape[2], base_first)
        apical = [z for z in ed_slices if regions[z] == "apex" and z != z_a]
        if apical:
            z = apical[len(apical) // 2]
            anchors[(z, ed)] = label_ed[:, :, z]
    missing = count - 1 - len(anchors)
    if missing:
        logger.info(f"{study}: {missing} of {count} reference anchors not in the ground truth; {len(anchors) + 1} used")
    return anchors


def _ambiguous_background(frame: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """(H, W) bool: background pixels of ``frame`` within ``margin_mm`` of its drawn structures; all of them when
    nothing is drawn (an apical slice may hold only the undrawn class)."""
    background = frame == 0
    if background.all():
        return background
    return background & (distance_transform_edt(background, sampling=spacing) <= margin_mm)


EDGE_SLICES = 2
"""A sample along z drawn towards an end of the heart (:class:`RandTripletd` ``edge_prob``) starts at most this many
slices inside the last slice that holds a structure."""


class RandTripletd(Randomizable, MapTransform):
    """Draw 3-frame training samples from a study (paper §3.4).

    With probability ``static_prob`` a sample is one fully labelled frame three times (static-frame pre-training, STCN:
    :class:`RandFrameJitterd` then deforms each copy on its own). Otherwise, with probability ``temporal_prob``, a
    sample runs along t on one slice labelled at ED and ES: (ED, ES, ED), or (ES, ED, ES); else along z at one
    labelled phase: three ordered labelled slices no more than ``max_slice_distance`` apart, base-to-apex or
    apex-to-base. Frames 2 and 3 are predicted from frame 1 (+ 2), so frame 1 is always a fully labelled frame, and
    one that holds a structure where its phase has such frames (as every annotation and every propagation start
    does); frames 2 and 3 may be partially labelled (:class:`LoadStudyd`), or empty: on a stack whose labels are
    complete, the slices beyond the base and the apex are background, and a sample along z that reaches them teaches
    the network where the heart ends.

    Args:
        keys: (image key, label key); the image (1, H, W, Z, T), the label (1, H, W, Z, T) from :class:`LoadStudyd`.
        num_samples: samples per study and call (MONAI flattens the returned list into the batch).
        temporal_prob: probability of a sample along t (of the samples that are not static).
        static_prob: probability of a static sample.
        edge_prob: probability, of the samples along z, of one that starts within :data:`EDGE_SLICES` slices of the
            end of the heart it runs towards (the base or the apex, and the empty slices beyond them where the labels
            are complete): where the errors are.
        mixed_prob: probability, of the samples along z, of one that first goes along t and then along z, as the 4D
            inference does: (z, a), (z, b), (w, b) with slice w labelled at phase b, ``0 < |w - z| <=
            max_slice_distance``.
        es_prob: probability of a sample whose predicted frames are at the study's contracted phase (of its fully
            labelled phases, the one with the least heart per frame: ES) rather than at a phase drawn uniformly; along
            t that is ES predicted from ED, as the inference does. 0 keeps the uniform draw (and its random stream).
        max_slice_distance: largest z distance between the first and last slice of a sample along z (paper: 5).
    Returns:
        a list of dicts with ``frames`` (3, H, W) float32, ``masks`` (3, H, W) uint8 and the study's ``image_spacing``.
    Raises:
        CSTMInputError: the study has no fully labelled frame to start a sample from.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_samples: int = 4,
        temporal_prob: float = 0.5,
        max_slice_distance: int = 5,
        static_prob: float = 0.0,
        mixed_prob: float = 0.0,
        edge_prob: float = 0.0,
        es_prob: float = 0.0,
    ):
        MapTransform.__init__(self, keys)
        if max_slice_distance < 2:
            raise ValueError(f"max_slice_distance must be >= 2 to hold 3 slices, got {max_slice_distance}.")
        self.num_samples, self.temporal_prob, self.max_slice_distance = num_samples, temporal_prob, max_slice_distance
        self.static_prob, self.mixed_prob, self.edge_prob = static_prob, mixed_prob, edge_prob
        self.es_prob = es_prob

    def randomize(self, data: Any = None) -> None:
        pass

    def _pick(self, items: list) -> Any:
        return items[self.R.randint(len(items))]

    def _sample(
        self,
        full: dict[int, list[int]],
        truth: dict[int, list[int]],
        temporal: list[tuple[int, int, int]],
        contracted: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """(slices, phases) of one sample; ``full``/``truth``: phase -> slices fully / at least partly labelled;
        ``temporal``: the (z, a, b) with slice z fully labelled at phase a and labelled at phase b; ``contracted``:
        the phase that ``es_prob`` favours (None without ``es_prob``)."""
        at_es = contracted is not None and self.R.rand() < self.es_prob
        towards_es = [x for x in temporal if x[2] == contracted] if at_es else []
        if self.static_prob and self.R.rand() < self.static_prob:
            t = contracted if at_es else self._pick(sorted(full))
            return [self._pick(full[t])] * 3, [t] * 3
        if temporal and self.R.rand() < self.temporal_prob:
            z, a, b = self._pick(towards_es or temporal)
            return [z, z, z], [a, b, a]
        if temporal and self.mixed_prob and self.R.rand() < self.mixed_prob:
            z, a, b = self._pick(towards_es or temporal)
            near = [w for w in truth[b] if 0 < abs(w - z) <= self.max_slice_distance]
            if near:
                return [z, z, self._pick(near)], [a, b, b]
        t = contracted if at_es else self._pick(sorted(full))
        step = 1 if self.R.rand() < 0.5 else -1  # base-to-apex or apex-to-base
        ahead = {z: [w for w in truth[t] if 0 < (w - z) * step <= self.max_slice_distance] for z in full[t]}
        starts = [z for z in full[t] if len(ahead[z]) >= 2]
        if self.edge_prob and self.R.rand() < self.edge_prob:  # towards the end of the heart that step points to
            end = max(full[t]) if step > 0 else min(full[t])
            starts = [z for z in starts if 0 <= (end - z) * step <= EDGE_SLICES] or starts
        if not starts:
            z = self._pick(full[t])
            return [z] * 3, [t] * 3
        z = self._pick(starts)
        window = sorted(ahead[z], key=lambda w: (w - z) * step)
        picks = sorted(self.R.choice(len(window), 2, replace=False))
        return [z, window[picks[0]], window[picks[1]]], [t] * 3

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[str, Any]]:
        d = dict(data)
        image_key, label_key = self.keys
        image, label = d[image_key][0], d[label_key][0]  # (H, W, Z, T)
        known = label != UNLABELLED
        complete = known.all(0).all(0)  # (Z, T)
        heart = complete & ((label > 0) & known).any(0).any(0)  # (Z, T): fully labelled frames that hold a structure
        full, truth = (
            {
                int(t): [int(z) for z in torch.nonzero(frames[:, t]).flatten()]
                for t in torch.nonzero(frames.any(0)).flatten()
            }
            for frames in (torch.where(heart.any(0, keepdim=True), heart, complete), known.any(0).any(0))
        )  # (Z, T) each
        if not full:
            raise CSTMInputError(
                d["study_dir"],
                "no fully labelled frame to start a training sample from",
                "label_ed/label_es with at least one fully labelled slice",
            )
        temporal = [(z, a, b) for a in full for z in full[a] for b in truth if b != a and z in truth[b]]
        contracted = None
        if self.es_prob:
            area = ((label > 0) & known).sum((0, 1))  # (Z, T): heart pixels per frame
            contracted = min(
                [t for t in full if heart[:, t].any()] or list(full),
                key=lambda t: area[full[t], t].float().mean().item(),
            )
        samples = []
        for _ in range(self.num_samples):
            zs, ts = self._sample(full, truth, temporal, contracted)
            samples.append(
                {
                    "frames": torch.as_tensor(image[:, :, zs, ts]).permute(2, 0, 1).float(),  # (3, H, W)
                    "masks": torch.as_tensor(label[:, :, zs, ts]).permute(2, 0, 1),  # (3, H, W)
                    "image_spacing": d["image_spacing"],
                }
            )
        return samples


class RandFrameJitterd(Randomizable, MapTransform):
    """Deform each frame of a sample on its own (one draw per frame), on top of the draw the sample's frames share.

    A static sample (:class:`RandTripletd` ``static_prob``) becomes three different views of one frame, as STCN's
    static-image pre-training; on real triplets a small jitter stands for the motion that the shared draw lacks.

    Args:
        keys: (frames key, masks key), each (N, H, W).
        prob: probability that a frame is deformed.
        rotate_range, scale_range, translate_range: as ``RandAffined`` (radians, fraction, ROI pixels).
        elastic_magnitude: ``Rand2DElasticd`` magnitude range on a 24-pixel grid; (0, 0) for none.
    """

    def __init__(
        self,
        keys: KeysCollection = ("frames", "masks"),
        prob: float = 0.5,
        rotate_range: float = 0.15,
        scale_range: float = 0.1,
        translate_range: float = 6,
        elastic_magnitude: tuple[float, float] = (0, 2),
    ):
        MapTransform.__init__(self, keys)
        self.prob = prob
        self.affine = RandAffined(
            keys,
            prob=1.0,
            rotate_range=rotate_range,
            scale_range=scale_range,
            translate_range=translate_range,
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        )
        self.elastic = Rand2DElasticd(
            keys,
            spacing=[24, 24],
            magnitude_range=elastic_magnitude,
            prob=float(max(elastic_magnitude) > 0),
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandFrameJitterd:
        super().set_random_state(seed, state)
        self.affine.set_random_state(state=self.R)
        self.elastic.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        frames_key, masks_key = self.keys
        frames, masks = torch.as_tensor(d[frames_key]), torch.as_tensor(d[masks_key])
        out_frames, out_masks = [], []
        for i in range(frames.shape[0]):
            frame = {frames_key: frames[i : i + 1], masks_key: masks[i : i + 1].float()}
            if self.R.rand() < self.prob:
                frame = self.elastic(self.affine(frame))
            out_frames.append(torch.as_tensor(frame[frames_key]))
            out_masks.append(torch.as_tensor(frame[masks_key]).round().to(masks.dtype))
        d[frames_key], d[masks_key] = torch.cat(out_frames), torch.cat(out_masks)
        return d


class RandHeartCropd(Randomizable, MapTransform):
    """Crop training samples to the heart ROI that inference uses (:mod:`.roi`), around frame 1's labelled heart
    shifted by up to ``jitter`` ROI pixels, and resample it to ``roi_size`` pixels of ``spacing`` mm.

    Args:
        keys: (frames key, masks key), each (3, H, W); the sample also carries ``image_spacing``.
        roi_size: ROI side in pixels (as the inferer's).
        spacing: ROI pixel spacing in mm (as the inferer's).
        jitter: largest shift of the ROI centre, in ROI pixels.
    """

    def __init__(
        self, keys: KeysCollection = ("frames", "masks"), roi_size: int = 192, spacing: float = 0.9, jitter: int = 24
    ):
        MapTransform.__init__(self, keys)
        self.roi_size, self.spacing, self.jitter = roi_size, spacing, jitter

    def randomize(self, data: Any = None) -> None:
        self._shift = self.R.uniform(-self.jitter, self.jitter, 2) * self.spacing  # mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        frames_key, masks_key = self.keys
        self.randomize()
        input_spacing = torch.as_tensor(d["image_spacing"]).tolist()
        center = foreground_center(torch.as_tensor(d[masks_key][0]) % UNLABELLED)
        center = (center[0] + self._shift[0] / input_spacing[0], center[1] + self._shift[1] / input_spacing[1])
        box = heart_box(center, input_spacing, self.roi_size, self.spacing)
        d[frames_key] = crop_resize(torch.as_tensor(d[frames_key])[None], box, self.roi_size)[0]
        d[masks_key] = crop_resize(torch.as_tensor(d[masks_key])[None], box, self.roi_size, "nearest")[0]
        return d


class SelectLabelledFramesd(MapTransform):
    """Keep the frames that carry ground truth (all but the annotated one), for metrics.

    Args:
        keys: (pred key, label key), both (1, H, W, Z, T); the label holds :data:`UNLABELLED` where there is no truth.
    Returns:
        pred and label as (1, H, W, N) over the N labelled frames, and ``frame_phase``: (N,) "ED" or "ES" (the
        frame's phase is ``info["es"]``, else ED).
    """

    def __init__(self, keys: KeysCollection = ("pred", "label")):
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pred_key, label_key = self.keys
        label = torch.as_tensor(d[label_key])
        labelled = (label[0] != UNLABELLED).all(dim=0).all(dim=0)  # (Z, T)
        labelled[int(d["annotation_slice"]), int(d["annotation_phase"])] = False
        zs, ts = torch.nonzero(labelled, as_tuple=True)
        d[pred_key] = torch.as_tensor(d[pred_key])[..., zs, ts]  # (1, H, W, N)
        d[label_key] = label[..., zs, ts]  # (1, H, W, N)
        d["frame_phase"] = ["ES" if t == int(d["es"]) else "ED" for t in ts.tolist()]
        return d


class SaveStudyLabeld(MapTransform):
    """Write the 4D label map to ``<output_dir>/<study>/label_4d.nii.gz`` (uint8, the input's grid, affine and header).

    Written atomically; an existing file is replaced only with ``overwrite``.

    Args:
        keys: the prediction key, (1, H, W, Z, T).
        output_dir: the output folder.
        overwrite: replace existing outputs.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike, overwrite: bool = False):
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        affine, header = image_geometry(_image_path(d))
        labels = torch.as_tensor(d[self.first_key(d)])[0].cpu().numpy().astype(np.uint8)  # (H, W, Z, T)
        if header is not None:
            header = header.copy()
            header.set_data_dtype(np.uint8)
            header["scl_slope"], header["scl_inter"] = 1, 0
        path = save_nifti(labels, affine, output_folder(d, self.output_dir) / OUTPUT_FILE, self.overwrite, header)
        logger.info(f"{d['study']}: 4D label map written to {path}")
        return d

    def output_files(self, study: str) -> list[Path]:
        """The file that this transform writes for ``study``."""
        return [self.output_dir / study / OUTPUT_FILE]


def check_outputs(studies: list[dict[str, str]], output_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail before any work if a study's output folder already holds a file (and ``overwrite`` is off): the label map
    or any of the files written beside it (the clinical outputs), or if the output folder is not writable."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise CSTMInputError(root, "output folder is a file", "a folder (--output_dir)")
    for s in studies if not overwrite else ():
        folder = root / s["study"]
        existing = sorted(folder.iterdir(), key=lambda p: (p.name != OUTPUT_FILE, p.name)) if folder.is_dir() else []
        if existing:
            raise CSTMInputError(existing[0], "output file exists", "a new --output_dir, or --overwrite true")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CSTMInputError(root, f"cannot create the output folder ({e.strerror})", "a writable path") from e
    if not os.access(root, os.W_OK):
        raise CSTMInputError(root, "output folder is not writable", "a writable path")


class AsCineStudyd(MapTransform):
    """A cine image of one slice, (C, H, W, T), as a study of one slice, (C, H, W, 1, T); a 4D study (C, H, W, Z, T)
    passes unchanged. Lets 3D tools (MONAI Label handles 2D/3D images only) send a single-slice cine.

    Raises:
        CSTMInputError: an item that is neither (C, H, W, T) nor (C, H, W, Z, T), naming its file.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim == 4:
                d[key] = x.unsqueeze(3)
            elif x.ndim != 5:
                source = getattr(x, "meta", {}).get("filename_or_obj", key)
                raise CSTMInputError(
                    source, f"image has shape {tuple(x.shape[1:])}", "a cine slice (H, W, T) or a study (H, W, Z, T)"
                )
        return d
