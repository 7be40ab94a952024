"""graphc's op vocabulary and its one MAC formula.

Op sets that more than one pass (or a pass and the driver) must agree on live here, so a
new op is taught to graphc once. MACs (multiply-accumulates) of one node, from the shapes
of its inputs and of its first output:

- Conv / ConvInteger / QLinearConv: output elements x (input channels / group) x kernel
  size, i.e. output elements x the product of the weight's dims after the first;
- ConvTranspose: input elements x (output channels / group) x kernel size;
- Gemm: M x N x K, i.e. output elements x K (K from B and ``transB``, else from A and
  ``transA``);
- MatMul / MatMulInteger / QLinearMatMul / MatMulIntegerToFloat / FusedMatMul: output
  elements x K, the reduced dim (the last of A; B's second-to-last when A's shape is unknown);
- com.microsoft MultiHeadAttention / GroupQueryAttention (``fuse``): the two products they
  replace, Q x K^T and P x V, 2 x B x S x S_kv x hidden from q ``[B, S, hidden]`` and k
  ``[B, S_kv, hidden]``, counted dense as in the unfused graph (padding skipped at run time
  is not subtracted).

- graphc's sparse ops (``ai.graphc``, ``sparse-int8``): the work the kernel does, rows x 4 x
  the kept 4-groups (rows from A ``[..., K]``, the groups from ``block_k``'s length).

Other ops are cheap element-wise work and count 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})  # layers whose input 1 is a weight
CONV_OPS = ("Conv", "ConvTranspose")
CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # convolutions: where the weight is
MATMUL_B_INPUT = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "MatMulIntegerToFloat": 1, "FusedMatMul": 1}
ATTENTION_OPS = frozenset({"MultiHeadAttention", "GroupQueryAttention"})
# graphc's sparse ops: where block_k is (graphc.kernels.WEIGHT_INPUTS + 1)
SPARSE_BLOCK_INPUT = {"SparseMatMulInteger": 3, "SparseMatMulIntegerToFloat": 4, "SparseDynamicQuantizeMatMul": 2}
MAC_OPS = frozenset({*CONV_WEIGHT_INPUT, *MATMUL_B_INPUT, *ATTENTION_OPS, *SPARSE_BLOCK_INPUT, "Gemm", "ConvTranspose"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
                         "ConvInteger", "MatMulInteger"})  # compute ops that already run in integers
NON_TENSOR_OPS = frozenset({"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SplitToSequence",
                            "SequenceMap", "Optional"})  # ops whose output is a sequence or an optional
QUANTIZED_OPS = frozenset({*QDQ_OPS, *INTEGER_OPS, "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul"})

Shape = Sequence[int]


def node_macs(op: str, input_shape: Callable[[int], Shape | None], output_shape: Shape | None,
              attrs: Mapping[str, int]) -> int | None:
    """MACs of one node (see the module docstring); None when a shape it needs is unknown.
    ``input_shape(i)`` is the shape of input ``i`` (None: unknown or absent)."""
    if op not in MAC_OPS:
        return 0
    if op in ATTENTION_OPS:
        q, k = input_shape(0), input_shape(1)
        if q is None or k is None or len(q) != 3 or len(k) != 3:
            return None
        return 2 * int(q[0]) * int(q[1]) * int(k[1]) * int(q[2])
    if op in SPARSE_BLOCK_INPUT:
        a, groups = input_shape(0), input_shape(SPARSE_BLOCK_INPUT[op])
        if a is None or groups is None or len(groups) != 1:
            return None
        return int(np.prod(a[:-1])) * 4 * int(groups[0])
    if op == "ConvTranspose":
        x, weight = input_shape(0), input_shape(1)
        return None if x is None or weight is None else int(np.prod(x)) * int(np.prod(weight[1:]))
    if output_shape is None:
        return None
    elements = int(np.prod(output_shape))
    if op in CONV_WEIGHT_INPUT:
        weight = input_shape(CONV_WEIGHT_INPUT[op])
        return None if weight is None else elements * int(np.prod(weight[1:]))
    if op == "Gemm":
        b = input_shape(1)
        if b is not None and len(b) == 2:
            return elements * int(b[1] if attrs.get("transB", 0) else b[0])
        a = input_shape(0)
        return None if a is None else elements * int(a[0] if attrs.get("transA", 0) else a[-1])
    a, b = input_shape(0), input_shape(MATMUL_B_INPUT[op])
    if a is not None and len(a):
        return elements * int(a[-1])
    return None if b is None or len(b) < 2 else elements * int(b[-2])
