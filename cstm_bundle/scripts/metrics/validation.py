"""Validation metric of training: Dice per class at ED and at ES."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import sync_all_reduce
from monai.metrics import compute_dice

from .segmentation import CLASS_NAMES

PHASES = ("ED", "ES")


class PhaseClassDice(Metric):
    """Dice of each class at ED and at ES, averaged over the validation studies; one metric per phase and class in
    ``engine.state.metrics`` (``val_dice_ed_lv``, ``val_dice_es_myo``, ...), which the stats and MLflow handlers log.

    Each study's frames of one phase are scored together as one volume (as MONAI's ``MeanDice`` scores a study).
    A class without truth in a study and phase (Sunnybrook's RV) is not scored there; a phase or class never scored
    is left out rather than reported as 0.

    Args:
        prefix: name prefix of the metrics.
        output_transform: engine output -> list of dicts (one per study) with ``pred`` and ``label`` one-hot
            (C, H, W, N) over N frames, and ``frame_phase`` (N,) of "ED"/"ES"
            (:class:`~scripts.data.SelectLabelledFramesd`).
    """

    def __init__(self, prefix: str = "val_dice", output_transform: Callable = lambda x: x):
        self.prefix = prefix
        super().__init__(output_transform=output_transform, metrics_result_mode="flatten")

    def reset(self) -> None:
        self._sum = torch.zeros(len(PHASES), len(CLASS_NAMES), dtype=torch.float64)  # [phase, class - 1]
        self._count = torch.zeros_like(self._sum)

    def update(self, output: Sequence[Mapping[str, Any]]) -> None:
        for item in output:
            pred, label = torch.as_tensor(item["pred"]), torch.as_tensor(item["label"])  # (C, H, W, N)
            phases = np.asarray(item["frame_phase"])
            for i, phase in enumerate(PHASES):
                frames = torch.as_tensor(np.flatnonzero(phases == phase))
                if len(frames) == 0:
                    continue
                dice = compute_dice(
                    pred[None, ..., frames].cpu(),
                    label[None, ..., frames].cpu(),
                    include_background=False,
                    ignore_empty=True,
                )[
                    0
                ]  # (C - 1,), NaN: no truth
                scored = ~dice.isnan()
                self._sum[i, scored] += dice[scored].double()
                self._count[i, scored] += 1

    @sync_all_reduce("_sum", "_count")  # several GPUs: every rank's studies
    def compute(self) -> dict[str, float]:
        mean = self._sum / self._count.clamp(min=1)
        return {
            f"{self.prefix}_{phase.lower()}_{CLASS_NAMES[c + 1].lower()}": float(mean[i, c])
            for i, phase in enumerate(PHASES)
            for c in range(len(CLASS_NAMES))
            if self._count[i, c] > 0
        }
