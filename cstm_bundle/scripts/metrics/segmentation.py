"""Dice and HD95 (mm) of label maps, per 2D slice and per 3D volume, by region (paper Table 1), with MONAI's metrics.

Conventions (also in ``docs/README.md``, "Evaluation"):

- Classes: 1 RV, 2 Myo, 3 LV (ACDC); reported in the paper's order LV, Myo, RV, plus their mean ("mean": the average
  of the classes scored in that row group, so an LV-only study's mean is its LV).
- Empty masks, per class and frame (or volume): both prediction and truth empty: Dice 1.0, HD95 0.0 mm, and the
  frame is *not counted* in the slice average (there is nothing to segment); exactly one of them empty: Dice 0.0 and
  HD95 = the diagonal of the scored grid in mm (the largest distance the grid can hold, so a miss never scores better
  than any hit). MONAI would give NaN / inf there; these values are documented instead.
- 2D: every labelled slice is scored alone (in-plane spacing), then averaged over the region's slices; 3D: the
  region's scored slices are stacked into one volume (in-plane and slice spacing) and scored once.
- Regions: :func:`~scripts.inferers.slice_regions` over the study's Z slices (the rule the inferer uses), plus
  "whole" (every slice).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from ..inferers.schedule import slice_regions

CLASS_NAMES = {3: "LV", 2: "Myo", 1: "RV"}
"""Label value -> name, in the paper's column order (LV, Myo, RV)."""
REGIONS = ("basal", "middle", "apex", "whole")
EMPTY_BOTH = (1.0, 0.0)
"""(Dice, HD95 mm) when prediction and truth are both empty (not counted in slice averages)."""


def dice_hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Dice and 95th-percentile Hausdorff distance (mm) of two binary masks of one class.

    Uses ``monai.metrics.compute_dice`` and ``compute_hausdorff_distance(percentile=95, spacing=spacing)``; the
    empty cases get the documented values of the module docstring.

    Args:
        pred: (H, W) or (H, W, Z) bool.
        truth: same shape, bool.
        spacing: voxel size in mm along each axis of ``pred`` (2 or 3 values).
    Returns:
        (dice, hd95_mm): :data:`EMPTY_BOTH` if both are empty; (0.0, grid diagonal in mm) if exactly one is empty.
    Raises:
        ValueError: shapes differ or ``spacing`` does not match the dimensionality.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or len(spacing) != pred.ndim:
        raise ValueError(f"pred {pred.shape}, truth {truth.shape} and spacing {tuple(spacing)} must agree.")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return EMPTY_BOTH
    if not has_pred or not has_truth:
        return 0.0, grid_diagonal(pred.shape, spacing)
    p = torch.as_tensor(pred)[None, None].float()  # (1, 1, H, W[, Z])
    t = torch.as_tensor(truth)[None, None].float()  # (1, 1, H, W[, Z])
    dice = compute_dice(p, t, include_background=True)
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated get_mask_edges argument
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(
            p, t, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(dice[0, 0]), float(hd95[0, 0])


def grid_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a grid of ``shape`` voxels of ``spacing`` mm (the empty-mask HD95)."""
    return float(np.linalg.norm(np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)))


def score_phase(
    pred: np.ndarray,
    truth: np.ndarray,
    slices: dict[int, Sequence[int]],
    spacing: Sequence[float],
    base_first: bool = True,
) -> list[dict]:
    """Dice and HD95 of one phase, per class and region, 2D (slice average) and 3D (stacked slices).

    Args:
        pred: (H, W, Z) predicted labels.
        truth: (H, W, Z) ground-truth labels (only the slices in ``slices`` are read).
        slices: class label -> the z to score for it (labelled slices, minus the annotated frame). A class that is
            not annotated is simply absent: it gets no row (never a 0).
        spacing: (3,) voxel size in mm (rows, columns, slices).
        base_first: z = 0 is the most basal slice (region rule of :func:`~scripts.inferers.slice_regions`).
    Returns:
        one dict per (region, class) with at least one scored slice: region, class, dice_2d, hd95_2d (means over the
        slices where prediction or truth holds the class; NaN when there is none), dice_3d, hd95_3d, num_slices,
        num_empty (slices where both are empty), num_missed (slices where exactly one is empty). Then one "mean" row
        per region: the mean over its classes.
    """
    regions = slice_regions(pred.shape[2], base_first)
    rows = []
    for region in REGIONS:
        region_rows = []
        for label, name in CLASS_NAMES.items():
            zs = [z for z in slices.get(label, ()) if region == "whole" or regions[z] == region]
            if not zs:
                continue
            p, t = pred[:, :, zs] == label, truth[:, :, zs] == label  # (H, W, n)
            per_slice = [dice_hd95(p[..., i], t[..., i], spacing[:2]) for i in range(len(zs))]
            counted = [s for i, s in enumerate(per_slice) if p[..., i].any() or t[..., i].any()]
            missed = sum(p[..., i].any() != t[..., i].any() for i in range(len(zs)))
            dice_3d, hd95_3d = dice_hd95(*_on_true_slices(p, t, zs), spacing)
            region_rows.append(
                {
                    "region": region,
                    "class": name,
                    "dice_2d": float(np.mean([s[0] for s in counted])) if counted else float("nan"),
                    "hd95_2d": float(np.mean([s[1] for s in counted])) if counted else float("nan"),
                    "dice_3d": dice_3d,
                    "hd95_3d": hd95_3d,
                    "num_slices": len(zs),
                    "num_empty": len(zs) - len(counted),
                    "num_missed": int(missed),
                }
            )
        if region_rows:
            rows.extend(region_rows)
            rows.append(
                {
                    "region": region,
                    "class": "mean",
                    **mean_scores(region_rows),
                    "num_slices": max(r["num_slices"] for r in region_rows),
                    "num_empty": min(r["num_empty"] for r in region_rows),
                    "num_missed": sum(r["num_missed"] for r in region_rows),
                }
            )
    return rows


def _on_true_slices(pred: np.ndarray, truth: np.ndarray, zs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, n) masks of the scored slices ``zs`` placed back at their slice positions (H, W, max - min + 1), the
    slices in between empty in both, so that 3D distances across a skipped slice keep its gap."""
    z0 = min(zs)
    shape = (*pred.shape[:2], max(zs) - z0 + 1)
    p, t = np.zeros(shape, bool), np.zeros(shape, bool)
    p[:, :, [z - z0 for z in zs]], t[:, :, [z - z0 for z in zs]] = pred, truth
    return p, t


METRICS = ("dice_2d", "hd95_2d", "dice_3d", "hd95_3d")


def mean_scores(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of each metric over ``rows``, skipping NaN; NaN where no row has a value."""
    out = {}
    for m in METRICS:
        values = [r[m] for r in rows if not np.isnan(r[m])]
        out[m] = float(np.mean(values)) if values else float("nan")
    return out
