"""Per-study cache of a propagation, so that a correction (one more annotated frame) recomputes only the frames
whose memory chain changed (:func:`~.schedule.chain_signatures`).

One file per study, time direction and network: ``<cache_dir>/<key>.pt``, the key a digest of the ROI frames the
network sees (image content, ROI), the network's weights and the direction. It holds every frame's chain signature
and class probabilities (float16, on the ROI grid). On a rerun, a frame whose signature is unchanged takes its
probabilities from the cache; the others are predicted, reading the kept frames' values re-encoded from those
probabilities (the values are not stored: they are cheap to encode and large). Key features are not cached either:
only the frames that are predicted again, or read by them, are key-encoded.

A cache file is written atomically; one that cannot be read is ignored (and replaced) with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import write_atomic
from .schedule import Frame

logger = logging.getLogger(__name__)


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' bytes (CPU, contiguous), in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names and tensors)."""
    h = hashlib.sha256()
    for name, t in network.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


class PropagationCache:
    """Stored propagations of one ``cache_dir``.

    Args:
        cache_dir: the folder (created when first written).
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        self._weights: dict[int, str] = {}

    def key(self, network: torch.nn.Module, frames: Tensor, backward: bool) -> str:
        """The cache key of frames (Z, T, S, S) propagated by ``network`` in one direction."""
        if id(network) not in self._weights:
            self._weights[id(network)] = weights_digest(network)
        text = f"{self._weights[id(network)]} {tensor_digest(frames)} {'backward' if backward else 'forward'}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def load(self, key: str) -> dict[str, Any] | None:
        """``{"signatures": {frame: digest}, "probabilities": (Z, T, O, S, S) float16}``, or None."""
        path = self.cache_dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            entry["signatures"] = {tuple(f): s for f, s in zip(entry["frames"], entry["digests"], strict=True)}
            return entry
        except Exception as e:  # a damaged file costs a full run, never a wrong result
            logger.warning(f"propagation cache {path} cannot be read ({type(e).__name__}); recomputing the study")
            return None

    def save(self, key: str, signatures: dict[Frame, str], probabilities: Tensor) -> Path:
        """Store a study's signatures and probabilities (Z, T, O, S, S), replacing an earlier entry."""
        frames = sorted(signatures)
        entry = {
            "frames": [list(f) for f in frames],
            "digests": [signatures[f] for f in frames],
            "probabilities": probabilities.detach().to("cpu", torch.float16),
        }
        return write_atomic(self.cache_dir / f"{key}.pt", lambda tmp: torch.save(entry, tmp), overwrite=True)
