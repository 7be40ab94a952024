"""Ahead-of-time compilation of the Triton kernels for a named GPU architecture, with no GPU
(Triton lowers to PTX for a given ``GPUTarget``): the check that the int8 dots become tensor-core
int8 MMA instructions (``mma.sync ... s8.s8`` on sm_80, ``wgmma ... s8.s8`` on sm_90).

Run it in a process without ``TRITON_INTERPRET`` (the interpreter replaces the kernels)."""

from __future__ import annotations

import re

COMMON = {"m": "i32", "n": "i32", "k": "i32", "zero_point": "i32",
          "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
SIGNATURES = {
    "dense": {"a_ptr": "*u8", "w_ptr": "*i8", "c_ptr": "*i32", "sums_ptr": "*i32", **COMMON},
    "block_sparse": {"a_ptr": "*u8", "tiles_ptr": "*i8", "tile_k_ptr": "*i32", "tile_ptr_ptr": "*i32",
                     "c_ptr": "*i32", "sums_ptr": "*i32", **COMMON},
}
INT8_MMA = re.compile(r"\b(mma\.sync\.aligned\.[\w.]*\.s32\.s8\.s8\.s32|wgmma\.mma_async[\w.]*\.s32\.s8\.s8)\b")


def ptx(kernel: str, capability: int, block: int = 64) -> str:
    """The PTX of ``kernel`` (dense | block_sparse) for sm_<capability>, ``block`` tiles."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from graphc.kernels.triton import kernels

    fn = {"dense": kernels.dense_kernel, "block_sparse": kernels.block_sparse_kernel}[kernel]
    source = ASTSource(fn=fn, signature=SIGNATURES[kernel], constexprs={"BLOCK_M": block, "BLOCK_N": block,
                                                                       "BLOCK_K": block})
    return triton.compile(source, target=GPUTarget("cuda", capability, 32)).asm["ptx"]


def int8_mma_instructions(text: str) -> set[str]:
    return set(INT8_MMA.findall(text))
