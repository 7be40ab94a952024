"""The Triton kernels and their launchers (torch tensors in, torch tensors out)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphc.kernels.triton.layout import BlockSparse


@triton.jit
def dense_kernel(a_ptr, w_ptr, c_ptr, sums_ptr, m, n, k, zero_point,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, k, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * k + ks[None, :], mask=(rows[:, None] < m) & (ks[None, :] < k), other=128)
        w = tl.load(w_ptr + ks[:, None] * n + cols[None, :], mask=(ks[:, None] < k) & (cols[None, :] < n), other=0)
        acc += tl.dot((a.to(tl.int32) - 128).to(tl.int8), w, out_dtype=tl.int32)
    sums = tl.load(sums_ptr + cols, mask=cols < n, other=0)
    acc += (128 - zero_point) * sums[None, :]
    tl.store(c_ptr + rows[:, None] * n + cols[None, :], acc, mask=(rows[:, None] < m) & (cols[None, :] < n))


@triton.jit
def block_sparse_kernel(a_ptr, tiles_ptr, tile_k_ptr, tile_ptr_ptr, c_ptr, sums_ptr, m, n, k, zero_point,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    inner = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    first = tl.load(tile_ptr_ptr + pid_n)
    last = tl.load(tile_ptr_ptr + pid_n + 1)
    for t in range(first, last):  # only this column of tiles' non-zero tiles
        ks = tl.load(tile_k_ptr + t) * BLOCK_K + inner
        a = tl.load(a_ptr + rows[:, None] * k + ks[None, :], mask=(rows[:, None] < m) & (ks[None, :] < k), other=128)
        w = tl.load(tiles_ptr + t * BLOCK_K * BLOCK_N + inner[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :])
        acc += tl.dot((a.to(tl.int32) - 128).to(tl.int8), w, out_dtype=tl.int32)
    sums = tl.load(sums_ptr + cols, mask=cols < n, other=0)
    acc += (128 - zero_point) * sums[None, :]
    tl.store(c_ptr + rows[:, None] * n + cols[None, :], acc, mask=(rows[:, None] < m) & (cols[None, :] < n))


def dense_int8_matmul(a: torch.Tensor, weight: torch.Tensor, zero_point: int, block_m: int = 32,
                      block_n: int = 32, block_k: int = 32, sums: torch.Tensor | None = None) -> torch.Tensor:
    """``(a - zero_point) @ weight`` in int32; a uint8 [M, K], weight int8 [K, N]; ``sums``, the
    weight's int32 column sums, where the caller keeps them (a constant weight's)."""
    m, k = a.shape
    n = weight.shape[1]
    out = torch.empty((m, n), dtype=torch.int32, device=a.device)
    if sums is None:
        sums = weight.to(torch.int32).sum(dim=0, dtype=torch.int32)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    dense_kernel[grid](a.contiguous(), weight.contiguous(), out, sums, m, n, k, int(zero_point),
                       BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def upload(packed: BlockSparse, device) -> list[torch.Tensor]:
    """The packed weight's arrays on ``device`` (tiles, tile_k, tile_ptr, column_sums), to keep."""
    return [torch.from_numpy(x).to(device) for x in (packed.tiles, packed.tile_k, packed.tile_ptr, packed.column_sums)]


def block_sparse_int8_matmul(a: torch.Tensor, packed: BlockSparse, zero_point: int, block_m: int = 32,
                             uploaded: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``(a - zero_point) @ W`` in int32 over W's non-zero tiles only; ``uploaded`` is
    ``upload(packed, a.device)`` where the caller keeps it (else copied to the device per call)."""
    m, k = a.shape
    device = a.device
    out = torch.empty((m, packed.n), dtype=torch.int32, device=device)
    tensors = uploaded if uploaded is not None else upload(packed, device)
    grid = (triton.cdiv(m, block_m), packed.tile_ptr.size - 1)
    block_sparse_kernel[grid](a.contiguous(), *tensors[:3], out, tensors[3], m, packed.n, k, int(zero_point),
                              BLOCK_M=block_m, BLOCK_N=packed.block_n, BLOCK_K=packed.block_k)
    return out
