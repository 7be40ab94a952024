"""graphc's INT8 GEMM as Triton kernels (GPU), the same contract as ``SparseMatMulInteger``:
``C = (A - a_zero_point) x W``, A uint8 ``[M, K]``, W int8 ``[K, N]``, C int32.

- ``dense.int8_matmul``: the dense reference kernel.
- ``block_sparse.int8_matmul``: W in ``BlockSparse`` form (``layout.pack_blocks``): only the
  ``BLOCK_K x BLOCK_N`` tiles that hold a non-zero are stored and multiplied.

Both compute ``dot(A - 128, W)`` on signed bytes (tensor-core int8 MMA takes s8 x s8) and add
``(128 - a_zero_point) * colsum(W)`` back, which is exact in int32. Tested on the CPU under
``TRITON_INTERPRET=1``; ``aot`` compiles them for sm_80 / sm_90 without a GPU and returns the
PTX. 2:4 sparsity does not map here: Triton has no sparse-tensor-core dot.
"""
