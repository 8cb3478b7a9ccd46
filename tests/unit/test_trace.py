"""The executor follows the plan: every prediction reads exactly the planned memory, after that memory exists."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from scripts.inferers import plan_propagation, propagate_4d
from scripts.networks import KeyFeatures, Memory, ValueFeatures, build_cstm


class FrameIdNetwork(nn.Module):
    """A stand-in for CSTM whose features are the frame's id: the image of frame (z, t) is the constant 100 z + t, so
    the memory that :meth:`segment` receives says which frames the memory bank really served (not what the plan
    asked for)."""

    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[tuple[int, int], tuple[tuple[int, int], ...]]] = []

    def encode_key(self, image: Tensor) -> KeyFeatures:
        ids = image[:, :, :1, :1]  # (B, 1, 1, 1)
        return KeyFeatures(ids, ids, ids, ids, image)

    def encode_value(self, image: Tensor, mask: Tensor, key: KeyFeatures) -> ValueFeatures:
        return ValueFeatures(key.key16, key.key8)

    def segment(self, query: KeyFeatures, memory: Memory) -> Tensor:
        def frame(code: float) -> tuple[int, int]:
            return divmod(int(round(code)), 100)

        served = memory.value16[:, 0, :, 0, 0].tolist()  # (B, T) ids of the memory frames
        self.reads += [
            (frame(q), tuple(frame(m) for m in row))
            for q, row in zip(query.key16.flatten().tolist(), served, strict=True)
        ]
        return query.feat4.new_zeros(query.feat4.shape[0], self.num_classes, *query.feat4.shape[-2:])


@pytest.mark.parametrize("annotated", [(2, 0), (0, 3), (4, 2)])
def test_every_query_reads_the_planned_frames_from_the_bank(annotated: tuple[int, int]) -> None:
    z, t = 5, 4
    plan = plan_propagation(z, t, annotated)
    image = (100 * torch.arange(z)[:, None] + torch.arange(t)[None]).float().expand(8, 8, z, t)  # (H, W, Z, T)
    network = FrameIdNetwork()
    propagate_4d(network, image, {annotated: torch.zeros(8, 8, dtype=torch.long)}, plan, max_batch=3)
    assert len(network.reads) == z * t - 1
    assert dict(network.reads) == plan


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_cstm("small").eval()


@pytest.mark.parametrize("annotated, base_first", [((2, 0), True), ((2, 0), False), ((0, 3), True)])
def test_trace_equals_plan(network: torch.nn.Module, annotated: tuple[int, int], base_first: bool) -> None:
    z, t = 5, 4
    plan = plan_propagation(z, t, annotated, base_first=base_first)
    trace: list = []
    image = torch.rand(96, 96, z, t)
    annotation = torch.zeros(96, 96, dtype=torch.long)
    annotation[10:30, 10:30] = 3
    propagate_4d(network, image, {annotated: annotation}, plan, max_batch=3, trace=trace)
    assert {q: m for _, q, m in trace} == plan
    assert len(trace) == z * t - 1
    done = {annotated}
    for level in sorted({lv for lv, _, _ in trace}):
        batch = [(q, m) for lv, q, m in trace if lv == level]
        assert all(f in done for _, m in batch for f in m)  # memory predicted in an earlier level
        done.update(q for q, _ in batch)


def test_batched_and_frame_by_frame_agree(network: torch.nn.Module) -> None:
    """Chunking (the memory guard) changes how many frames share a call, never the result."""
    torch.manual_seed(1)
    plan = plan_propagation(4, 5, (1, 0))
    image = torch.rand(96, 96, 4, 5)
    annotation = torch.zeros(96, 96, dtype=torch.long)
    annotation[30:60, 20:50] = 2
    annotation[38:52, 28:42] = 3
    serial = propagate_4d(network, image, {(1, 0): annotation}, plan, max_batch=1)
    batched = propagate_4d(network, image, {(1, 0): annotation}, plan, max_batch=64)
    assert torch.equal(serial, batched)


def _trace(anchors: list[tuple[int, int]], z: int = 5, t: int = 5, anchor_memory: int = 3) -> dict:
    """What each frame of a (Z, T) study really reads from the bank with these anchors (base first)."""
    plan = plan_propagation(z, t, anchors, anchor_memory=anchor_memory)
    image = (100 * torch.arange(z)[:, None] + torch.arange(t)[None]).float().expand(8, 8, z, t)
    network = FrameIdNetwork()
    labels = propagate_4d(network, image, {f: torch.full((8, 8), 1 + i) for i, f in enumerate(anchors)}, plan)
    for i, (za, ta) in enumerate(anchors):  # anchors come back exactly
        assert (labels[..., za, ta] == 1 + i).all()
    reads = dict(network.reads)
    assert reads == plan and len(network.reads) == z * t - len(anchors)
    return reads


def test_one_anchor_every_frame_reads_it_first():
    a = (2, 0)
    reads = _trace([a])
    assert all(memory[0] == a for memory in reads.values())
    assert reads[(2, 4)] == (a, (2, 3))  # along t, forwards round the cycle
    assert reads[(0, 3)] == (a, (1, 3))
    assert reads[(4, 3)] == (a, (3, 3), (4, 2))  # apex: + its previous phase


def test_two_anchors_each_frame_reads_the_anchor_before_it_in_the_cycle():
    """The chains (``anchor_memory=0``: no anchor read beside the chain)."""
    a, b = (2, 0), (2, 3)  # ED and ES of the middle slice
    reads = _trace([a, b], anchor_memory=0)
    assert reads[(2, 1)] == (a,) and reads[(2, 2)] == (a, (2, 1))
    assert reads[(2, 4)] == (b,)  # after ES, from ES: not from ED round the cycle
    for t in range(5):
        source = a if t in (0, 1, 2) else b
        assert reads[(1, t)][0] == source and reads[(0, t)][0] == source
        assert all(source not in memory[1:] for memory in reads.values())
    assert not any(a in memory and b in memory for memory in reads.values())  # one anchor per query


def test_three_anchors_an_apical_anchor_seeds_its_slice_at_every_phase():
    """The chains (``anchor_memory=0``: no anchor read beside the chain)."""
    a, b, c = (2, 0), (2, 3), (4, 0)  # + an apical slice at ED
    reads = _trace([a, b, c], anchor_memory=0)
    assert [reads[(4, t)] for t in range(1, 5)] == [(c,), (c, (4, 1)), (c, (4, 2)), (c, (4, 3))]
    # slice 3 lies half-way: at ED both neighbours are anchors (lower z wins), elsewhere the middle slice is
    # nearer along its own chain: it reads slice 2's anchor and frame
    assert reads[(3, 0)] == (a,) and reads[(3, 3)] == (b,) and reads[(3, 4)] == (b, (2, 4))
    assert all(memory[0] in (a, b) for (z, _), memory in reads.items() if z < 4)


def test_every_frame_also_reads_the_other_anchors_after_its_chain():
    """Issue 30: every anchor is permanent memory (XMem, Cutie); the bank serves them after the chain, nearest first."""
    a, b, c = (2, 0), (2, 3), (4, 0)
    chains = _trace([a, b, c], anchor_memory=0)
    reads = _trace([a, b, c])  # anchor_memory=3: all three
    for query, memory in reads.items():
        chain = chains[query]
        assert memory[: len(chain)] == chain  # the chain unchanged, in its order
        assert sorted(memory[len(chain) :]) == sorted({a, b, c} - {chain[0]})  # then every other anchor, once
    assert reads[(2, 1)] == (a, b, c)  # b: same slice, 2 phases; c: 2 slices (2 x 5/5 phases) + 1 phase
    assert reads[(4, 3)] == (c, (4, 2), b, a)  # apical slice: b at the same phase first
    assert reads[(3, 4)] == (b, (2, 4), a, c)  # a, c: both 1 slice + 1 phase round the cycle; lower z first
    capped = _trace([a, b, c], anchor_memory=2)
    assert capped[(4, 3)] == (c, (4, 2), b) and capped[(2, 1)] == (a, b)
