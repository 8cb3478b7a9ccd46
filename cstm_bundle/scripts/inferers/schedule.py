"""The 4D propagation schedule of paper §3.3 (Fig. 5) as data: for every predicted frame, its memory frames.

A frame is ``(z, t)``. A plan maps each query frame to the tuple of memory frames it reads, in the order the paper
propagates; the first memory frame is always the anchor (the annotated frame, or for ``continuity="temporal"`` the
slice's first predicted frame). With several anchors, every query also reads the nearest other anchors as permanent
memory (``anchor_memory``, :func:`anchor_distance`), appended after its chain. Keeping the schedule apart from the
executor makes it testable without a network and lets the executor batch every frame whose memory is ready
(:func:`dependency_levels`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
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


def _phase_order(num_phases: int, start: int, step: int = 1) -> list[int]:
    """Phases after ``start`` in propagation order (``step`` -1: backwards), wrapping around the cardiac cycle."""
    return [(start + step * i) % num_phases for i in range(1, num_phases)]


def _slice_order(num_slices: int, start: int) -> list[int]:
    """Every slice but ``start``, outwards from it: first towards higher z, then towards lower z."""
    return [*range(start + 1, num_slices), *range(start - 1, -1, -1)]


def _chain(anchor: Frame, previous: list[Frame], size: int) -> tuple[Frame, ...]:
    """Anchor plus the ``size - 1`` most recent frames of ``previous`` (most recent last), without duplicates."""
    recent = [f for f in previous[max(0, len(previous) - (size - 1)) :] if f != anchor] if size > 1 else []
    return (anchor, *recent)


def anchor_distance(query: Frame, anchor: Frame, num_slices: int, num_phases: int) -> int:
    """How far an anchor lies from a query frame, for choosing the anchors a query reads (``anchor_memory``).

    ``|dz| * T / Z + dt``, with ``dt`` the cyclic phase distance ``min((t - t_a) mod T, (t_a - t) mod T)``: each axis
    as a fraction of the study (the whole stack weighs as much as the whole cycle; for 10 slices and 25 phases one
    slice step weighs 2.5 phase steps). Returned multiplied by Z, ``|dz| * T + dt * Z``, to compare exactly in
    integers.
    """
    dz = abs(query[0] - anchor[0])
    dt = min((query[1] - anchor[1]) % num_phases, (anchor[1] - query[1]) % num_phases)
    return dz * num_phases + dt * num_slices


def as_anchors(anchors: Frame | Iterable[Frame]) -> list[Frame]:
    """The anchors (annotated frames) as a sorted list without duplicates; one frame ``(z, t)`` is one anchor."""
    if isinstance(anchors, tuple) and len(anchors) == 2 and all(isinstance(i, int) for i in anchors):
        anchors = [anchors]
    frames = sorted({(int(z), int(t)) for z, t in anchors})
    if not frames:
        raise ValueError("expected at least one annotated frame (z, t), got none.")
    return frames


def plan_propagation(
    num_slices: int,
    num_phases: int,
    anchors: Frame | Iterable[Frame],
    continuity: Continuity = "both",
    time_memory_size: int = 2,
    slice_memory_size: int = 2,
    base_first: bool = True,
    backward: bool = False,
    anchor_memory: int = 3,
) -> Plan:
    """Which memory frames every frame of a (Z, T) study reads, in propagation order, from one or more anchors.

    ``continuity="both"`` (paper): along t in the annotated slice (memory: annotated frame + previous phases, T_max =
    ``time_memory_size``), then at every phase along z outwards to base and apex (memory: annotated frame + neighbour
    slices at the same phase, T_max = ``slice_memory_size``); apex slices also read the same slice at the previous phase
    (T_max + 1, paper: 3). ``"spatial"``: the same without that temporal memory. ``"temporal"``: along z at the
    annotated phase, then along t in every slice from its first frame (memory: that frame + previous phases).

    Several anchors (annotated frames) generalise this; one anchor is exactly the paper's schedule:

    - along t, in every slice that holds an anchor: each phase is propagated forwards from the anchor of that slice
      that precedes it most closely in the cycle (the nearest in the direction of propagation), whose chain stops at
      the next anchor;
    - along z, at every phase: the slices that hold an anchor are the seeds (their frame at that phase is an anchor or
      on an anchor's chain along t); every other slice is propagated from the nearest seed (ties: a seed that is an
      anchor at this phase, then the lower z), outwards, and its first memory frame is the anchor behind that seed.
      Every query's chain thus starts from the anchor that it is nearest to along its propagation path;
    - phases are visited in cycle order from the first anchor's phase (the apex slices' temporal frame is the
      previous phase in that order, none at the first);
    - every anchor is permanent memory, as XMem and Cutie keep all annotated frames: besides the chain above (whose
      anchor, the one behind the query, counts as read), a query reads the nearest other anchors by
      :func:`anchor_distance` (ties: the nearer slice, then the anchor that precedes the query more closely in the
      direction of propagation, then the lower z), appended after its chain in that order, until it reads
      ``anchor_memory`` anchors (an anchor already in the chain is not read twice). The readout's affinity then
      decides which pixels follow which anchor. ``anchor_memory`` 0 or 1: only the chain's anchor.

    With ``"temporal"``: along z at every anchored phase from that phase's anchors, then along t in every slice from
    the nearest preceding frame so obtained.

    Args:
        num_slices: Z.
        num_phases: T.
        anchors: the annotated frame (z_a, t_a), or several.
        continuity: "both", "spatial" or "temporal" (paper Table 7).
        time_memory_size: memory frames when propagating along t, the anchor included (paper: 2).
        slice_memory_size: memory frames when propagating along z, the anchor included (paper: 2).
        base_first: z = 0 is the most basal slice (decides which slices are apex).
        backward: propagate along t backwards through the cycle (t_a - 1, t_a - 2, ...): the same rules with the
            phase order reversed (the other direction of :func:`time_direction_weights`).
        anchor_memory: most anchors a query reads, the chain's own included; with one anchor it changes nothing.
    Returns:
        ordered dict query frame -> memory frames (anchor first, the other anchors read last); every frame but the
        anchors is a query, and no anchor is predicted.
    Raises:
        ValueError: an anchor lies outside the study, or none is given, or a memory size is < 1, or
            ``anchor_memory`` is < 0, or continuity is unknown.
    """
    frames = as_anchors(anchors)
    outside = [f for f in frames if not (0 <= f[0] < num_slices and 0 <= f[1] < num_phases)]
    if outside:
        raise ValueError(
            f"annotated frame {outside[0]} lies outside a study of {num_slices} slices × {num_phases} phases."
        )
    if time_memory_size < 1 or slice_memory_size < 1:
        raise ValueError(f"memory sizes must be >= 1, got {time_memory_size} and {slice_memory_size}.")
    if anchor_memory < 0:
        raise ValueError(f"anchor_memory must be >= 0 (0: only the chain's own anchor), got {anchor_memory}.")
    if continuity not in ("both", "spatial", "temporal"):
        raise ValueError(f"continuity must be 'both', 'spatial' or 'temporal', got {continuity!r}.")
    anchor_set = set(frames)
    step = -1 if backward else 1
    first_phase = min(frames, key=lambda f: (f[1], f[0]))[1]
    phase_order = [first_phase, *_phase_order(num_phases, first_phase, step)]
    plan: Plan = {}
    source: dict[Frame, Frame] = {f: f for f in frames}  # frame -> the anchor behind it

    def along_t(z: int, starts: list[int]) -> None:
        """Slice z along t, each phase from the nearest preceding start phase (its frame is known)."""
        for p in starts:
            first, done = (z, p), [(z, p)]
            for t in _phase_order(num_phases, p, step):
                if t in starts:
                    break
                plan[(z, t)] = _chain(first, done, time_memory_size)
                source[(z, t)] = source[first]
                done.append((z, t))

    def along_z(t: int, seeds: list[int], temporal: bool, regions: list[Region]) -> None:
        """Phase t along z from the seed slices, each slice from the nearest seed, outwards."""
        nearest = {
            z: min(seeds, key=lambda s: (abs(z - s), (s, t) not in anchor_set, s))
            for z in range(num_slices)
            if z not in seeds
        }
        for s in seeds:
            for side in (range(s + 1, num_slices), range(s - 1, -1, -1)):
                done = [(s, t)]
                for z in side:
                    if nearest.get(z) != s:
                        break
                    memory = _chain(source[(s, t)], done, slice_memory_size)
                    if temporal and regions[z] == "apex" and t != first_phase:
                        memory = (*memory, (z, (t - step) % num_phases))
                    plan[(z, t)] = memory
                    source[(z, t)] = source[(s, t)]
                    done.append((z, t))

    if continuity == "temporal":
        anchored_phases = sorted({t for _, t in frames}, key=phase_order.index)
        for t in anchored_phases:
            along_z(t, sorted(z for z, p in frames if p == t), False, [])
        for z in range(num_slices):
            along_t(z, anchored_phases)
    else:
        regions = slice_regions(num_slices, base_first)
        seeds = sorted({z for z, _ in frames})
        for z in seeds:
            along_t(z, sorted((t for s, t in frames if s == z), key=phase_order.index))
        for t in phase_order:
            along_z(t, seeds, continuity == "both", regions)
    if anchor_memory > 1 and len(frames) > 1:
        for query, memory in plan.items():
            read = {source[query], *(m for m in memory if m in anchor_set)}
            nearest = sorted(
                (
                    anchor_distance(query, a, num_slices, num_phases),
                    abs(query[0] - a[0]),
                    (query[1] - a[1]) * step % num_phases,
                    a,
                )
                for a in frames
                if a not in read
            )
            plan[query] = (*memory, *(a for *_, a in nearest[: max(0, anchor_memory - len(read))]))
    return plan


def time_direction_weights(num_phases: int, anchor_phases: Iterable[int]) -> list[float]:
    """Weight of the forward propagation at every phase when forward and backward class probabilities are fused:
    ``d_b / (d_f + d_b)``, with ``d_f`` / ``d_b`` the number of phases from the nearest anchor phase going forwards /
    backwards through the cycle (the nearer direction counts more; 0.5 at an anchor phase).

    Returns:
        T weights in [0, 1]; the backward propagation gets ``1 - w``.
    """
    phases = set(anchor_phases)
    weights = []
    for t in range(num_phases):
        d_f = min((t - p) % num_phases for p in phases)
        d_b = min((p - t) % num_phases for p in phases)
        weights.append(0.5 if d_f + d_b == 0 else d_b / (d_f + d_b))
    return weights


def chain_signatures(plan: Plan, anchors: Mapping[Frame, str]) -> dict[Frame, str]:
    """A signature of every frame's whole memory chain: equal signatures in two runs mean that the frame was predicted
    from the same anchors through the same frames, so its prediction can be kept (a correction recomputes the rest).
    Every frame a query reads is in it, the anchors read beside the chain (``anchor_memory``) included, so an added,
    removed or relabelled anchor changes the signature of every frame that reads it, directly or through its chain.

    Args:
        plan: from :func:`plan_propagation` (ordered so memory frames precede their queries).
        anchors: annotated frame -> a digest of its labels.
    Returns:
        frame -> hex digest, for the anchors and every planned frame.
    """
    signature = {f: hashlib.sha1(f"anchor {f} {digest}".encode()).hexdigest() for f, digest in anchors.items()}
    for query, memory in plan.items():
        text = f"{query} <- " + " ".join(signature[m] for m in memory)
        signature[query] = hashlib.sha1(text.encode()).hexdigest()
    return signature


def dependency_levels(plan: Plan, known: Frame | Iterable[Frame]) -> list[list[Frame]]:
    """Group the plan's frames into levels whose memory frames all lie in earlier levels (or are ``known``).

    Frames of one level are independent and can be predicted as one batch; with the paper's plan all phases of a slice
    fall into one level, except apex slices, whose temporal memory makes them a wavefront over (z, t).

    Args:
        plan: from :func:`plan_propagation` (ordered so memory frames precede their queries).
        known: the annotated frame(s), level -1.
    Returns:
        lists of frames, in execution order.
    """
    level: dict[Frame, int] = dict.fromkeys(as_anchors(known), -1)
    for query, memory in plan.items():
        level[query] = 1 + max(level[m] for m in memory)
    levels: list[list[Frame]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for query in plan:
        levels[level[query]].append(query)
    return levels
