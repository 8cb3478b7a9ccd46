"""Per-study cache of a propagation, so that a correction (one more annotated frame) recomputes only the frames
whose memory chain changed (:func:`~.schedule.chain_signatures`).

One file per study, time direction, network and settings: ``<cache_dir>/<key>.pt``. The key (:meth:`key`) is a
digest of everything that changes a frame's probabilities other than its memory chain: the ROI frames the network
sees (content and shape) and the ROI box, the network's weights, its recorded arguments (``CSTM.config``) and its
matcher's state, the inferer's settings (:meth:`~.propagation.Propagation4DInferer.cache_settings`: every
constructor argument not listed as neutral, with the device type, compute dtype and torch version), and the
direction. The chain signatures then cover what the anchors and the schedule change frame by frame.

An entry holds every frame's chain signature and class probabilities (float16, on the ROI grid). On a rerun, a frame
whose signature is unchanged takes its probabilities from the cache; the others are predicted, reading the kept
frames' values re-encoded from those probabilities (the values are not stored: they are cheap to encode and large).
Key features are not cached either: only the frames that are predicted again, or read by them, are key-encoded.

The folder is bounded (``max_gb``): after each write the least recently used entries (by modification time, which a
read refreshes) are deleted until the entries fit, never the one just written. An entry is about
Z × T × O × S² × 2 bytes: 74 MB for 10 slices × 25 phases, 4 classes, a 192-pixel ROI, so the default 2 GB keeps
the last ~27 such studies (one direction each).

Entries are written atomically; one that cannot be read is ignored (and replaced) with a warning, files that are not
entries are left alone, and concurrent runs on one folder may evict each other's entries or find one gone, which
costs them a full run, never a wrong result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat as stat_module
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import write_atomic
from .schedule import Frame

logger = logging.getLogger(__name__)

DEFAULT_CACHE_MAX_GB = 2.0
"""Default bound of a cache folder, in GB (1e9 bytes); see the module docstring for what it holds."""

KEY_VERSION = "cstm-propagation-cache-2"
"""Changes whenever what goes into a key or an entry changes, so older entries are never read."""

_ENTRY = re.compile(r"[0-9a-f]{32}\.pt")
"""The file name of an entry (:meth:`PropagationCache.key` + ``.pt``)."""
_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\..*\.tmp\.pt")
"""The temporary file of an entry being written (:func:`~scripts.io.write_atomic`)."""
STALE_TEMPORARY_S = 3600.0
"""A temporary entry file older than this is left over from a killed run and is deleted by the eviction."""


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' bytes (CPU, contiguous), in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes and tensors)."""
    h = hashlib.sha256()
    for name, t in network.state_dict().items():
        h.update(f"{name} {t.dtype}".encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


def network_record(network: torch.nn.Module) -> dict[str, Any]:
    """What of a network beyond its weights changes its predictions: its class, its recorded constructor arguments
    (``CSTM.config``: matching mode, patch size, top-K and strides change the result without changing a weight), its
    matcher's current state and whether it is in training mode."""
    matcher = getattr(network, "matcher", None)
    return {
        "class": f"{type(network).__module__}.{type(network).__qualname__}",
        "config": getattr(network, "config", None),
        "matcher": (
            {name: getattr(matcher, name, None) for name in ("mode", "patch_size", "top_k", "strides")}
            if matcher is not None
            else None
        ),
        "training": network.training,
    }


def _fingerprint(network: torch.nn.Module) -> tuple | None:
    """Cheap identity of a network's current weights: every tensor's storage and in-place version counter (which
    ``load_state_dict`` and optimiser steps bump). None where a tensor has no version counter."""
    try:
        return tuple((name, t.data_ptr(), t._version) for name, t in network.state_dict(keep_vars=True).items())
    except (AttributeError, RuntimeError):
        return None


class PropagationCache:
    """Stored propagations of one ``cache_dir``.

    Args:
        cache_dir: the folder (created when first written).
        max_gb: most gigabytes (1e9 bytes) of entries kept (:meth:`evict`); None: no bound.
    Raises:
        ValueError: ``max_gb`` is not positive.
    """

    def __init__(self, cache_dir: str | os.PathLike, max_gb: float | None = DEFAULT_CACHE_MAX_GB):
        if max_gb is not None and not max_gb > 0:
            raise ValueError(f"cache max_gb must be > 0 (or None for no bound), got {max_gb}.")
        self.cache_dir = Path(cache_dir)
        self.max_bytes = None if max_gb is None else int(max_gb * 1e9)
        self._weights: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple | None, str]] = (
            weakref.WeakKeyDictionary()
        )

    def _weights_digest(self, network: torch.nn.Module) -> str:
        """:func:`weights_digest`, computed again only when the weights may have changed (:func:`_fingerprint`)."""
        fingerprint = _fingerprint(network)
        known = self._weights.get(network)
        if fingerprint is None or known is None or known[0] != fingerprint:
            known = (fingerprint, weights_digest(network))
            self._weights[network] = known
        return known[1]

    def key(self, network: torch.nn.Module, frames: Tensor, settings: dict[str, Any], backward: bool) -> str:
        """The cache key of frames (Z, T, S, S) propagated by ``network`` in one direction with ``settings`` (the
        inferer's :meth:`~.propagation.Propagation4DInferer.cache_settings` and the ROI box; JSON-serialisable).

        Returns:
            32 hex digits.
        """
        record = {
            "version": KEY_VERSION,
            "weights": self._weights_digest(network),
            "network": network_record(network),
            "settings": settings,
            "frames": tensor_digest(frames),
            "direction": "backward" if backward else "forward",
        }
        text = json.dumps(record, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def load(self, key: str) -> dict[str, Any] | None:
        """``{"signatures": {frame: digest}, "probabilities": (Z, T, O, S, S) float16}``, or None; a hit marks the
        entry as used now (its modification time, which :meth:`evict` reads)."""
        path = self.cache_dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            entry["signatures"] = {tuple(f): s for f, s in zip(entry["frames"], entry["digests"], strict=True)}
        except FileNotFoundError:  # evicted by a concurrent run in between
            return None
        except Exception as e:  # a damaged file costs a full run, never a wrong result
            logger.warning(f"propagation cache {path} cannot be read ({type(e).__name__}); recomputing the study")
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return entry

    def save(self, key: str, signatures: dict[Frame, str], probabilities: Tensor) -> Path:
        """Store a study's signatures and probabilities (Z, T, O, S, S), replacing an earlier entry, then
        :meth:`evict` down to ``max_gb`` (never this entry)."""
        frames = sorted(signatures)
        entry = {
            "frames": [list(f) for f in frames],
            "digests": [signatures[f] for f in frames],
            # a plain tensor: a MetaTensor (the bundle's images are) pickles its numpy meta, which weights_only
            # loading refuses, so every rerun would recompute the whole study
            "probabilities": torch.as_tensor(probabilities).as_subclass(torch.Tensor).detach().to("cpu", torch.float16),
        }
        path = write_atomic(self.cache_dir / f"{key}.pt", lambda tmp: torch.save(entry, tmp), overwrite=True)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete the least recently used entries (oldest modification time first) until the entries of the folder
        take at most ``max_gb``; ``keep`` is never deleted, nor any file that is not an entry, except temporary entry
        files older than :data:`STALE_TEMPORARY_S` (left by a killed run). Safe against concurrent runs: a file that
        another run deleted in between is skipped.

        Returns:
            the entries deleted.
        """
        if self.max_bytes is None:
            return []
        entries, now = [], time.time()
        try:
            names = os.listdir(self.cache_dir)
        except OSError:
            return []
        for name in names:
            path = self.cache_dir / name
            try:
                stat = path.stat()
                if _TEMPORARY.fullmatch(name) and now - stat.st_mtime > STALE_TEMPORARY_S:
                    path.unlink()
                    continue
            except OSError:  # gone meanwhile, or not ours to delete
                continue
            if _ENTRY.fullmatch(name) and stat_module.S_ISREG(stat.st_mode):  # a folder of that name is not ours
                entries.append((stat.st_mtime, name, stat.st_size, path))
        total = sum(size for _, _, size, _ in entries)
        deleted = []
        for _, _name, size, path in sorted(entries):  # oldest first; the name breaks ties
            if total <= self.max_bytes:
                break
            if keep is not None and path == keep:
                continue
            try:
                path.unlink()
                deleted.append(path)
            except FileNotFoundError:  # a concurrent run evicted it first
                pass
            except OSError as e:
                logger.warning(f"propagation cache: cannot delete {path} ({e.strerror})")
                continue
            total -= size
        if deleted:
            logger.info(f"propagation cache {self.cache_dir}: {len(deleted)} least recently used entries evicted")
        return deleted
