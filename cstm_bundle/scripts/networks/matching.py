"""Memory matching and readout: dense (STCN) and patch-level (PLMM, paper §3.1-3.2). Pure functions + one module.

Affinities follow STCN: the negative squared l2 distance -||k - q||², computed as 2 kᵀq - ||k||² (the ||q||² term is
constant per query pixel and cancels in the softmax), scaled by 1/sqrt(C_k). Patch-level affinities (used only to rank
memory patches, so their scale does not matter) are the same expression on flattened (C_k·P·P) patch vectors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_memory(query_key: Tensor, memory_key: Tensor, memory_value: Tensor) -> None:
    if query_key.ndim != 4 or memory_key.ndim != 5 or memory_value.ndim != 5:
        raise ValueError(
            f"expected query_key (B, C_k, H, W), memory_key (B, C_k, T, H, W), memory_value (B, C_v, T, H, W); got "
            f"{tuple(query_key.shape)}, {tuple(memory_key.shape)}, {tuple(memory_value.shape)}."
        )
    b, ck, h, w = query_key.shape
    if memory_key.shape[:2] != (b, ck) or memory_key.shape[3:] != (h, w):
        raise ValueError(f"memory_key {tuple(memory_key.shape)} does not match query_key {tuple(query_key.shape)}.")
    if memory_value.shape[0] != b or memory_value.shape[2:] != memory_key.shape[2:]:
        raise ValueError(
            f"memory_value {tuple(memory_value.shape)} does not match memory_key {tuple(memory_key.shape)}."
        )


def dense_readout(query_key: Tensor, memory_key: Tensor, memory_value: Tensor) -> Tensor:
    """Dense STCN readout: every query pixel attends to every memory pixel.

    Args:
        query_key: (B, C_k, H, W).
        memory_key: (B, C_k, T, H, W).
        memory_value: (B, C_v, T, H, W).
    Returns:
        readout (B, C_v, H, W).
    """
    _check_memory(query_key, memory_key, memory_value)
    b, ck, h, w = query_key.shape
    mk = memory_key.flatten(2)  # (B, C_k, T*H*W)
    q = query_key.flatten(2)  # (B, C_k, H*W)
    affinity = (2 * mk.transpose(1, 2) @ q - mk.pow(2).sum(1).unsqueeze(2)) / math.sqrt(ck)  # (B, T*H*W, H*W)
    weights = affinity.softmax(dim=1)
    readout = memory_value.flatten(2) @ weights  # (B, C_v, H*W)
    return readout.unflatten(2, (h, w))  # (B, C_v, H, W)


def unfold_patches(x: Tensor, patch_size: int) -> Tensor:
    """Overlapping P×P patches with stride P//2.

    Args:
        x: (B, C, H, W) with H, W multiples of P//2 and >= P.
    Returns:
        (B, N, P*P*C), flattened patches in row-major order of the patch grid.
    """
    return F.unfold(x, patch_size, stride=patch_size // 2).transpose(1, 2)  # (B, N, C*P*P)


def patch_grid_size(size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Number of P×P patches (stride P//2) along each axis of a (H, W) map; raises if the map is not tiled exactly."""
    stride = patch_size // 2
    if patch_size < 2 or patch_size % 2:
        raise ValueError(f"patch_size must be even and >= 2, got {patch_size}.")
    if any(s < patch_size or s % stride for s in size):
        raise ValueError(
            f"a feature map of size {tuple(size)} cannot be tiled by {patch_size}×{patch_size} patches with stride "
            f"{stride}; expected sides that are multiples of {stride} and >= {patch_size} (pad the input)."
        )
    return (size[0] - patch_size) // stride + 1, (size[1] - patch_size) // stride + 1


def patch_pixels(size: tuple[int, int], patch_size: int, device: torch.device | None = None) -> Tensor:
    """Flat pixel index (row * W + column) of every pixel of every patch, in the order of :func:`unfold_patches`.

    Returns:
        (N, P*P) int64.
    """
    grid = patch_grid_size(size, patch_size)
    stride = patch_size // 2
    corner = (
        torch.arange(grid[0], device=device)[:, None] * stride * size[1]
        + torch.arange(grid[1], device=device)[None] * stride
    ).flatten()  # (N,)
    offset = (
        torch.arange(patch_size, device=device)[:, None] * size[1] + torch.arange(patch_size, device=device)[None]
    ).flatten()  # (P*P,)
    return corner[:, None] + offset[None]  # (N, P*P)


def topk_memory_patches(query_key: Tensor, memory_key: Tensor, patch_size: int, top_k: int) -> Tensor:
    """Indices of the top-K memory patches per query patch by patch-level l2 affinity (paper eq. 1).

    Args:
        query_key: (B, C_k, H, W).
        memory_key: (B, C_k, T, H, W).
    Returns:
        topk_idx (B, N, K) into the T*N memory patches (memory patch t*N + n is patch n of frame t).
    """
    b, t = memory_key.shape[0], memory_key.shape[2]
    q = unfold_patches(query_key, patch_size)  # (B, N, C_k*P*P)
    k = unfold_patches(memory_key.movedim(2, 1).flatten(0, 1), patch_size)  # (B*T, N, C_k*P*P)
    k = k.unflatten(0, (b, t)).flatten(1, 2)  # (B, T*N, C_k*P*P)
    if not 1 <= top_k <= k.shape[1]:
        raise ValueError(f"top_k must be in [1, {k.shape[1]}] (memory patches T*N), got {top_k}.")
    affinity = 2 * q @ k.transpose(1, 2) - k.pow(2).sum(2).unsqueeze(1)  # (B, N, T*N)
    return affinity.topk(top_k, dim=2).indices  # (B, N, K)


def plm_chunk_size(
    patch_size: int,
    top_k: int,
    key_channels: int,
    value_channels: int,
    batch_size: int = 1,
    element_size: int = 4,
    chunk_bytes: int = 8 * 2**20,
) -> int:
    """Query patches that :func:`plm_readout` reads at once so that one chunk's temporaries fit in ``chunk_bytes``.

    Per query patch and batch item a chunk holds the gathered keys (C_k + 1, K*P*P) and values (C_v, K*P*P), the
    affinity and its softmax (P*P, K*P*P) each, and the readout (P*P, C_v). The bound grows with neither the image nor
    T, which keeps PLMM's peak memory far below dense matching's (paper §3.1); at 384×384 with the full variant's
    widths it is 5 query patches at stride 8 and 19 at stride 16.

    Args:
        patch_size: P; top_k: K; key_channels: C_k; value_channels: C_v; batch_size: B.
        element_size: bytes per element of the temporaries.
        chunk_bytes: the budget for one chunk's temporaries, all batch items together.
    Returns:
        the chunk size in query patches, at least 1.
    """
    pp, kpp = patch_size**2, top_k * patch_size**2
    per_patch = ((key_channels + 1 + value_channels) * kpp + 2 * pp * kpp + pp * value_channels) * element_size
    return max(1, chunk_bytes // (per_patch * batch_size))


def plm_readout(
    query_key: Tensor,
    memory_key: Tensor,
    memory_value: Tensor,
    patch_size: int = 6,
    top_k: int = 4,
    topk_idx: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Patch-level memory matching (PLMM, paper §3.1) at one stride.

    Overlapping P×P patches with stride P//2. Each query patch keeps its top-K memory patches out of all T*N by
    patch-level affinity; each query pixel softmaxes over the K*P*P pixels of those patches (eq. 2), reads out their
    values (eq. 3), and overlapping patch readouts are averaged (eq. 4). Nothing of size (T*H*W, H*W) is built, and the
    memory is never unfolded into patches: the pixels of the selected patches are gathered by index from the memory's
    own (B, C, T*H*W) layout, a chunk of query patches at a time, and the readouts are summed back in place. The pixel
    affinity (2 kᵀq - ||k||²) / sqrt(C_k) is one product of [2q, -1] / sqrt(C_k) with the keys extended by ||k||².

    Args:
        query_key: (B, C_k, H, W), H and W multiples of P//2 and >= P.
        memory_key: (B, C_k, T, H, W), the keys of the T memory frames.
        memory_value: (B, C_v, T, H, W), the values of the same frames.
        patch_size: P, even and >= 2 (paper: 6 at stride 16, 12 at stride 8).
        top_k: K, memory patches kept per query patch, 1 <= K <= T*N (paper: 4).
        topk_idx: (B, N, K) from the stride-16 call, reused at stride 8 (same patch grid, paper §3.2); None computes it.
        chunk_size: query patches read at once (bounds the (B, chunk, K*P*P, C_v) gathered values and the
            (B, chunk, P*P, K*P*P) affinity); None takes :func:`plm_chunk_size` (8 MiB of temporaries).
    Returns:
        readout (B, C_v, H, W) and topk_idx (B, N, K).
    Raises:
        ValueError: shapes disagree, the map cannot be tiled by the patches, K is out of range or chunk_size < 1.
    """
    _check_memory(query_key, memory_key, memory_value)
    b, ck, h, w = query_key.shape
    cv, t = memory_value.shape[1], memory_key.shape[2]
    pixels = patch_pixels((h, w), patch_size, query_key.device)  # (N, P*P)
    n, pp = pixels.shape
    if topk_idx is None:
        topk_idx = topk_memory_patches(query_key, memory_key, patch_size, top_k)
    elif (
        topk_idx.ndim != 3
        or topk_idx.shape[:2] != (b, n)
        or not 0 <= min(low_high := torch.stack(torch.aminmax(topk_idx)).tolist()) <= max(low_high) < t * n
    ):
        raise ValueError(f"topk_idx {tuple(topk_idx.shape)} does not fit {n} query and {t * n} memory patches.")
    kpp = topk_idx.shape[2] * pp
    if chunk_size is None:
        chunk_size = plm_chunk_size(patch_size, topk_idx.shape[2], ck, cv, b, query_key.element_size())
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}.")
    q = query_key.flatten(2)  # (B, C_k, H*W)
    q = torch.cat([2 * q, -torch.ones_like(q[:, :1])], 1) / math.sqrt(ck)  # (B, C_k+1, H*W)
    query_patches = q.transpose(1, 2)[:, pixels]  # (B, N, P*P, C_k+1)
    mk = memory_key.flatten(2)  # (B, C_k, T*H*W)
    mk = torch.cat([mk, mk.pow(2).sum(1, keepdim=True)], 1)  # (B, C_k+1, T*H*W)
    mv = memory_value.flatten(2)  # (B, C_v, T*H*W), a view
    # flat memory pixel of every selected patch: frame t = idx // N, patch idx % N
    memory_pixels = (topk_idx // n * (h * w)).unsqueeze(3) + pixels[topk_idx % n]  # (B, N, K, P*P)
    out = q.new_zeros(b, h * w, cv)  # (B, H*W, C_v)
    for i in range(0, n, chunk_size):
        chunk = min(chunk_size, n - i)
        selected = memory_pixels[:, i : i + chunk].flatten(1)  # (B, chunk*K*P*P)
        k_sel = mk.gather(2, selected[:, None].expand(-1, ck + 1, -1))  # (B, C_k+1, chunk*K*P*P)
        v_sel = mv.gather(2, selected[:, None].expand(-1, cv, -1))  # (B, C_v, chunk*K*P*P)
        k_sel = k_sel.unflatten(2, (chunk, kpp)).movedim(1, 2)  # (B, chunk, C_k+1, K*P*P)
        v_sel = v_sel.unflatten(2, (chunk, kpp)).permute(0, 2, 3, 1)  # (B, chunk, K*P*P, C_v)
        weights = (query_patches[:, i : i + chunk] @ k_sel).softmax(dim=3)  # (B, chunk, P*P, K*P*P)
        readout = weights @ v_sel  # (B, chunk, P*P, C_v)
        out.index_add_(1, pixels[i : i + chunk].flatten(), readout.flatten(1, 2).to(out.dtype))
    count = torch.bincount(pixels.flatten(), minlength=h * w).to(out.dtype)  # (H*W,) patches covering each pixel
    return (out / count[:, None]).transpose(1, 2).unflatten(2, (h, w)), topk_idx  # (B, C_v, H, W)


class PatchMemoryMatcher(nn.Module):
    """Multi-scale memory readout (paper §3.2): PLMM (or dense, the STCN baseline) at strides 16 and/or 8.

    In ``plm`` mode the top-K patch indices are computed at the coarsest matched stride and reused at stride 8, where the
    patch side is doubled (P at stride 16, 2P at stride 8) so that both patch grids coincide. When the memory holds
    fewer than K patches (small inputs, one memory frame) every memory patch is read: K = min(K, T*N).

    Args:
        mode: "plm" (paper) or "dense" (STCN baseline, every pixel against every memory pixel).
        patch_size: P at stride 16 (paper: 6, Table 6).
        top_k: K (paper: 4, Table 5).
        strides: feature strides at which memory is read (paper: (16, 8), Table 4).
    """

    def __init__(
        self,
        mode: Literal["plm", "dense"] = "plm",
        patch_size: int = 6,
        top_k: int = 4,
        strides: tuple[int, ...] = (16, 8),
    ):
        super().__init__()
        if mode not in ("plm", "dense"):
            raise ValueError(f"matching mode must be 'plm' or 'dense', got {mode!r}.")
        if not strides or any(s not in (16, 8) for s in strides) or len(set(strides)) != len(strides):
            raise ValueError(f"matching strides must be a non-empty subset of (16, 8), got {strides}.")
        if patch_size < 2 or patch_size % 2:
            raise ValueError(f"patch_size must be even and >= 2, got {patch_size}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        self.mode, self.patch_size, self.top_k = mode, patch_size, top_k
        self.strides = tuple(sorted(strides, reverse=True))

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (48 for P = 6: the stride-16 grid must tile by P//2)."""
        return 16 * self.patch_size // 2 if self.mode == "plm" else 16

    @property
    def min_size(self) -> int:
        """Smallest input side: the stride-16 map must hold one P×P patch in ``plm`` mode."""
        return 16 * self.patch_size if self.mode == "plm" else 16

    def forward(
        self, query_keys: dict[int, Tensor], memory_keys: dict[int, Tensor], memory_values: dict[int, Tensor]
    ) -> dict[int, Tensor]:
        """Read memory at every configured stride.

        Args:
            query_keys: stride -> (B, C_k, H_s, W_s).
            memory_keys: stride -> (B, C_k, T, H_s, W_s).
            memory_values: stride -> (B, C_v(s), T, H_s, W_s).
        Returns:
            stride -> readout (B, C_v(s), H_s, W_s), for the configured strides.
        """
        readouts: dict[int, Tensor] = {}
        topk_idx = None
        for stride in self.strides:
            q, k, v = query_keys[stride], memory_keys[stride], memory_values[stride]
            if self.mode == "dense":
                readouts[stride] = dense_readout(q, k, v)
            else:
                patch = self.patch_size * 16 // stride
                top_k = min(self.top_k, k.shape[2] * math.prod(patch_grid_size(q.shape[-2:], patch)))
                readouts[stride], topk_idx = plm_readout(q, k, v, patch, top_k, topk_idx)
        return readouts
