"""The executor follows the plan: every prediction reads exactly the planned memory, after that memory exists."""

from __future__ import annotations

import pytest
import torch

from scripts.inferers import plan_propagation, propagate_4d
from scripts.networks import build_cstm


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
    propagate_4d(network, image, annotation, plan, annotated, max_batch=3, trace=trace)
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
    serial = propagate_4d(network, image, annotation, plan, (1, 0), max_batch=1)
    batched = propagate_4d(network, image, annotation, plan, (1, 0), max_batch=64)
    assert torch.equal(serial, batched)
