"""Memory matching: PLMM against dense STCN matching and a naive per-patch reference (paper §3.1-3.2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scripts.networks.matching import PatchMemoryMatcher, dense_readout, plm_chunk_size, plm_readout


def naive_plm(
    query_key: torch.Tensor,
    memory_key: torch.Tensor,
    memory_value: torch.Tensor,
    patch_size: int,
    top_k: int,
    topk_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[list[set[int]]]]:
    """PLMM written out one query patch at a time (paper eq. 1-4).

    Memory patch index = t * N + n, n the row-major index in the patch grid. Ranking by the patch distance
    ||q_patch - k_patch||²; readout by a per-pixel softmax of (2 k·q - ||k||²) / sqrt(C_k) over the K*P*P pixels of the
    selected patches; overlaps averaged. ``topk_idx`` (B, N, K) forces the selected patches.
    Returns the readout (B, C_v, H, W) and, per batch item and query patch, the set of selected memory patches.
    """
    b, ck, h, w = query_key.shape
    cv, t = memory_value.shape[1], memory_key.shape[2]
    p, s = patch_size, patch_size // 2
    corners = [(i * s, j * s) for i in range((h - p) // s + 1) for j in range((w - p) // s + 1)]
    total = torch.zeros(b, cv, h, w, dtype=torch.float64)
    count = torch.zeros(h, w, dtype=torch.float64)
    chosen: list[list[set[int]]] = []
    for bi in range(b):
        chosen.append([])
        mem_keys = [
            memory_key[bi, :, ti, r : r + p, c : c + p].reshape(ck, p * p).double()
            for ti in range(t)
            for r, c in corners
        ]
        mem_values = [
            memory_value[bi, :, ti, r : r + p, c : c + p].reshape(cv, p * p).double()
            for ti in range(t)
            for r, c in corners
        ]
        for n, (r, c) in enumerate(corners):
            q = query_key[bi, :, r : r + p, c : c + p].reshape(ck, p * p).double()
            if topk_idx is None:
                distances = torch.stack([(q - k).pow(2).sum() for k in mem_keys])
                idx = distances.argsort()[:top_k].tolist()
            else:
                idx = topk_idx[bi, n].tolist()
            chosen[bi].append(set(idx))
            keys = torch.cat([mem_keys[i] for i in idx], 1)  # (C_k, K*P*P)
            values = torch.cat([mem_values[i] for i in idx], 1)  # (C_v, K*P*P)
            affinity = (2 * keys.T @ q - keys.pow(2).sum(0)[:, None]) / math.sqrt(ck)  # (K*P*P, P*P)
            read = values @ affinity.softmax(0)  # (C_v, P*P)
            total[bi, :, r : r + p, c : c + p] += read.reshape(cv, p, p)
            if bi == 0:
                count[r : r + p, c : c + p] += 1
    return (total / count).float(), chosen


def random_memory(b: int, ck: int, cv: int, t: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, ck, h, w, generator=g),
        torch.randn(b, ck, t, h, w, generator=g),
        torch.randn(b, cv, t, h, w, generator=g),
    )


@pytest.mark.parametrize("t", [1, 2, 3])
def test_plm_with_one_patch_and_all_memory_equals_dense(t: int) -> None:
    q, k, v = random_memory(2, 4, 3, t, 4, 4, seed=t)
    readout, idx = plm_readout(q, k, v, patch_size=4, top_k=t)
    assert idx.shape == (2, 1, t)
    torch.testing.assert_close(readout, dense_readout(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 100])
def test_plm_matches_naive_reference(chunk_size: int | None) -> None:
    q, k, v = random_memory(2, 3, 5, 2, 6, 6, seed=1)
    readout, idx = plm_readout(q, k, v, patch_size=4, top_k=2, chunk_size=chunk_size)
    expected, chosen = naive_plm(q, k, v, patch_size=4, top_k=2)
    assert idx.shape == (2, 4, 2)  # 2×2 patch grid, K = 2
    assert [[set(row.tolist()) for row in item] for item in idx] == chosen
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)


def test_plm_differs_from_dense_when_memory_is_restricted() -> None:
    """Sanity of the reference test: with K < T*N the readout is not the dense one."""
    q, k, v = random_memory(1, 3, 5, 2, 6, 6, seed=2)
    readout, _ = plm_readout(q, k, v, patch_size=4, top_k=1)
    assert not torch.allclose(readout, dense_readout(q, k, v), atol=1e-3)


@pytest.mark.parametrize("patch_size, top_k, size", [(2, 1, (4, 6)), (4, 3, (8, 8)), (6, 4, (9, 12))])
def test_fold_averaging_keeps_constant_values_constant(patch_size: int, top_k: int, size: tuple[int, int]) -> None:
    q, k, _ = random_memory(2, 4, 1, 2, *size, seed=3)
    constants = torch.tensor([[-1.5, 0.25, 3.0], [2.0, 0.0, -0.5]])  # (B, C_v)
    v = constants[:, :, None, None, None].expand(2, 3, 2, *size).clone()
    readout, _ = plm_readout(q, k * 5, v, patch_size=patch_size, top_k=top_k)
    torch.testing.assert_close(readout, constants[:, :, None, None].expand_as(readout), atol=1e-5, rtol=1e-5)


def _two_frame_case(seed: int = 4):
    """Stride-16 query keys equal memory frame 0, stride-8 query keys equal memory frame 1 (K = 1 picks them).

    Maps 4×4 (stride 16, P = 2, stride 1) and 8×8 (stride 8, 2P = 4, stride 2): both patch grids are 3×3.
    Values are 0 in frame 0 and 1 in frame 1, so the readout tells which frame was read.
    """
    g = torch.Generator().manual_seed(seed)
    q16, q8 = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    k16 = torch.stack([q16, torch.randn(1, 4, 4, 4, generator=g)], 2)
    k8 = torch.stack([torch.randn(1, 4, 8, 8, generator=g), q8], 2)
    v16 = torch.stack([torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)], 2)
    v8 = torch.stack([torch.zeros(1, 2, 8, 8), torch.ones(1, 2, 8, 8)], 2)
    return (q16, k16, v16), (q8, k8, v8)


def test_topk_indices_from_stride_16_decide_stride_8_readout() -> None:
    (q16, k16, v16), (q8, k8, v8) = _two_frame_case()
    _, idx16 = plm_readout(q16, k16, v16, patch_size=2, top_k=1)
    n = 9
    torch.testing.assert_close(idx16[0, :, 0], torch.arange(n))  # frame 0, same grid position
    fresh, idx8 = plm_readout(q8, k8, v8, patch_size=4, top_k=1)
    torch.testing.assert_close(idx8[0, :, 0], n + torch.arange(n))  # stride-8 keys alone pick frame 1
    reused, idx_back = plm_readout(q8, k8, v8, patch_size=4, top_k=1, topk_idx=idx16)
    assert torch.equal(idx_back, idx16)
    torch.testing.assert_close(fresh, torch.ones_like(fresh))
    torch.testing.assert_close(reused, torch.zeros_like(reused))


def test_reused_topk_indices_match_reference_on_random_values() -> None:
    (q16, k16, _), (q8, k8, _) = _two_frame_case(seed=5)
    v8 = torch.randn(1, 3, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    idx = torch.stack([torch.randperm(18, generator=g)[:2] for _ in range(9)])[None]  # (1, N=9, K=2)
    readout, _ = plm_readout(q8, k8, v8, patch_size=4, top_k=2, topk_idx=idx)
    expected, _ = naive_plm(q8, k8, v8, patch_size=4, top_k=2, topk_idx=idx)
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strides, expected", [((16, 8), 0.0), ((8,), 1.0)])
def test_matcher_reuses_stride_16_indices_at_stride_8(strides: tuple[int, ...], expected: float) -> None:
    (q16, k16, v16), (q8, k8, v8) = _two_frame_case()
    matcher = PatchMemoryMatcher("plm", patch_size=2, top_k=1, strides=strides)
    readouts = matcher({16: q16, 8: q8}, {16: k16, 8: k8}, {16: v16, 8: v8})
    torch.testing.assert_close(readouts[8], torch.full_like(readouts[8], expected))


def test_odd_patch_size_is_rejected() -> None:
    q, k, v = random_memory(1, 2, 2, 1, 6, 6)
    with pytest.raises(ValueError, match=r"even.*got 3"):
        plm_readout(q, k, v, patch_size=3, top_k=1)


def test_top_k_above_memory_patches_is_rejected() -> None:
    q, k, v = random_memory(1, 2, 2, 2, 6, 6)  # P = 4: 2×2 grid, T*N = 8 memory patches
    with pytest.raises(ValueError, match=r"\[1, 8\].*got 9"):
        plm_readout(q, k, v, patch_size=4, top_k=9)


@pytest.mark.parametrize("size", [(5, 6), (6, 2)])
def test_untileable_map_is_rejected(size: tuple[int, int]) -> None:
    q, k, v = random_memory(1, 2, 2, 1, *size)
    with pytest.raises(ValueError, match=rf"\({size[0]}, {size[1]}\).*4×4.*stride 2"):
        plm_readout(q, k, v, patch_size=4, top_k=1)


def test_topk_indices_of_another_grid_are_rejected() -> None:
    q, k, v = random_memory(1, 2, 2, 1, 6, 6)  # N = 4, T*N = 4
    with pytest.raises(ValueError, match="topk_idx"):
        plm_readout(q, k, v, patch_size=4, top_k=1, topk_idx=torch.zeros(1, 9, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="topk_idx"):
        plm_readout(q, k, v, patch_size=4, top_k=1, topk_idx=torch.full((1, 4, 1), 4, dtype=torch.long))
    with pytest.raises(ValueError, match="topk_idx"):
        plm_readout(q, k, v, patch_size=4, top_k=1, topk_idx=torch.full((1, 4, 1), -1, dtype=torch.long))


def test_chunk_size_below_one_is_rejected() -> None:
    q, k, v = random_memory(1, 2, 2, 1, 6, 6)
    with pytest.raises(ValueError, match="chunk_size must be >= 1 or None, got 0"):
        plm_readout(q, k, v, patch_size=4, top_k=1, chunk_size=0)


def test_default_chunk_size_follows_the_byte_budget() -> None:
    # full variant at stride 8 (2P = 12, C_v = 256) and stride 16 (P = 6, C_v = 512): 1.48 MB and 0.43 MB per patch
    assert plm_chunk_size(12, 4, 32, 256) == 5
    assert plm_chunk_size(6, 4, 32, 512) == 19
    assert plm_chunk_size(6, 4, 32, 512, batch_size=4) == 4  # the budget holds for the whole batch
    assert plm_chunk_size(6, 4, 32, 512, element_size=2) == 39  # fp16 temporaries
    assert plm_chunk_size(12, 4, 32, 256, batch_size=64) == 1  # never 0


def test_plm_gradients_match_naive_reference() -> None:
    q, k, v = random_memory(2, 3, 5, 2, 6, 6, seed=11)
    weight = torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(12))
    grads = []
    for fn in (
        lambda *x: plm_readout(*x, patch_size=4, top_k=2, chunk_size=3)[0],
        lambda *x: naive_plm(*x, patch_size=4, top_k=2)[0],
    ):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        (fn(*inputs) * weight).sum().backward()
        grads.append([x.grad for x in inputs])
    for got, expected in zip(*grads, strict=True):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["plm", "dense"])
@pytest.mark.parametrize("strides", [(16,), (8,), (16, 8), (8, 16)])
def test_matcher_reads_exactly_the_configured_strides(mode: str, strides: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(8)
    shapes = {16: (6, 6), 8: (12, 12)}  # a 96×96 input, P = 6
    channels = {16: 5, 8: 3}
    queries = {s: torch.randn(2, 4, *shapes[s], generator=g) for s in (16, 8)}
    keys = {s: torch.randn(2, 4, 2, *shapes[s], generator=g) for s in (16, 8)}
    values = {s: torch.randn(2, channels[s], 2, *shapes[s], generator=g) for s in (16, 8)}
    readouts = PatchMemoryMatcher(mode, patch_size=6, top_k=4, strides=strides)(queries, keys, values)
    assert sorted(readouts) == sorted(strides)
    for s, r in readouts.items():
        assert r.shape == (2, channels[s], *shapes[s])
        assert torch.isfinite(r).all()


def test_matcher_size_multiple() -> None:
    assert PatchMemoryMatcher("plm", patch_size=6).size_multiple == 48
    assert PatchMemoryMatcher("plm", patch_size=4).size_multiple == 32
    assert PatchMemoryMatcher("dense").size_multiple == 16
    assert PatchMemoryMatcher("plm", patch_size=6).min_size == 96


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "sparse"}, {"strides": (4,)}, {"strides": ()}, {"strides": (16, 16)}, {"patch_size": 5}, {"top_k": 0}],
)
def test_matcher_rejects_bad_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PatchMemoryMatcher(**kwargs)


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces (views of other tensors excepted)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_plm_never_builds_the_dense_affinity() -> None:
    b, t, h, w = 1, 3, 48, 48
    q, k, v = random_memory(b, 8, 32, t, h, w, seed=9)
    dense_affinity = b * t * (h * w) ** 2
    with _LargestOutput() as probe:
        dense_readout(q, k, v)
    assert probe.largest >= dense_affinity  # the probe does see the dense (T*H*W, H*W) affinity
    with _LargestOutput() as probe:
        plm_readout(q, k, v, patch_size=6, top_k=4)
    assert probe.largest < dense_affinity / 10


def test_plm_gathers_selected_pixels_without_unfolding_the_memory_values() -> None:
    q, k, v = random_memory(1, 8, 32, 3, 48, 48, seed=10)
    with _LargestOutput() as probe:
        plm_readout(q, k, v, patch_size=6, top_k=4, chunk_size=8)
    # overlapping 6×6 patches at stride 3 would hold 4× the memory values; a chunk holds 8*K*P*P*C_v elements
    assert probe.largest < v.numel()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_plm_readout_under_autocast_matches_fp32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 8, 12, 12, generator=gen),
        torch.randn(1, 8, 2, 12, 12, generator=gen),
        torch.randn(1, 16, 2, 12, 12, generator=gen),
    )
    reference, _ = plm_readout(q, k, v, 4, 3)
    with torch.autocast("cpu", dtype=dtype):
        low, _ = plm_readout(q, k, v, 4, 3)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("mode", ["plm", "dense"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matcher_under_autocast_matches_fp32(mode: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(13)
    shapes = {16: (6, 6), 8: (12, 12)}
    queries = {s: torch.randn(1, 8, *shapes[s], generator=g) for s in (16, 8)}
    keys = {s: torch.randn(1, 8, 2, *shapes[s], generator=g) for s in (16, 8)}
    values = {s: torch.randn(1, 4, 2, *shapes[s], generator=g) for s in (16, 8)}
    matcher = PatchMemoryMatcher(mode, patch_size=4, top_k=3)
    reference = matcher(queries, keys, values)
    with torch.autocast("cpu", dtype=dtype):
        low = matcher(queries, keys, values)
    for s in (16, 8):
        assert low[s].shape == reference[s].shape and torch.isfinite(low[s]).all()
        torch.testing.assert_close(low[s].float(), reference[s], atol=0.1, rtol=0.1)
