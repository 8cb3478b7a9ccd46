"""Bootstrapped cross-entropy (STCN, paper §3.4)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BootstrappedCE(nn.Module):
    """Cross-entropy over all pixels for the first ``start_warm`` iterations, then over the hardest fraction ``p``
    of pixels only, with ``p`` decaying linearly from 1 to ``top_p`` until ``end_warm`` (STCN's schedule).

    Pixels labelled ``ignore_index`` (no ground truth) count in neither the loss nor the fraction.

    Args:
        start_warm: iterations of plain cross-entropy.
        end_warm: iteration at which ``p`` reaches ``top_p``.
        top_p: final fraction of hardest pixels (STCN: 0.15).
        ignore_index: label value without ground truth.
    """

    def __init__(self, start_warm: int = 2000, end_warm: int = 10000, top_p: float = 0.15, ignore_index: int = 255):
        super().__init__()
        if not 0 < top_p <= 1 or end_warm < start_warm:
            raise ValueError(f"need 0 < top_p <= 1 and end_warm >= start_warm, got {top_p}, {start_warm}, {end_warm}.")
        self.start_warm, self.end_warm, self.top_p, self.ignore_index = start_warm, end_warm, top_p, ignore_index

    def fraction(self, iteration: int) -> float:
        """The fraction of hardest pixels kept at ``iteration``."""
        if iteration < self.start_warm:
            return 1.0
        if iteration >= self.end_warm:
            return self.top_p
        progress = (iteration - self.start_warm) / (self.end_warm - self.start_warm)
        return 1.0 - (1.0 - self.top_p) * progress

    def forward(self, logits: Tensor, target: Tensor, iteration: int) -> Tensor:
        """logits (B, O, H, W), target (B, H, W) integer labels -> scalar loss."""
        raw = F.cross_entropy(logits.float(), target.long(), ignore_index=self.ignore_index, reduction="none").flatten()
        raw = raw[target.flatten() != self.ignore_index]
        if raw.numel() == 0:
            return logits.sum() * 0.0
        p = self.fraction(iteration)
        if p < 1.0:
            raw = raw.topk(max(1, int(raw.numel() * p))).values
        return raw.mean()
