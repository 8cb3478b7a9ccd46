"""Heart region of interest: a square of fixed size in mm around the heart, resampled to a fixed pixel spacing.

The network sees every study at the same scale (``roi_size`` pixels of ``spacing`` mm, e.g. 192 px of 0.9 mm), so that
the heart spans several stride-16 feature pixels whatever the scanner's resolution or field of view; the paper gets the
same effect by resizing ACDC/M&Ms frames to a shorter side of 384. Training samples and inference share these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Box(NamedTuple):
    """A rectangle in input pixels; it may extend beyond the image (the outside reads as zeros)."""

    top: int
    left: int
    height: int
    width: int


def heart_box(center: tuple[float, float], input_spacing: tuple[float, float], roi_size: int, spacing: float) -> Box:
    """The input-pixel rectangle covering ``roi_size * spacing`` mm on each side, centred on ``center``.

    Args:
        center: (row, column) in input pixels, e.g. the centroid of the annotated heart.
        input_spacing: (row, column) spacing of the input in mm.
        roi_size: side of the ROI in target pixels.
        spacing: target pixel spacing in mm.
    """
    height = max(1, round(roi_size * spacing / float(input_spacing[0])))
    width = max(1, round(roi_size * spacing / float(input_spacing[1])))
    return Box(round(center[0] - height / 2), round(center[1] - width / 2), height, width)


def foreground_center(mask: Tensor) -> tuple[float, float]:
    """Centroid (row, column) of the non-zero pixels of a (H, W) mask; the image centre when the mask is empty."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if rows.numel() == 0:
        return (mask.shape[0] - 1) / 2, (mask.shape[1] - 1) / 2
    return rows.float().mean().item(), cols.float().mean().item()


def anchor_box(
    anchors: Mapping[tuple[int, int], Tensor],
    num_slices: int,
    input_spacing: tuple[float, float],
    roi_size: int,
    spacing: float,
) -> Box:
    """The heart ROI of a study with one or more annotated frames: a function of the set of anchors, not of which one
    is the primary, that an added frame inside it does not move.

    Rule: the *seed* is the anchor (with labelled pixels, where any has) of the earliest phase, and of that phase's
    anchors the one on the slice nearest the stack's middle slice ``Z // 2`` (the lower slice on a tie); the ROI is
    :func:`heart_box` centred on the seed's :func:`foreground_center`. One anchor is therefore exactly the
    single-anchor ROI. Only when some anchor's labelled pixels reach outside that box is the ROI centred instead on the
    centroid of all anchors' labelled pixels together. So an added frame moves the ROI only if it becomes the seed
    (an earlier phase than every anchor, or the earliest anchored phase on a slice nearer the middle) or if its labels
    reach outside the ROI; a correction elsewhere keeps the ROI and with it every cached frame it does not change
    (:class:`~scripts.inferers.cache.PropagationCache`).

    Args:
        anchors: annotated frame (z, t) -> its (H, W) labels, 0 = background; at least one.
        num_slices: Z of the study.
        input_spacing, roi_size, spacing: as for :func:`heart_box`.
    Returns:
        the ROI in input pixels.
    Raises:
        ValueError: no anchor.
    """
    if not anchors:
        raise ValueError("expected at least one annotated frame in anchors, got none.")
    labelled = {f: lab for f, lab in anchors.items() if bool(lab.ne(0).any())}
    pool = labelled or dict(anchors)
    seed = min(pool, key=lambda f: (int(f[1]), abs(int(f[0]) - num_slices // 2), int(f[0])))
    box = heart_box(foreground_center(pool[seed]), input_spacing, roi_size, spacing)
    if all(_inside(lab, box) for lab in labelled.values()):
        return box
    union = torch.stack([lab.ne(0) for lab in labelled.values()]).any(0)  # (H, W)
    return heart_box(foreground_center(union), input_spacing, roi_size, spacing)


def _inside(mask: Tensor, box: Box) -> bool:
    """Whether every non-zero pixel of a (H, W) mask lies inside ``box``."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if rows.numel() == 0:
        return True
    return bool(
        rows.min() >= box.top
        and rows.max() < box.top + box.height
        and cols.min() >= box.left
        and cols.max() < box.left + box.width
    )


def crop_resize(x: Tensor, box: Box, size: int, mode: str = "bilinear") -> Tensor:
    """Crop ``box`` out of ``x`` (zeros outside the image) and resize it to ``size`` × ``size``.

    Args:
        x: (N, C, H, W).
        mode: "bilinear" for images (antialiased where the box is shrunk, so fine detail does not alias), "nearest"
            for labels.
    Returns:
        (N, C, size, size), the dtype of ``x``.
    """
    h, w = x.shape[-2:]
    # F.pad, not MONAI's BorderPad (the same F.pad behind a channel-first MetaTensor): the box may reach outside the
    # image, which MONAI's SpatialCrop clips instead of reading as zeros.
    pad = (max(0, -box.left), max(0, box.left + box.width - w), max(0, -box.top), max(0, box.top + box.height - h))
    crop = F.pad(x, pad)[
        ..., box.top + pad[2] : box.top + pad[2] + box.height, box.left + pad[0] : box.left + pad[0] + box.width
    ]
    kwargs = {"align_corners": False, "antialias": box.height > size or box.width > size} if mode == "bilinear" else {}
    return F.interpolate(crop.float(), size=(size, size), mode=mode, **kwargs).to(x.dtype)


def class_argmax(probs: Tensor, dim: int) -> Tensor:
    """``probs.argmax(dim)`` over a short class dimension, as elementwise comparisons: the same indices (the first
    maximum on ties), without the slow strided reduction that ``argmax`` over a non-last dimension is on CPUs."""
    values = probs.unbind(dim)
    best, index = values[0], torch.zeros_like(values[0], dtype=torch.long)
    for c, value in enumerate(values[1:], 1):
        better = value > best
        best = torch.where(better, value, best)
        index[better] = c
    return index


def paste_labels(labels: Tensor, box: Box, image_size: tuple[int, int], num_classes: int) -> Tensor:
    """Map labels predicted in the ROI back onto the input grid (one-hot through :func:`paste_probabilities`)."""
    return paste_probabilities(F.one_hot(labels.long(), num_classes).movedim(3, 1).float(), box, image_size)


def paste_probabilities(probabilities: Tensor, box: Box, image_size: tuple[int, int]) -> Tensor:
    """Map class probabilities predicted in the ROI back onto the input grid as labels; background outside the ROI.

    The probabilities are resampled to the box size (area averaging when shrinking, bilinear when enlarging) and
    arg-maxed there, so class boundaries land where the probabilities cross on the input grid rather than on the
    ROI's pixel grid.

    Args:
        probabilities: (N, O, size, size) in the ROI.
        box: the ROI in input pixels.
        image_size: (H, W) of the input.
    Returns:
        (N, H, W) uint8 labels.
    """
    shrink = box.height <= probabilities.shape[-2] and box.width <= probabilities.shape[-1]
    mode, kwargs = ("area", {}) if shrink else ("bilinear", {"align_corners": False})
    resized = class_argmax(F.interpolate(probabilities.float(), size=(box.height, box.width), mode=mode, **kwargs), 1)
    out = torch.zeros((probabilities.shape[0], *image_size), dtype=torch.uint8, device=probabilities.device)
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.top + box.height, image_size[0]), min(box.left + box.width, image_size[1])
    out[:, top:bottom, left:right] = resized[
        :, top - box.top : bottom - box.top, left - box.left : right - box.left
    ].to(torch.uint8)
    return out


def resize_to_spacing(x: Tensor, input_spacing: tuple[float, float], spacing: float, mode: str = "bilinear") -> Tensor:
    """Resample whole frames to square pixels of ``spacing`` mm (the initialiser's grid; no cropping).

    Args:
        x: (N, C, H, W).
        input_spacing: (row, column) spacing of ``x`` in mm.
        mode: "bilinear" for images (antialiased where shrunk), "nearest" for labels.
    Returns:
        (N, C, round(H * row spacing / spacing), round(W * column spacing / spacing)), the dtype of ``x``.
    """
    size = tuple(max(1, round(n * float(s) / spacing)) for n, s in zip(x.shape[-2:], input_spacing, strict=True))
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    kwargs = {"align_corners": False, "antialias": shrink} if mode == "bilinear" else {}
    return F.interpolate(x.float(), size=size, mode=mode, **kwargs).to(x.dtype)
