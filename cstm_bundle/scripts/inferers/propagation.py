"""4D propagation inferer (paper §3.3): one or more annotated frames in, a (H, W, Z, T) label map out."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Mapping
from itertools import groupby
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import SpatialPad, compute_divisible_spatial_size
from monai.utils import convert_to_tensor
from torch import Tensor

from ..data.roi import Box, anchor_box, class_argmax, crop_resize, paste_probabilities
from ..errors import CSTMInputError
from ..networks.cstm import CSTM
from .cache import DEFAULT_CACHE_MAX_GB, PropagationCache, tensor_digest
from .cleanup import clean_up
from .memory import MemoryBank
from .schedule import (
    Continuity,
    Frame,
    Plan,
    chain_signatures,
    dependency_levels,
    plan_propagation,
    time_direction_weights,
)

logger = logging.getLogger(__name__)


def pad_to_multiple(x: Tensor, multiple: int, min_size: int = 0) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims of ``x`` (..., H, W) symmetrically to multiples of ``multiple``, at least ``min_size``.

    MONAI's ``SpatialPad`` (method "symmetric": the odd pixel after) to ``compute_divisible_spatial_size`` of the
    size raised to ``min_size``, on a (N, H, W) view of ``x``.

    Returns:
        the padded tensor and the (left, right, top, bottom) padding, for :func:`crop_padding`.
    """
    size = compute_divisible_spatial_size([max(s, min_size) for s in x.shape[-2:]], multiple)
    padder = SpatialPad(size)
    _, (top, bottom), (left, right) = padder.compute_pad_width(x.shape[-2:])
    padded = convert_to_tensor(padder(x.reshape(-1, *x.shape[-2:])), track_meta=False)  # (N, H', W')
    return padded.reshape(*x.shape[:-2], *size), (left, right, top, bottom)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of ``amp=True`` on ``device``: float16 on CUDA, bfloat16 elsewhere (CPU)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def numerics(device: torch.device, amp: bool) -> dict[str, Any]:
    """What, besides the weights and the settings, changes a prediction's floating-point result: the device type (CPU
    and CUDA kernels round differently, and ``amp`` autocasts to a different dtype on each), the compute dtype, on CUDA
    whether TF32 is allowed, and the torch version. Part of the propagation cache's key; the GPU model and the device
    index are not (the same kernels on another card of one run differ far below the float16 the cache stores)."""
    record: dict[str, Any] = {
        "device": device.type,
        "dtype": str(amp_dtype(device) if amp else torch.float32),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        record["tf32"] = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    return record


def crop_padding(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple` on the last two dims (a slice: the labels to crop are a new tensor, not the
    padded MetaTensor whose recorded padding ``SpatialPad.inverse`` would undo)."""
    left, right, top, bottom = pad
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@torch.no_grad()
def propagate_4d(
    network: CSTM,
    image: Tensor,
    anchors: Mapping[Frame, Tensor],
    plan: Plan,
    max_batch: int = 32,
    amp: bool = False,
    progress: bool = False,
    trace: list[tuple[int, Frame, tuple[Frame, ...]]] | None = None,
    probabilities: Tensor | None = None,
) -> Tensor:
    """Segment every frame of one study by executing ``plan`` with ``network``.

    Every frame is key-encoded once, as a query; frames that later queries read are value-encoded once, from their
    predicted class probabilities (one-hot for an anchor). Frames whose memory is ready are predicted together, in
    batches of at most ``max_batch``.

    Args:
        network: a :class:`~scripts.networks.CSTM`, in eval mode.
        image: (H, W, Z, T) normalised intensities, H and W multiples of ``network.size_multiple``.
        anchors: known frame (z, t) -> its (H, W) integer labels in [0, O) (an annotated frame) or its (O, H, W)
            class probabilities (a frame kept from an earlier run, :class:`~.cache.PropagationCache`); the frames
            that the plan does not predict.
        plan: query frame -> memory frames (:func:`~.schedule.plan_propagation` of the same anchors).
        max_batch: most query frames per network call (bounds memory; halved automatically on CUDA out-of-memory).
        amp: autocast the network (float16 on CUDA, bfloat16 on CPU).
        progress: log one line per propagation level.
        trace: if given, receives one (level, query frame, memory frames read) per prediction, in execution order.
        probabilities: if given, a (Z, T, O, H, W) tensor that receives every frame's class probabilities (one-hot
            for the anchors), e.g. float16 to map them back from the heart ROI.
    Returns:
        labels (H, W, Z, T), uint8; the anchors' labels as given.
    """
    if not anchors:
        raise ValueError("expected at least one annotated frame in anchors, got none.")
    device = image.device
    frames = image.permute(2, 3, 0, 1).unsqueeze(2)  # (Z, T, 1, H, W)
    labels = torch.zeros(image.shape, dtype=torch.uint8, device=device)  # (H, W, Z, T)
    known = {f: _as_probabilities(x.to(device), network.num_classes) for f, x in anchors.items()}  # (O, H, W) each
    for f, probs in known.items():
        labels[..., f[0], f[1]] = class_argmax(probs, 0).to(torch.uint8)
        if probabilities is not None:
            probabilities[f] = probs
    bank = MemoryBank(plan)

    with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
        read = [f for f in known if bank.needed(f)]  # known frames that no query reads are not encoded
        for b in range(0, len(read), max_batch):
            part = read[b : b + max_batch]
            img = torch.stack([frames[f] for f in part])  # (A, 1, H, W)
            key = network.encode_key(img)
            value = network.encode_value(img, torch.stack([known[f] for f in part]), key)
            bank.add(part, key.key16, key.key8, *value)
        levels = dependency_levels(plan, list(known))
        start = time.perf_counter()
        for i, level in enumerate(levels):
            # queries that read the same number of memory frames share one batch
            for _, same in groupby(sorted(level, key=lambda f: len(plan[f])), key=lambda f: len(plan[f])):
                group = list(same)
                for b in range(0, len(group), max_batch):
                    batch = group[b : b + max_batch]
                    _predict_within_memory(network, batch, plan, bank, frames, labels, probabilities)
                    if trace is not None:
                        trace.extend((i, f, plan[f]) for f in batch)
            if progress:
                logger.info(
                    f"propagation level {i + 1}/{len(levels)}: {len(level)} frames, "
                    f"{time.perf_counter() - start:.1f} s"
                )
    return labels


def _as_probabilities(x: Tensor, num_classes: int) -> Tensor:
    """(H, W) labels -> (O, H, W) one-hot float32; (O, H, W) probabilities -> float32."""
    if x.ndim == 3:
        return x.float()
    return F.one_hot(x.long(), num_classes).permute(2, 0, 1).float()


def _predict(
    network: CSTM,
    batch: list[Frame],
    plan: Plan,
    bank: MemoryBank,
    frames: Tensor,
    labels: Tensor,
    probabilities: Tensor | None = None,
) -> None:
    """Predict one batch of query frames, store their labels (and probabilities), and add those that later queries
    read to ``bank``.

    All network calls come before the first change to ``labels`` or ``bank``, so a call that runs out of memory
    leaves both untouched and the batch can be retried in parts.
    """
    zs, ts = map(list, zip(*batch, strict=True))
    imgs = frames[zs, ts]  # (B, 1, H, W)
    key = network.encode_key(imgs)
    memories = [plan[f] for f in batch]
    probs = network.segment(key, bank.gather(memories)).float().softmax(1)  # (B, O, H, W)
    keep = [i for i, f in enumerate(batch) if bank.needed(f)]
    if keep:
        kept_key = type(key)(*(t[keep] for t in key))
        value = network.encode_value(imgs[keep], probs[keep], kept_key)
    labels[:, :, zs, ts] = class_argmax(probs, 1).to(torch.uint8).permute(1, 2, 0)  # (H, W, B)
    if probabilities is not None:
        probabilities[zs, ts] = probs.to(probabilities.dtype)
    bank.release(memories)
    if keep:
        bank.add([batch[i] for i in keep], kept_key.key16, kept_key.key8, *value)


def _predict_within_memory(
    network: CSTM,
    batch: list[Frame],
    plan: Plan,
    bank: MemoryBank,
    frames: Tensor,
    labels: Tensor,
    probabilities: Tensor | None = None,
) -> None:
    """:func:`_predict`, splitting the batch in halves for as long as CUDA runs out of memory."""
    try:
        _predict(network, batch, plan, bank, frames, labels, probabilities)
    except torch.cuda.OutOfMemoryError:
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        logger.warning(f"CUDA out of memory with {len(batch)} frames per call; retrying with {len(batch) // 2}")
        for part in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
            _predict_within_memory(network, part, plan, bank, frames, labels, probabilities)


def annotated_frame(labels: Tensor) -> tuple[Tensor, int, int]:
    """The primary annotated frame of an annotation channel: labels (H, W, Z, T), 0 outside the annotated frames.

    The rule :class:`~scripts.data.LoadStudyd` applies to ``annotation.nii.gz``: the first phase with a labelled pixel,
    and of its labelled slices the middle one. Every labelled frame is an anchor (:func:`labelled_frames`); the heart
    ROI is centred by the rule of :func:`~scripts.data.roi.anchor_box`, whichever frame is the primary one.

    Returns:
        (H, W) labels of that frame, its slice z_a and phase t_a.
    Raises:
        ValueError: no labelled pixel.
    """
    labelled = labels.flatten(0, 1).amax(0) > 0  # (Z, T)
    if not labelled.any():
        raise ValueError("the annotation channel holds no labelled pixel; expected labels 1-3 on one frame.")
    t = int(labelled.any(0).nonzero()[0])
    zs = labelled[:, t].nonzero().flatten().tolist()
    z = zs[len(zs) // 2]
    return labels[:, :, z, t], z, t


def labelled_frames(labels: Tensor) -> dict[Frame, Tensor]:
    """Every labelled frame of an annotation channel, labels (H, W, Z, T): {(z, t): (H, W) labels}."""
    labelled = (labels.flatten(0, 1).amax(0) > 0).nonzero().tolist()  # [[z, t], ...]
    return {(z, t): labels[:, :, z, t] for z, t in labelled}


class Propagation4DInferer(Inferer):
    """Paper Fig. 5: along t in the annotated slice, then along z at every phase (phases batched).

    Called by MONAI's ``SupervisedEvaluator`` as ``inferer(image, network, annotation=..., annotation_slice=...,
    annotation_phase=..., image_spacing=..., anchor_frames=..., anchor_labels=...)``, or, as MONAI Label's inference
    tasks call an inferer, as ``inferer(inputs, network)`` with the annotation as a second input channel (see
    :meth:`__call__`). Every annotated frame is an anchor of the schedule (:func:`~.schedule.plan_propagation`). With
    ``roi_size`` set, every frame is cropped to a square of ``roi_size * spacing`` mm around the annotated heart and
    resampled to ``roi_size`` pixels (see :mod:`scripts.data.roi`); the square is placed by
    :func:`~scripts.data.roi.anchor_box` from the set of anchors (which one is the primary does not matter, and an
    added frame inside it does not move it). The labels are mapped back onto the input grid, background outside the
    ROI. Without ``roi_size``, whole frames are zero-padded to the network's size multiple.

    With several anchors, every frame also reads the nearest other anchors as permanent memory beside its chain
    (``anchor_memory``, as XMem and Cutie keep every annotated frame); the readout's affinity decides which pixels
    follow which anchor. One anchor: the paper's schedule exactly, whatever ``anchor_memory``.

    Args:
        continuity: "both" (paper), "spatial" or "temporal" (paper Table 7).
        time_memory_size: memory frames along t, the anchor included (paper: 2).
        slice_memory_size: memory frames along z, the anchor included (paper: 2; apex slices add 1 temporal frame).
        anchor_memory: how many annotated frames every frame reads as permanent memory, its chain's own anchor
            included: the nearest ones by :func:`~.schedule.anchor_distance` (``|dz| * T / Z`` plus the cyclic phase
            distance), appended after its chain. 0 or 1: only the chain's own anchor (the behaviour before issue 30).
            Each read anchor adds one memory frame per query (memory and time).
        base_first: z = 0 is the most basal slice (decides which slices are apex); None takes each study's own
            ``base_first`` (from :class:`~scripts.data.LoadStudyd`), else True.
        roi_size: side of the heart ROI in pixels, a multiple of the network's size multiple; None for whole frames.
        spacing: pixel spacing of the ROI in mm.
        max_batch: most query frames per network call.
        amp: autocast (float16 on CUDA, bfloat16 on CPU).
        progress: log one line per propagation level.
        largest_component: keep each class's largest 3D connected component per phase (:func:`~.cleanup.clean_up`).
        fill_holes: fill each class's holes per frame (:func:`~.cleanup.clean_up`).
        time_direction: "forward" (paper): along t forwards through the cycle from each anchor; "both": also
            backwards, the two class probabilities fused per phase by their distance to the anchors
            (:func:`~.schedule.time_direction_weights`); twice the network calls.
        cache_dir: keep every study's propagation there (:class:`~.cache.PropagationCache`): a rerun with more
            annotated frames (a correction) predicts only the frames whose memory chain changed. None: no cache.
        cache_max_gb: most gigabytes (1e9 bytes) of entries kept in ``cache_dir``; the least recently used are
            evicted after each write, never the one just written. None: no bound.

    Every argument is part of the cache key (:meth:`cache_settings`) unless :data:`CACHE_NEUTRAL` names it with the
    reason it cannot change a cached frame's probabilities.
    """

    CACHE_NEUTRAL: ClassVar[dict[str, str]] = {
        "max_batch": "batching does not change a frame's prediction (tests/unit/test_propagation.py)",
        "progress": "logging only",
        "largest_component": "clean-up runs after the cache, on the input grid; the cache holds the probabilities",
        "fill_holes": "clean-up runs after the cache, on the input grid; the cache holds the probabilities",
        "time_direction": "each cache entry holds one direction, and the direction is in its key",
        "cache_dir": "where entries are kept, not what they hold",
        "cache_max_gb": "how many entries are kept, not what they hold",
    }
    """The constructor arguments left out of the cache key, each with the reason."""

    def __init__(
        self,
        continuity: Continuity = "both",
        time_memory_size: int = 2,
        slice_memory_size: int = 2,
        anchor_memory: int = 3,
        base_first: bool | None = None,
        roi_size: int | None = 192,
        spacing: float = 0.9,
        max_batch: int = 32,
        amp: bool = False,
        progress: bool = False,
        largest_component: bool = False,
        fill_holes: bool = False,
        time_direction: Literal["forward", "both"] = "forward",
        cache_dir: str | os.PathLike | None = None,
        cache_max_gb: float | None = DEFAULT_CACHE_MAX_GB,
    ):
        super().__init__()
        if time_direction not in ("forward", "both"):
            raise ValueError(f"time_direction must be 'forward' or 'both', got {time_direction!r}.")
        if anchor_memory < 0:
            raise ValueError(f"anchor_memory must be >= 0 (0: only the chain's own anchor), got {anchor_memory}.")
        self.continuity = continuity
        self.time_memory_size = time_memory_size
        self.slice_memory_size = slice_memory_size
        self.anchor_memory = anchor_memory
        self.base_first = base_first
        self.roi_size = roi_size
        self.spacing = spacing
        self.max_batch = max_batch
        self.amp = amp
        self.progress = progress
        self.largest_component = largest_component
        self.fill_holes = fill_holes
        self.time_direction = time_direction
        self.cache_dir = cache_dir
        self.cache_max_gb = cache_max_gb
        self.cache = None if cache_dir is None else PropagationCache(cache_dir, cache_max_gb)

    def cache_settings(self, device: torch.device) -> dict[str, Any]:
        """Every setting of this inferer that can change a cached frame's probabilities, for the cache key.

        Derived from the constructor's signature, so that a new argument is in the key unless it is added to
        :data:`CACHE_NEUTRAL` with a reason; plus the :func:`numerics` of ``device`` and ``amp``. The network's part
        (weights, recorded arguments, matcher) is added by :meth:`~.cache.PropagationCache.key`.
        """
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "args", "kwargs")]
        settings = {n: getattr(self, n) for n in names if n not in self.CACHE_NEUTRAL}
        settings["numerics"] = numerics(device, self.amp)
        return settings

    def plan(
        self,
        num_slices: int,
        num_phases: int,
        anchors: Frame | list[Frame],
        base_first: bool = True,
        backward: bool = False,
    ) -> Plan:
        """The propagation plan for one study; see :func:`~.schedule.plan_propagation`."""
        return plan_propagation(
            num_slices,
            num_phases,
            anchors,
            self.continuity,
            self.time_memory_size,
            self.slice_memory_size,
            base_first if self.base_first is None else self.base_first,
            backward,
            self.anchor_memory,
        )

    def __call__(
        self,
        inputs: Tensor,
        network: CSTM,
        annotation: Tensor | None = None,
        annotation_slice: Any = None,
        annotation_phase: Any = None,
        image_spacing: Any = None,
        base_first: Any = True,
        anchor_frames: Tensor | None = None,
        anchor_labels: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """Segment a batch of studies.

        Args:
            inputs: (B, 1, H, W, Z, T) normalised images; or, without ``annotation``, (B, 2, H, W, Z, T): the image and
                an annotation channel, 0 except on the annotated frames (each labelled frame is an anchor;
                :func:`annotated_frame` picks the primary one).
            network: the CSTM network.
            annotation: (B, H, W) labels of the primary annotated frame of each study.
            annotation_slice, annotation_phase: (B,) tensors or ints, z_a and t_a of each study.
            anchor_frames: (B, N, 2) long, the (z, t) of every annotated frame (the primary one among them); None: the
                primary frame is the only one.
            anchor_labels: (B, N, H, W) their labels.
            image_spacing: (B, 2) in-plane spacing (mm) of rows and columns; needed with ``roi_size``, taken from the
                affine when ``inputs`` is a ``MetaTensor``.
            base_first: (B,) per-study slice order, used unless the inferer's ``base_first`` is set.
        Returns:
            labels (B, 1, H, W, Z, T), uint8: a ``MetaTensor`` whose meta holds, per study and frame (B, Z, T),
            :data:`QC_CONFIDENCE` (:func:`frame_confidence`) and :data:`QC_DISAGREEMENT` (of the two time
            directions; 0 with "forward"), read by :class:`~scripts.metrics.QualityReportd`.
        """
        if annotation is None:
            if inputs.ndim != 6 or inputs.shape[1] != 2:
                raise ValueError(
                    "without an annotation argument, expected inputs (B, 2, H, W, Z, T) (image, "
                    f"annotation channel), got {tuple(inputs.shape)}."
                )
            if image_spacing is None and isinstance(inputs, MetaTensor):
                image_spacing = torch.linalg.norm(inputs.affine.reshape(-1, 4, 4)[:, :3, :2].float(), dim=1)  # (B, 2)
            channels = inputs[:, 1].as_tensor() if isinstance(inputs, MetaTensor) else inputs[:, 1]
            frames = [annotated_frame(channel.round().long()) for channel in channels]  # (labels, z_a, t_a) each
            annotation = torch.stack([f[0] for f in frames])
            annotation_slice, annotation_phase = [f[1] for f in frames], [f[2] for f in frames]
            study_anchors = [labelled_frames(channel.round().long()) for channel in channels]
            inputs = inputs[:, :1]
        elif anchor_frames is not None and anchor_labels is not None:
            study_anchors = [
                {(int(z), int(t)): lab for (z, t), lab in zip(fs.reshape(-1, 2).tolist(), labs, strict=True)}
                for fs, labs in zip(anchor_frames, anchor_labels, strict=True)
            ]
        else:
            study_anchors = None
        if inputs.ndim != 6 or inputs.shape[1] != 1:
            raise ValueError(f"expected inputs (B, 1, H, W, Z, T), got {tuple(inputs.shape)}.")
        if self.roi_size is not None and (image_spacing is None or self.roi_size % network.size_multiple):
            raise ValueError(f"roi_size={self.roi_size} needs image_spacing and a multiple of {network.size_multiple}.")
        z_a = torch.as_tensor(annotation_slice).reshape(-1)
        t_a = torch.as_tensor(annotation_phase).reshape(-1)
        base = torch.as_tensor(base_first).reshape(-1).expand(inputs.shape[0])
        out, confidence, disagreements = [], [], []
        for b in range(inputs.shape[0]):
            image = inputs[b, 0].float().permute(2, 3, 0, 1)  # (Z, T, H, W)
            ann = annotation[b].reshape(annotation.shape[-2:])  # (H, W)
            annotated = (int(z_a[b]), int(t_a[b]))
            given = {annotated: ann} if study_anchors is None else {annotated: ann, **study_anchors[b]}
            for f, lab in given.items():
                _check_labels(lab, f, network.num_classes)
            box = None
            if self.roi_size is None:
                frames, pad = pad_to_multiple(image, network.size_multiple, network.matcher.min_size)
                anchors_in = {
                    f: pad_to_multiple(lab, network.size_multiple, network.matcher.min_size)[0]
                    for f, lab in given.items()
                }
            else:
                box = anchor_box(  # from the set of anchors, whichever is the primary one
                    given,
                    image.shape[0],
                    tuple(torch.as_tensor(image_spacing).reshape(-1, 2)[b].tolist()),
                    self.roi_size,
                    self.spacing,
                )
                frames = crop_resize(image, box, self.roi_size)  # (Z, T, S, S)
                anchors_in = {
                    f: crop_resize(lab[None, None], box, self.roi_size, "nearest")[0, 0] for f, lab in given.items()
                }  # (S, S) each
            labels, probs, disagreement = self._propagate(network, frames, anchors_in, bool(base[b]), box)
            confidence.append(frame_confidence(probs))
            disagreements.append(torch.zeros_like(confidence[-1]) if disagreement is None else disagreement)
            if self.roi_size is None:
                labels = crop_padding(labels, pad)
            else:  # back onto the input grid from the probabilities, one slice at a time (bounds memory)
                labels = torch.stack([paste_probabilities(per_slice, box, image.shape[-2:]) for per_slice in probs])
            labels = clean_up(labels, network.num_classes, self.largest_component, self.fill_holes)
            for f, lab in given.items():  # the annotated frames are given, not predicted
                labels[f] = lab.to(labels)
            out.append(labels.permute(2, 3, 0, 1))  # (H, W, Z, T)
        pred = MetaTensor(torch.stack(out)[:, None])
        if isinstance(inputs, MetaTensor):  # the image's geometry and meta, as MONAI's inferers return
            pred.copy_meta_from(inputs, copy_attr=False)
        pred.meta.update(
            {QC_CONFIDENCE: torch.stack(confidence).cpu(), QC_DISAGREEMENT: torch.stack(disagreements).cpu()}
        )
        pred.is_batch = True
        return pred

    def _propagate(
        self, network: CSTM, frames: Tensor, anchors: dict[Frame, Tensor], base_first: bool, roi: Box | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Propagate the anchors through frames (Z, T, S, S) in ``time_direction``; ``roi`` is the heart ROI in input
        pixels that ``frames`` were cropped from (None: whole frames), part of the cache key.

        Returns:
            labels (Z, T, S, S) uint8, class probabilities (Z, T, O, S, S) float16 and, with "both", the
            disagreement of the two directions per frame (Z, T): the fraction of the frame's heart pixels
            (:func:`frame_confidence`) whose class differs.
        """
        num_slices, num_phases = frames.shape[:2]
        results = []
        for backward in [False, True] if self.time_direction == "both" else [False]:
            probs = frames.new_zeros((*frames.shape[:2], network.num_classes, *frames.shape[2:]), dtype=torch.float16)
            plan = self.plan(num_slices, num_phases, list(anchors), base_first, backward)
            known: dict[Frame, Tensor] = dict(anchors)
            if self.cache is not None:
                settings = {**self.cache_settings(frames.device), "roi": None if roi is None else list(roi)}
                key = self.cache.key(network, frames, settings, backward)
                signatures = chain_signatures(plan, {f: tensor_digest(lab) for f, lab in anchors.items()})
                entry = self.cache.load(key)
                if entry is not None and tuple(entry["probabilities"].shape) == tuple(probs.shape):
                    kept = [f for f in plan if entry["signatures"].get(f) == signatures[f]]
                    known.update({f: entry["probabilities"][f].to(frames.device) for f in kept})
                    logger.info(f"propagation cache: {len(kept)} of {len(plan)} frames kept, the others predicted")
                plan = {f: memory for f, memory in plan.items() if f not in known}
            labels = propagate_4d(
                network,
                frames.permute(2, 3, 0, 1),
                known,
                plan,
                self.max_batch,
                self.amp,
                self.progress,
                probabilities=probs,
            )
            if self.cache is not None and plan:  # nothing predicted: the entry holds this result already
                try:
                    self.cache.save(key, signatures, probs)
                except (OSError, CSTMInputError) as e:  # a read-only cache: the result stands, it is not kept
                    logger.warning(f"propagation cache: not kept ({e})")
            results.append((labels.permute(2, 3, 0, 1), probs))
        if len(results) == 1:
            return (*results[0], None)
        (labels_f, probs_f), (labels_b, probs_b) = results
        w = probs_f.new_tensor(time_direction_weights(num_phases, [t for _, t in anchors]))[None, :, None, None, None]
        fused = probs_f * w + probs_b * (1 - w)
        heart = _heart_pixels(fused)
        disagreement = ((labels_f != labels_b) & heart).sum((-2, -1)) / heart.sum((-2, -1)).clamp(min=1)
        return class_argmax(fused, 2).to(torch.uint8), fused, disagreement.float()


QC_CONFIDENCE = "qc_confidence"
QC_DISAGREEMENT = "qc_disagreement"
HEART_BACKGROUND_PROBABILITY = 0.9
"""A pixel belongs to the heart for the quality scores when its class is not background or its background
probability is below this."""


def _heart_pixels(probs: Tensor) -> Tensor:
    """(..., O, S, S) probabilities -> (..., S, S) bool: the pixels :data:`HEART_BACKGROUND_PROBABILITY` counts."""
    return (class_argmax(probs, -3) > 0) | (probs[..., 0, :, :] < HEART_BACKGROUND_PROBABILITY)


def frame_confidence(probs: Tensor) -> Tensor:
    """Confidence of every frame: the mean over its heart pixels (:func:`_heart_pixels`) of the largest class
    probability; 1 for a frame without heart pixels.

    Args:
        probs: (Z, T, O, S, S) class probabilities.
    Returns:
        (Z, T) float32 in [1/O, 1].
    """
    scores = []
    for per_slice in probs:  # one slice at a time: no float32 copy of the whole study
        heart = _heart_pixels(per_slice)
        score = (per_slice.float().amax(1) * heart).sum((-2, -1)) / heart.sum((-2, -1)).clamp(min=1)
        scores.append(torch.where(heart.any(-1).any(-1), score, torch.ones_like(score)))
    return torch.stack(scores)


def _check_labels(labels: Tensor, frame: Frame, num_classes: int) -> None:
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"annotation values {torch.unique(labels).tolist()} outside 0..{num_classes - 1} (0 bg, 1 RV, 2 Myo, "
            f"3 LV) on frame {frame}."
        )
