"""Block-sparse weights for the Triton kernel: ``W [K, N]`` cut into ``block_k x block_n``
tiles (zero-padded at the edges); per column of tiles, the row indices of its non-zero tiles
(``tile_ptr[j] .. tile_ptr[j + 1] - 1`` into ``tile_k``) and their values, one dense
``block_k x block_n`` int8 tile each (``tiles``). numpy only: no library packs this form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockSparse:
    k: int
    n: int
    block_k: int
    block_n: int
    tile_ptr: np.ndarray  # int32 [ceil(n / block_n) + 1]
    tile_k: np.ndarray  # int32 [tiles]
    tiles: np.ndarray  # int8 [tiles, block_k, block_n]
    column_sums: np.ndarray  # int32 [n]


def pack_blocks(weight: np.ndarray, block_k: int = 32, block_n: int = 32) -> BlockSparse:
    if weight.ndim != 2 or weight.dtype != np.int8:
        raise ValueError(f"pack_blocks needs a 2-D int8 K x N matrix, got {weight.dtype} {weight.shape}")
    k, n = weight.shape
    rows, cols = -(-k // block_k), -(-n // block_n)
    padded = np.zeros((rows * block_k, cols * block_n), np.int8)
    padded[:k, :n] = weight
    grid = padded.reshape(rows, block_k, cols, block_n).transpose(2, 0, 1, 3)  # [col, row, bk, bn]
    kept = grid.any(axis=(2, 3))
    col, row = np.nonzero(kept)
    tile_ptr = np.zeros(cols + 1, np.int32)
    np.cumsum(kept.sum(axis=1), out=tile_ptr[1:])
    return BlockSparse(k, n, block_k, block_n, tile_ptr, row.astype(np.int32),
                       np.ascontiguousarray(grid[col, row]), weight.astype(np.int64).sum(axis=0).astype(np.int32))
