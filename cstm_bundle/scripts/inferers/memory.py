"""Memory bookkeeping for 4D propagation: per-frame keys and values, freed once no later query needs them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch import Tensor

from ..networks.cstm import Memory
from .schedule import Frame, Plan


class MemoryBank:
    """Keys (stride 16 and 8) and values of the frames that later queries read, with reference counts from the plan.

    A frame's tensors are stored when :meth:`add` is called and dropped after its last reader calls :meth:`release`,
    so at most one wavefront of memory frames is held at a time, besides the anchors that queries read to the end
    (``anchor_memory``). Holds tensors only; the schedule lives in the plan.

    Args:
        plan: query -> memory frames, from :func:`~.schedule.plan_propagation`.
    """

    def __init__(self, plan: Plan):
        self.readers = Counter(m for memory in plan.values() for m in memory)
        self.frames: dict[Frame, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def needed(self, frame: Frame) -> bool:
        """Whether a later query reads ``frame``."""
        return self.readers[frame] > 0

    def add(self, frames: Iterable[Frame], key16: Tensor, key8: Tensor, value16: Tensor, value8: Tensor) -> None:
        """Store B frames: each tensor (B, C, h, w), row i belonging to the i-th frame."""
        for i, frame in enumerate(frames):
            self.frames[frame] = (key16[i], key8[i], value16[i], value8[i])

    def gather(self, memories: list[tuple[Frame, ...]]) -> Memory:
        """Stack the memory of B queries that all read T frames into a :class:`Memory` of (B, C, T, h, w) tensors."""
        parts = [
            torch.stack([torch.stack([self.frames[f][j] for f in memory], 1) for memory in memories]) for j in range(4)
        ]
        return Memory(*parts)

    def release(self, memories: Iterable[tuple[Frame, ...]]) -> None:
        """Count one read of every listed frame and drop frames that no query reads any more."""
        for memory in memories:
            for frame in memory:
                self.readers[frame] -= 1
                if self.readers[frame] == 0:
                    self.frames.pop(frame, None)
