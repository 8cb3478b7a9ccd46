"""Bootstrapped cross-entropy (STCN schedule) and the 3-frame training propagation (paper §3.4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_CSTM
from scripts.engines import BootstrappedCE, propagate_triplet
from scripts.networks.cstm import CSTM, stack_memory


def per_pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per pixel, flattened (B*H*W,), written out without F.cross_entropy."""
    log_p = logits - logits.exp().sum(1, keepdim=True).log()
    return -log_p.gather(1, target[:, None].long()).flatten()


@pytest.mark.parametrize(
    "iteration, expected", [(0, 1.0), (9, 1.0), (10, 1.0), (15, 0.8), (20, 0.6), (30, 0.2), (10_000, 0.2)]
)
def test_fraction_schedule(iteration: int, expected: float) -> None:
    loss = BootstrappedCE(start_warm=10, end_warm=30, top_p=0.2)
    assert loss.fraction(iteration) == pytest.approx(expected)


def test_fraction_is_monotone_and_linear_between_the_warm_marks() -> None:
    loss = BootstrappedCE(start_warm=100, end_warm=500, top_p=0.15)
    values = [loss.fraction(i) for i in range(0, 700, 50)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    steps = [loss.fraction(i) - loss.fraction(i + 1) for i in range(100, 500)]
    assert steps == pytest.approx([0.85 / 400] * 400)


def test_before_start_warm_it_is_plain_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 6, generator=g), torch.randint(0, 4, (2, 5, 6), generator=g)
    loss = BootstrappedCE(start_warm=10, end_warm=20, top_p=0.15)
    torch.testing.assert_close(loss(logits, target, 3), F.cross_entropy(logits, target))
    torch.testing.assert_close(loss(logits, target, 3), per_pixel_ce(logits, target).mean())


def test_hand_computed_hardest_pixels() -> None:
    """Two classes, target 0 everywhere, logits (0, x): CE = log(1 + e^x), increasing in x."""
    x = torch.tensor([[-2.0, -1.0, 0.0, 0.5], [1.0, 2.0, 3.0, 4.0]])  # (H=2, W=4): 8 pixels
    logits = torch.stack([torch.zeros_like(x), x])[None]  # (1, 2, 2, 4)
    target = torch.zeros(1, 2, 4, dtype=torch.long)
    ce = torch.log1p(torch.exp(x)).flatten()
    loss = BootstrappedCE(start_warm=0, end_warm=10, top_p=0.25)
    torch.testing.assert_close(loss(logits, target, 10), ce[[6, 7]].mean())  # 2 of 8 hardest: x = 3, 4
    torch.testing.assert_close(loss(logits, target, 100), ce[[6, 7]].mean())
    torch.testing.assert_close(loss(logits, target, 5), ce[[3, 4, 5, 6, 7]].mean())  # p = 0.625: 5 of 8
    tiny = BootstrappedCE(start_warm=0, end_warm=0, top_p=0.1)
    torch.testing.assert_close(tiny(logits, target, 1), ce[7])  # int(0.8) = 0: at least one pixel is kept


def test_after_end_warm_it_is_the_mean_of_the_top_fraction() -> None:
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 4, 5, 8, generator=g), torch.randint(0, 4, (2, 5, 8), generator=g)
    loss = BootstrappedCE(start_warm=10, end_warm=20, top_p=0.15)
    ce = per_pixel_ce(logits, target).sort(descending=True).values  # 80 pixels -> 12 kept
    torch.testing.assert_close(loss(logits, target, 25), ce[:12].mean())
    assert loss(logits, target, 25) > loss(logits, target, 0)


@pytest.mark.parametrize("iteration", [0, 50])
def test_ignored_pixels_do_not_contribute(iteration: int) -> None:
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(1, 4, 4, 5, generator=g), torch.randint(0, 4, (1, 4, 5), generator=g)
    target[0, :2, :] = 255  # 10 of 20 pixels without ground truth
    loss = BootstrappedCE(start_warm=10, end_warm=20, top_p=0.3)
    changed = logits.clone()
    changed[:, :, :2, :] = 100 * torch.randn(1, 4, 2, 5, generator=g)
    torch.testing.assert_close(loss(logits, target, iteration), loss(changed, target, iteration))
    labelled = per_pixel_ce(logits[:, :, 2:], target[:, 2:]).sort(descending=True).values
    expected = labelled.mean() if iteration < 10 else labelled[:3].mean()  # the fraction counts labelled pixels only
    torch.testing.assert_close(loss(logits, target, iteration), expected)


def test_custom_ignore_index() -> None:
    logits = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([[[0, 1], [2, 3]]])
    loss = BootstrappedCE(start_warm=5, end_warm=5, ignore_index=3)
    torch.testing.assert_close(loss(logits, target, 0), per_pixel_ce(logits, target.clamp(max=2))[:3].mean())


def test_all_ignored_gives_zero_with_a_gradient_path() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), 255)
    value = BootstrappedCE(start_warm=0, end_warm=0)(logits, target, 5)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradients_flow_only_through_kept_pixels() -> None:
    x = torch.tensor([[-2.0, -1.0, 0.0, 0.5], [1.0, 2.0, 3.0, 4.0]])
    logits = torch.stack([torch.zeros_like(x), x])[None].requires_grad_()
    BootstrappedCE(start_warm=0, end_warm=1, top_p=0.25)(logits, torch.zeros(1, 2, 4, dtype=torch.long), 2).backward()
    touched = logits.grad.abs().sum(1)[0] > 0
    assert touched.flatten().tolist() == [False] * 6 + [True] * 2


@pytest.mark.parametrize("kwargs", [{"top_p": 0.0}, {"top_p": -0.1}, {"top_p": 1.5}, {"start_warm": 10, "end_warm": 5}])
def test_invalid_arguments_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="top_p"):
        BootstrappedCE(**kwargs)


def test_top_p_one_is_plain_cross_entropy_forever() -> None:
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(1, 4, 3, 3, generator=g), torch.randint(0, 4, (1, 3, 3), generator=g)
    torch.testing.assert_close(BootstrappedCE(0, 10, top_p=1.0)(logits, target, 10**6), F.cross_entropy(logits, target))


@pytest.fixture(scope="module")
def net() -> CSTM:
    torch.manual_seed(0)
    return CSTM(**TINY_CSTM).eval()


def test_propagate_triplet_reads_frame_1_then_frames_1_and_2(net: CSTM) -> None:
    g = torch.Generator().manual_seed(5)
    frames = torch.rand(2, 3, 1, 96, 96, generator=g)
    first = torch.randint(0, 4, (2, 96, 96), generator=g)
    with torch.no_grad():
        logits2, logits3 = propagate_triplet(net, frames, first)
        keys = [net.encode_key(frames[:, i]) for i in range(3)]
        value1 = net.encode_value(frames[:, 0], F.one_hot(first, 4).permute(0, 3, 1, 2).float(), keys[0])
        expected2 = net.segment(keys[1], stack_memory([keys[0]], [value1]))
        value2 = net.encode_value(frames[:, 1], expected2.softmax(1), keys[1])
        expected3 = net.segment(keys[2], stack_memory(keys[:2], [value1, value2]))
    assert logits2.shape == logits3.shape == (2, 4, 96, 96)
    torch.testing.assert_close(logits2, expected2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits3, expected3, atol=1e-4, rtol=1e-4)


def test_propagate_triplet_depends_on_the_first_mask(net: CSTM) -> None:
    g = torch.Generator().manual_seed(6)
    frames = torch.rand(1, 3, 1, 96, 96, generator=g)
    with torch.no_grad():
        a = propagate_triplet(net, frames, torch.zeros(1, 96, 96, dtype=torch.long))
        b = propagate_triplet(net, frames, torch.full((1, 96, 96), 3))
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_fraction_reaches_top_p_at_end_warm_even_without_decay() -> None:
    loss = BootstrappedCE(start_warm=100, end_warm=100, top_p=0.15)
    assert loss.fraction(99) == 1.0 and loss.fraction(100) == 0.15
