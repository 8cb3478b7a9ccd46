"""Issue 30 item 1: every anchor is permanent memory, as XMem and Cutie keep every annotated frame. A query reads its
chain plus the nearest other anchors (``anchor_memory``); one anchor is the paper's schedule exactly, and the
correction cache's chain signatures cover every anchor a frame reads."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from helpers import TINY_CSTM
from scripts.inferers.propagation import Propagation4DInferer, propagate_4d
from scripts.inferers.schedule import (
    Frame,
    Plan,
    anchor_distance,
    chain_signatures,
    dependency_levels,
    plan_propagation,
)
from scripts.networks.cstm import CSTM

Z, T = 7, 5
"""Base first: slices 0-2 basal, 3-4 middle, 5-6 apex."""


def _reads(plan: Plan, query: Frame) -> set[Frame]:
    """Every frame ``query`` depends on: its memory frames, theirs, and so on."""
    seen: set[Frame] = set()
    todo = list(plan[query])
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(plan.get(f, ()))
    return seen


@pytest.mark.parametrize("continuity", ["both", "spatial", "temporal"])
@pytest.mark.parametrize("anchor, backward", [((3, 0), False), ((1, 3), False), ((6, 4), True)])
def test_one_anchor_plan_does_not_depend_on_anchor_memory(continuity: str, anchor: Frame, backward: bool) -> None:
    plans = [plan_propagation(Z, T, anchor, continuity, backward=backward, anchor_memory=k) for k in (0, 1, 2, 3, 10)]
    assert all(p == plans[0] and list(p) == list(plans[0]) for p in plans)


def test_anchor_distance_weighs_a_slice_as_t_over_z_phases() -> None:
    assert anchor_distance((2, 1), (2, 24), 10, 25) == 2 * 10  # cyclic: 2 phases, times Z
    assert anchor_distance((2, 24), (2, 1), 10, 25) == 2 * 10  # symmetric
    slice_step = anchor_distance((0, 0), (1, 0), 10, 25)  # one slice = 2.5 phases
    assert anchor_distance((0, 0), (0, 2), 10, 25) < slice_step < anchor_distance((0, 0), (0, 3), 10, 25)
    assert anchor_distance((4, 7), (1, 3), 10, 25) == 3 * 25 + 4 * 10


def test_two_anchors_a_frame_near_one_also_reads_the_other() -> None:
    a, b = (1, 0), (5, 3)
    plan = plan_propagation(Z, T, [a, b])
    chains = plan_propagation(Z, T, [a, b], anchor_memory=0)
    assert chains[(0, 0)] == (a,) and plan[(0, 0)] == (a, b)  # next to a, reads b too
    assert chains[(2, 1)] == (a, (1, 1)) and plan[(2, 1)] == (a, (1, 1), b)
    assert plan[(6, 4)] == (b, (5, 4), (6, 3), a)  # apex: chain with its temporal frame, then a
    assert list(plan) == list(chains)
    for query, memory in plan.items():  # the chain unchanged, in its order, then the other anchor
        assert memory == (*chains[query], b if chains[query][0] == a else a)
    assert not {a, b} & set(plan)  # an anchor is never predicted


@pytest.mark.parametrize("continuity", ["both", "spatial"])
@pytest.mark.parametrize("anchor_memory", [0, 1, 2, 3, 4, 6])
def test_anchor_memory_caps_the_anchors_read_and_takes_the_nearest(continuity: str, anchor_memory: int) -> None:
    anchors = [(0, 0), (3, 2), (6, 4), (2, 4)]
    plan = plan_propagation(Z, T, anchors, continuity, anchor_memory=anchor_memory)
    chains = plan_propagation(Z, T, anchors, continuity, anchor_memory=0)
    for query, memory in plan.items():
        chain = chains[query]
        read = [m for m in memory if m in anchors]
        assert len(read) == len(set(read)) == max(1, min(anchor_memory, len(anchors)))
        assert memory[: len(chain)] == chain and read[0] == chain[0]
        extra = memory[len(chain) :]
        distance = [anchor_distance(query, a, Z, T) for a in extra]
        assert distance == sorted(distance)  # nearest first
        assert all(anchor_distance(query, a, Z, T) >= max(distance, default=0) for a in anchors if a not in read)


def test_anchor_memory_zero_keeps_one_anchor_per_query() -> None:
    anchors = [(0, 0), (3, 2), (6, 4), (2, 4)]
    for continuity in ("both", "spatial"):
        plan = plan_propagation(Z, T, anchors, continuity, anchor_memory=0)
        assert plan == plan_propagation(Z, T, anchors, continuity, anchor_memory=1)
        assert all(sum(m in anchors for m in memory) == 1 for memory in plan.values())


@pytest.mark.parametrize("continuity", ["both", "spatial", "temporal"])
@pytest.mark.parametrize("backward", [False, True])
def test_dependency_levels_with_anchor_memory(continuity: str, backward: bool) -> None:
    anchors = [(1, 0), (5, 3), (3, 2)]
    plan = plan_propagation(Z, T, anchors, continuity, backward=backward)
    assert any(sum(m in anchors for m in memory) == 3 for memory in plan.values())
    levels = dependency_levels(plan, anchors)
    assert Counter(f for level in levels for f in level) == Counter(list(plan))
    level_of = {f: i for i, level in enumerate(levels) for f in level} | dict.fromkeys(anchors, -1)
    for query, memory in plan.items():
        assert level_of[query] == 1 + max(level_of[m] for m in memory)


def test_temporal_non_anchored_slices_read_the_anchors_too() -> None:
    a, b = (3, 0), (3, 2)
    plan = plan_propagation(Z, T, [a, b], "temporal")
    chains = plan_propagation(Z, T, [a, b], "temporal", anchor_memory=0)
    assert chains[(0, 1)] == ((0, 0),) and plan[(0, 1)] == ((0, 0), b)  # (0, 0) comes from a: b is the other
    assert chains[(0, 3)] == ((0, 2),) and plan[(0, 3)] == ((0, 2), a)


def test_signatures_cover_every_anchor_a_frame_reads() -> None:
    a, b = (1, 0), (5, 3)
    plan = plan_propagation(Z, T, [a, b])
    base = chain_signatures(plan, {a: "a", b: "b"})
    relabelled = chain_signatures(plan, {a: "a", b: "b, corrected"})
    assert all(base[q] != relabelled[q] for q in plan)  # every frame reads b (e.g. (0, 0), next to a)
    chains = plan_propagation(Z, T, [a, b], anchor_memory=0)
    old = chain_signatures(chains, {a: "a", b: "b"})
    assert old[(0, 0)] == chain_signatures(chains, {a: "a", b: "b, corrected"})[(0, 0)]  # read only through a chain
    single = chain_signatures(plan_propagation(Z, T, a), {a: "a"})
    assert all(single[q] != base[q] for q in plan)  # adding b: every frame now reads it
    assert single[(0, 0)] == old[(0, 0)]  # without anchor memory, (0, 0) did not read b


def test_a_far_anchor_changes_exactly_the_frames_that_read_it() -> None:
    anchors = {(0, 0): "a", (3, 2): "b", (6, 4): "c", (2, 4): "d"}
    plan = plan_propagation(Z, T, list(anchors), anchor_memory=2)
    base = chain_signatures(plan, anchors)
    changed = chain_signatures(plan, {**anchors, (6, 4): "c, corrected"})
    reads = {q: (6, 4) in _reads(plan, q) for q in plan}
    assert 0 < sum(reads.values()) < len(plan)  # the test can fail both ways
    assert all((base[q] != changed[q]) == reads[q] for q in plan)


def test_negative_anchor_memory_is_rejected() -> None:
    with pytest.raises(ValueError, match="anchor_memory"):
        plan_propagation(Z, T, (3, 0), anchor_memory=-1)
    with pytest.raises(ValueError, match="anchor_memory"):
        Propagation4DInferer(anchor_memory=-1)


@pytest.fixture(scope="module")
def net() -> CSTM:
    torch.manual_seed(0)
    return CSTM(**TINY_CSTM).eval()


def test_two_anchors_end_to_end_on_a_tiny_network(net: CSTM) -> None:
    torch.manual_seed(7)
    z, t, size = 4, 4, 96
    image = torch.rand(size, size, z, t)
    anchors = {(1, 0): torch.randint(0, 4, (size, size)), (3, 2): torch.randint(0, 4, (size, size))}
    results = {}
    for k in (0, 3):
        plan = plan_propagation(z, t, list(anchors), anchor_memory=k)
        trace: list = []
        probs = torch.zeros(z, t, 4, size, size)
        labels = propagate_4d(net, image, anchors, plan, max_batch=5, trace=trace, probabilities=probs)
        assert {q: m for _, q, m in trace} == plan and len(trace) == z * t - 2
        assert not set(anchors) & set(plan)
        for (za, ta), lab in anchors.items():  # never changed: not predicted, returned as given
            assert torch.equal(labels[..., za, ta], lab.to(torch.uint8))
            assert torch.equal(probs[za, ta].argmax(0), lab)
        results[k] = probs
    assert not torch.allclose(results[0], results[3])  # the other anchor is really read

    inferer = Propagation4DInferer(roi_size=None, max_batch=8)
    frames = list(anchors)
    out = inferer(
        image[None, None],
        net,
        annotation=anchors[frames[0]][None],
        annotation_slice=frames[0][0],
        annotation_phase=frames[0][1],
        anchor_frames=torch.tensor(frames)[None],
        anchor_labels=torch.stack(list(anchors.values()))[None],
    )[0, 0]
    assert out.shape == (size, size, z, t)
    for (za, ta), lab in anchors.items():
        assert torch.equal(out[..., za, ta], lab.to(torch.uint8))
