"""PropagationStep: one propagation step as a single call, and its TorchScript trace (docs/README.md, "TorchScript")."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from helpers import TINY_CSTM
from scripts.networks import CSTM, PropagationStep, stack_memory


def _inputs(b: int, t: int, size: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    masks = torch.nn.functional.one_hot(torch.randint(0, 4, (b, t, size, size)), 4).movedim(-1, 2).float()
    return torch.rand(b, 1, size, size), torch.rand(b, t, size, size), masks  # query, memory images, memory masks


@pytest.fixture(scope="module")
def step() -> PropagationStep:
    torch.manual_seed(0)
    return PropagationStep(CSTM(**TINY_CSTM)).eval()


def test_step_equals_the_inferer_calls(step: PropagationStep) -> None:
    """The same logits as encode_key / encode_value / segment, the calls of the 4D inferer."""
    query, images, masks = _inputs(2, 3)
    net = step.network
    with torch.no_grad():
        keys = [net.encode_key(images[:, i : i + 1]) for i in range(3)]
        values = [net.encode_value(images[:, i : i + 1], masks[:, i], k) for i, k in enumerate(keys)]
        expected = net.segment(net.encode_key(query), stack_memory(keys, values))
        torch.testing.assert_close(step(query, images, masks), expected)


def test_traced_step_matches_eager_at_its_shape(step: PropagationStep, tmp_path: Path) -> None:
    """The top-K selection stays input-dependent in the trace: new inputs of the traced shape give eager's logits."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the shape checks become constants of the trace
        traced = torch.jit.trace(step, _inputs(1, 2))
        traced.save(str(tmp_path / "step.ts"))
        loaded = torch.jit.load(str(tmp_path / "step.ts"))
        for _ in range(2):
            x = _inputs(1, 2)
            torch.testing.assert_close(loaded(*x), step(*x), atol=1e-4, rtol=1e-4)


def test_step_rejects_mismatched_memory(step: PropagationStep) -> None:
    query, images, masks = _inputs(1, 2)
    with pytest.raises(ValueError, match="memory_masks"):
        step(query, images, masks[:, :1])
