"""The weight form graphc's sparse INT8 kernels read: 1x4 blocks in compressed columns.

Rules (the C++ side, ``kernels/cpu/src/sparse_gemm.h``, reads exactly this):

1. ``W`` is ``K x N`` int8 with K the reduction axis (a MatMul's ``B``; a ``Gemm`` with
   ``transB=1`` is transposed first). K is cut into ``ceil(K / 4)`` groups of 4 consecutive
   reduction indices, the last one padded with zeros.
2. For output column ``n``, the groups that hold a non-zero weight are ``col_ptr[n] ..
   col_ptr[n + 1] - 1``, in increasing group order: ``block_k[b]`` is the group and
   ``values[4 b : 4 b + 4]`` its 4 weights (zeros inside a kept group are stored).
3. An all-zero column has no groups; an all-zero matrix has ``block_k`` and ``values`` empty.

A 1x4 block pattern along K (``sparsify:pattern=block:block=1x4``) stores only non-zeros;
unstructured sparsity stores every group with at least one non-zero (at 80% random sparsity
about 59% of the groups: 1 - 0.8^4). numpy only: no library packs this form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockColumns:
    k: int
    n: int
    col_ptr: np.ndarray  # int32 [n + 1]
    block_k: np.ndarray  # int32 [blocks]
    values: np.ndarray  # int8 [4 * blocks]

    @property
    def blocks(self) -> int:
        return int(self.block_k.size)

    def dense(self) -> np.ndarray:
        """The ``K x N`` int8 matrix back (rule 1's padding dropped)."""
        groups = -(-self.k // 4)
        out = np.zeros((self.n, groups, 4), np.int8)
        column = np.repeat(np.arange(self.n), np.diff(self.col_ptr))
        out[column, self.block_k] = self.values.reshape(-1, 4)
        return out.reshape(self.n, groups * 4)[:, : self.k].T.copy()


def pack(weight: np.ndarray) -> BlockColumns:
    """Rules 1-3 for a ``K x N`` int8 matrix."""
    if weight.ndim != 2 or weight.dtype != np.int8:
        raise ValueError(f"pack needs a 2-D int8 K x N matrix, got {weight.dtype} {weight.shape}")
    k, n = weight.shape
    groups = -(-k // 4)
    padded = np.zeros((groups * 4, n), np.int8)
    padded[:k] = weight
    by_column = padded.T.reshape(n, groups, 4)  # [n, group, 4]
    kept = by_column.any(axis=2)
    column, group = np.nonzero(kept)  # row-major: columns in order, groups increasing within one
    col_ptr = np.zeros(n + 1, np.int32)
    np.cumsum(kept.sum(axis=1), out=col_ptr[1:])
    return BlockColumns(k, n, col_ptr, group.astype(np.int32), by_column[column, group].reshape(-1).copy())
