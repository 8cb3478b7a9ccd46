"""The 4D propagation plan of paper §3.3 (Fig. 5), checked against the rules written out frame by frame."""

from __future__ import annotations

from collections import Counter

import pytest

from scripts.inferers.schedule import Frame, Plan, dependency_levels, plan_propagation, slice_regions


def _dedupe(*frames: Frame) -> tuple[Frame, ...]:
    return tuple(dict.fromkeys(frames))


def expected_plan(
    z_count: int, t_count: int, annotated: Frame, base_first: bool = True, temporal_apex: bool = True
) -> Plan:
    """Paper rules with memory sizes 2 ("both"; "spatial" without the apex's temporal frame)."""
    z_a, t_a = annotated
    regions = slice_regions(z_count, base_first)
    plan: Plan = {}
    for t in range(t_count):
        if t != t_a:  # annotated slice: anchor + previous phase
            plan[(z_a, t)] = _dedupe(annotated, (z_a, (t - 1) % t_count))
    for t in range(t_count):
        for z in range(z_count):
            if z == z_a:
                continue
            neighbour = (z - 1 if z > z_a else z + 1, t)  # towards the annotated slice, same phase
            memory = _dedupe(annotated, neighbour)
            if temporal_apex and regions[z] == "apex" and t != t_a:
                memory = (*memory, (z, (t - 1) % t_count))
            plan[(z, t)] = memory
    return plan


def assert_executable(plan: Plan, annotated: Frame) -> None:
    """Every memory frame is the annotated frame or a frame planned before its reader."""
    done = {annotated}
    for query, memory in plan.items():
        assert query not in done, query
        assert memory and all(m in done for m in memory), (query, memory)
        done.add(query)


@pytest.mark.parametrize("annotated, base_first", [((3, 0), True), ((3, 0), False), ((1, 3), True), ((5, 4), False)])
def test_both_follows_the_paper_rules(annotated: Frame, base_first: bool) -> None:
    z_count, t_count = 7, 5
    plan = plan_propagation(z_count, t_count, annotated, "both", base_first=base_first)
    assert plan == expected_plan(z_count, t_count, annotated, base_first)
    all_frames = {(z, t) for z in range(z_count) for t in range(t_count)}
    assert set(plan) == all_frames - {annotated} and len(plan) == z_count * t_count - 1
    assert all(m[0] == annotated for m in plan.values())  # anchor first
    assert_executable(plan, annotated)
    regions = slice_regions(z_count, base_first)
    for (z, t), memory in plan.items():
        temporal = [m for m in memory if m != annotated and m[1] != t]
        if z == annotated[0] or regions[z] == "apex":
            assert len(memory) <= 3
        else:  # basal and middle slices: same phase only
            assert not temporal and len(memory) <= 2


def test_explicit_frames_of_the_paper_plan() -> None:
    """Z = 7, T = 5, annotated (3, 0), base first: slices 0-2 basal, 3-4 middle, 5-6 apex."""
    plan = plan_propagation(7, 5, (3, 0))
    a = (3, 0)
    assert plan[(3, 1)] == (a,)
    assert plan[(3, 4)] == (a, (3, 3))
    assert plan[(4, 0)] == (a,)  # the neighbour is the anchor itself
    assert plan[(4, 2)] == (a, (3, 2))
    assert plan[(2, 2)] == (a, (3, 2))
    assert plan[(0, 2)] == (a, (1, 2))
    assert plan[(5, 0)] == (a, (4, 0))  # apex at t_a: no temporal frame
    assert plan[(5, 2)] == (a, (4, 2), (5, 1))
    assert plan[(6, 1)] == (a, (5, 1), (6, 0))


def test_phases_wrap_around_the_cycle() -> None:
    plan = plan_propagation(7, 5, (1, 3))  # base first: apex slices 5, 6
    a = (1, 3)
    order = [t for (z, t) in plan if z == 1]
    assert order == [4, 0, 1, 2]
    assert plan[(1, 4)] == (a,)  # first phase after t_a: anchor only
    assert plan[(1, 0)] == (a, (1, 4))
    assert plan[(1, 2)] == (a, (1, 1))
    assert plan[(6, 4)] == (a, (5, 4), (6, 3))
    assert plan[(6, 0)] == (a, (5, 0), (6, 4))
    assert_executable(plan, a)


@pytest.mark.parametrize("continuity", ["both", "spatial", "temporal"])
def test_single_phase_propagates_along_z_only(continuity: str) -> None:
    plan = plan_propagation(5, 1, (2, 0), continuity)
    assert set(plan) == {(0, 0), (1, 0), (3, 0), (4, 0)}
    assert plan[(4, 0)] == ((2, 0), (3, 0)) and plan[(0, 0)] == ((2, 0), (1, 0))
    assert all(m[1] == 0 for memory in plan.values() for m in memory)


@pytest.mark.parametrize("continuity", ["both", "spatial", "temporal"])
def test_single_slice_propagates_along_t_only(continuity: str) -> None:
    plan = plan_propagation(1, 4, (0, 2), continuity)
    assert plan == {(0, 3): ((0, 2),), (0, 0): ((0, 2), (0, 3)), (0, 1): ((0, 2), (0, 0))}
    assert list(plan) == [(0, 3), (0, 0), (0, 1)]


@pytest.mark.parametrize("continuity", ["both", "spatial", "temporal"])
def test_single_frame_gives_an_empty_plan(continuity: str) -> None:
    plan = plan_propagation(1, 1, (0, 0), continuity)
    assert plan == {}
    assert dependency_levels(plan, (0, 0)) == []


@pytest.mark.parametrize("annotated, base_first", [((3, 0), True), ((0, 2), False), ((6, 4), True)])
def test_spatial_is_both_without_temporal_apex_memory(annotated: Frame, base_first: bool) -> None:
    plan = plan_propagation(7, 5, annotated, "spatial", base_first=base_first)
    assert plan == expected_plan(7, 5, annotated, base_first, temporal_apex=False)
    assert max(len(m) for m in plan.values()) == 2


@pytest.mark.parametrize("annotated", [(3, 0), (1, 3)])
def test_temporal_goes_along_z_then_along_t_in_every_slice(annotated: Frame) -> None:
    z_count, t_count = 6, 5
    z_a, t_a = annotated
    plan = plan_propagation(z_count, t_count, annotated, "temporal")
    keys = list(plan)
    first_phase = [f for f in keys if f[1] == t_a]
    assert keys[: len(first_phase)] == first_phase  # the annotated phase is planned first
    assert len(first_phase) == z_count - 1
    for (z, t), memory in plan.items():
        if t == t_a:
            neighbour = (z - 1 if z > z_a else z + 1, t_a)
            assert memory == _dedupe(annotated, neighbour)
        else:
            assert memory == _dedupe((z, t_a), (z, (t - 1) % t_count))  # the slice's first frame + previous phase
    assert len(plan) == z_count * t_count - 1
    assert_executable(plan, annotated)


@pytest.mark.parametrize(
    "continuity, annotated", [("both", (3, 0)), ("both", (0, 4)), ("spatial", (2, 1)), ("temporal", (5, 2))]
)
def test_dependency_levels(continuity: str, annotated: Frame) -> None:
    plan = plan_propagation(7, 5, annotated, continuity, base_first=False)
    levels = dependency_levels(plan, annotated)
    frames = [f for level in levels for f in level]
    assert Counter(frames) == Counter(list(plan))  # every planned frame exactly once
    level_of = {f: i for i, level in enumerate(levels) for f in level}
    level_of[annotated] = -1
    for query, memory in plan.items():
        assert all(level_of[m] < level_of[query] for m in memory)  # memory lies in an earlier level
        assert level_of[query] == 1 + max(level_of[m] for m in memory)  # as early as possible (largest batches)
    assert all(levels)


def test_dependency_levels_batch_the_phases() -> None:
    """After the annotated slice is done along t, the z-propagation of all phases runs side by side."""
    plan = plan_propagation(3, 4, (1, 0), "spatial")
    levels = dependency_levels(plan, (1, 0))
    assert levels == [[(1, 1), (2, 0), (0, 0)], [(1, 2), (2, 1), (0, 1)], [(1, 3), (2, 2), (0, 2)], [(2, 3), (0, 3)]]


@pytest.mark.parametrize(
    "z_count, base_first, expected",
    [
        (9, True, ["basal"] * 3 + ["middle"] * 3 + ["apex"] * 3),
        (9, False, ["apex"] * 3 + ["middle"] * 3 + ["basal"] * 3),
        (7, True, ["basal"] * 3 + ["middle"] * 2 + ["apex"] * 2),
        (1, True, ["basal"]),
        (1, False, ["basal"]),
        (2, True, ["basal", "middle"]),
    ],
)
def test_slice_regions(z_count: int, base_first: bool, expected: list[str]) -> None:
    assert slice_regions(z_count, base_first) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"anchors": (7, 0)},
        {"anchors": (-1, 0)},
        {"anchors": (0, 5)},
        {"time_memory_size": 0},
        {"slice_memory_size": 0},
        {"continuity": "diagonal"},
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict) -> None:
    args = {"num_slices": 7, "num_phases": 5, "anchors": (3, 0), **kwargs}
    with pytest.raises(ValueError):
        plan_propagation(**args)


def _recent(anchor: Frame, previous: list[Frame], size: int) -> tuple[Frame, ...]:
    """Reference of the memory rule: anchor + the size - 1 most recent frames (without the anchor)."""
    kept = previous[max(0, len(previous) - (size - 1)) :] if size > 1 else []
    return (anchor, *[f for f in kept if f != anchor])


def _check_memory_sizes(time_size: int, slice_size: int) -> None:
    t_count, z_count = 6, 7
    plan = plan_propagation(1, t_count, (0, 0), "both", time_memory_size=time_size)
    for t in range(1, t_count):
        assert plan[(0, t)] == _recent((0, 0), [(0, p) for p in range(t)], time_size), t
    plan = plan_propagation(z_count, 2, (0, 0), "spatial", slice_memory_size=slice_size)
    for z in range(1, z_count):  # phase 1: the annotated slice's frame (0, 1) is not the anchor
        assert plan[(z, 1)] == _recent((0, 0), [(s, 1) for s in range(z)], slice_size), z


@pytest.mark.parametrize("time_size, slice_size", [(1, 1), (2, 2), (3, 3), (5, 2), (2, 4)])
def test_memory_sizes(time_size: int, slice_size: int) -> None:
    _check_memory_sizes(time_size, slice_size)


def test_backward_plan_mirrors_the_forward_one() -> None:
    """Backwards through the cycle: the forward plan of the time-mirrored study (t -> -t mod T)."""
    z_count, t_count = 7, 5

    def mirror(f: Frame) -> Frame:
        return (f[0], (-f[1]) % t_count)

    for anchors in ([(3, 0)], [(3, 0), (3, 2)], [(1, 0), (5, 3)]):
        forward = plan_propagation(z_count, t_count, [mirror(a) for a in anchors])
        backward = plan_propagation(z_count, t_count, anchors, backward=True)
        assert {mirror(q): tuple(mirror(m) for m in ms) for q, ms in forward.items()} == backward


def test_time_direction_weights_favour_the_nearer_direction() -> None:
    from scripts.inferers.schedule import time_direction_weights

    assert time_direction_weights(5, [0]) == [0.5, 4 / 5, 3 / 5, 2 / 5, 1 / 5]
    assert time_direction_weights(6, [0, 3]) == [0.5, 2 / 3, 1 / 3, 0.5, 2 / 3, 1 / 3]
