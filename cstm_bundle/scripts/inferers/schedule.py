"""The 4D propagation schedule of paper §3.3 (Fig. 5) as data: for every predicted frame, its memory frames.

A frame is ``(z, t)``. A plan maps each query frame to the tuple of memory frames it reads, in the order the paper
propagates; the first memory frame is always the anchor (the annotated frame, or for ``continuity="temporal"`` the
slice's first predicted frame). Keeping the schedule apart from the executor makes it testable without a network and
lets the executor batch every frame whose memory is ready (:func:`dependency_levels`).
"""

from __future__ import annotations

from typing import Literal

Frame = tuple[int, int]
Plan = dict[Frame, tuple[Frame, ...]]
Region = Literal["basal", "middle", "apex"]
Continuity = Literal["both", "spatial", "temporal"]


def slice_regions(num_slices: int, base_first: bool = True) -> list[Region]:
    """Region of every slice: the base-to-apex slice range split into thirds (paper Table 1).

    Rule: with the slices ordered from base to apex, the first ``ceil(Z/3)`` are basal, the last ``floor(Z/3)`` apex,
    and the rest middle (Z = 1: basal; Z = 2: basal, middle; Z = 9: 3 each).

    Args:
        num_slices: Z.
        base_first: True when z = 0 is the most basal slice.
    Returns:
        a list of Z regions indexed by z.
    """
    n_basal = -(-num_slices // 3)
    n_apex = num_slices // 3
    ordered: list[Region] = ["basal"] * n_basal + ["middle"] * (num_slices - n_basal - n_apex) + ["apex"] * n_apex
    return ordered if base_first else ordered[::-1]


def _phase_order(num_phases: int, start: int) -> list[int]:
    """Phases after ``start`` in propagation order, wrapping around the cardiac cycle."""
    return [(start + i) % num_phases for i in range(1, num_phases)]


def _slice_order(num_slices: int, start: int) -> list[int]:
    """Every slice but ``start``, outwards from it: first towards higher z, then towards lower z."""
    return [*range(start + 1, num_slices), *range(start - 1, -1, -1)]


def _chain(anchor: Frame, previous: list[Frame], size: int) -> tuple[Frame, ...]:
    """Anchor plus the ``size - 1`` most recent frames of ``previous`` (most recent last), without duplicates."""
    recent = [f for f in previous[max(0, len(previous) - (size - 1)) :] if f != anchor] if size > 1 else []
    return (anchor, *recent)


def plan_propagation(
    num_slices: int,
    num_phases: int,
    annotated: Frame,
    continuity: Continuity = "both",
    time_memory_size: int = 2,
    slice_memory_size: int = 2,
    base_first: bool = True,
) -> Plan:
    """Which memory frames every frame of a (Z, T) study reads, in propagation order.

    ``continuity="both"`` (paper): along t in the annotated slice (memory: annotated frame + previous phases, T_max =
    ``time_memory_size``), then at every phase along z outwards to base and apex (memory: annotated frame + neighbour
    slices at the same phase, T_max = ``slice_memory_size``); apex slices also read the same slice at the previous phase
    (T_max + 1, paper: 3). ``"spatial"``: the same without that temporal memory. ``"temporal"``: along z at the
    annotated phase, then along t in every slice from its first frame (memory: that frame + previous phases).

    Args:
        num_slices: Z.
        num_phases: T.
        annotated: (z_a, t_a), the annotated frame.
        continuity: "both", "spatial" or "temporal" (paper Table 7).
        time_memory_size: memory frames when propagating along t, the anchor included (paper: 2).
        slice_memory_size: memory frames when propagating along z, the anchor included (paper: 2).
        base_first: z = 0 is the most basal slice (decides which slices are apex).
    Returns:
        ordered dict query frame -> memory frames (anchor first).
    Raises:
        ValueError: the annotated frame lies outside the study, or a memory size is < 1, or continuity is unknown.
    """
    z_a, t_a = annotated
    if not (0 <= z_a < num_slices and 0 <= t_a < num_phases):
        raise ValueError(
            f"annotated frame {annotated} lies outside a study of {num_slices} slices × {num_phases} phases."
        )
    if time_memory_size < 1 or slice_memory_size < 1:
        raise ValueError(f"memory sizes must be >= 1, got {time_memory_size} and {slice_memory_size}.")
    if continuity not in ("both", "spatial", "temporal"):
        raise ValueError(f"continuity must be 'both', 'spatial' or 'temporal', got {continuity!r}.")
    anchor = (z_a, t_a)
    phases = _phase_order(num_phases, t_a)
    slices = _slice_order(num_slices, z_a)
    plan: Plan = {}

    def along_t(z: int, first: Frame) -> None:
        done = [first]
        for t in phases:
            plan[(z, t)] = _chain(first, done, time_memory_size)
            done.append((z, t))

    def along_z(t: int, temporal: bool, regions: list[Region]) -> None:
        done: dict[int, list[Frame]] = {}
        for z in slices:
            side = done.setdefault(1 if z > z_a else -1, [(z_a, t)])
            memory = _chain(anchor, side, slice_memory_size)
            if temporal and regions[z] == "apex" and t != t_a:
                memory = (*memory, (z, (t - 1) % num_phases))
            plan[(z, t)] = memory
            side.append((z, t))

    if continuity == "temporal":
        along_z(t_a, False, [])
        for z in range(num_slices):
            along_t(z, (z, t_a))
    else:
        regions = slice_regions(num_slices, base_first)
        along_t(z_a, anchor)
        for t in [t_a, *phases]:
            along_z(t, continuity == "both", regions)
    return plan


def dependency_levels(plan: Plan, known: Frame) -> list[list[Frame]]:
    """Group the plan's frames into levels whose memory frames all lie in earlier levels (or are ``known``).

    Frames of one level are independent and can be predicted as one batch; with the paper's plan all phases of a slice
    fall into one level, except apex slices, whose temporal memory makes them a wavefront over (z, t).

    Args:
        plan: from :func:`plan_propagation` (ordered so memory frames precede their queries).
        known: the annotated frame, level -1.
    Returns:
        lists of frames, in execution order.
    """
    level: dict[Frame, int] = {known: -1}
    for query, memory in plan.items():
        level[query] = 1 + max(level[m] for m in memory)
    levels: list[list[Frame]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for query in plan:
        levels[level[query]].append(query)
    return levels
