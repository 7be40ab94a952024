"""Rules 1-4 of ``sparse-int8``: which quantized MatMul/Gemm nodes become graphc's sparse op, and
the rewrite.

1. The dynamic form (graphc ``int8``'s and ``onnxruntime.quantization.quantize_dynamic``'s):
   ``MatMulInteger(A uint8, B, a_zero_point, b_zero_point)`` with ``B`` a constant int8
   ``[K, N]`` and ``b_zero_point`` absent or all zero becomes ``SparseMatMulInteger(A,
   a_zero_point, col_ptr, block_k, values)``: the same int32 product, so the nodes around it
   (Cast, the scale Mul) are untouched and the model's outputs are bit-identical.
2. The static form (QDQ): ``MatMul`` (or ``Gemm`` with ``transA=0``) reading
   ``DequantizeLinear(x_q uint8, x_scale, x_zp)`` (scalars) and ``DequantizeLinear(W_q int8
   constant, w_scale, w_zp)`` (per tensor or per output channel, zero points 0) becomes
   ``SparseMatMulInteger(x_q, x_zp, ...) -> Cast -> Mul(x_scale * w_scale * alpha)`` (``->
   Add(beta * bias)`` for a Gemm bias; a DequantizeLinear of an int32 bias is folded to its
   float values). The integers are exact; the float result differs from onnxruntime's only by
   float rounding (its QDQ MatMul accumulates the same integers).
3. A layer pays off when at most ``max_density`` of its 4-groups along K hold a non-zero (the
   kernel's work is one step per kept group; see ``kernels/layout.py``). Others stay dense,
   each with its reason in the report: too dense, int8 (not uint8) activations, a non-zero
   weight zero point, a weight that is not a constant 2-D int8 matrix, ``transA``, Conv (no
   sparse Conv kernel yet), a node inside a subgraph.
4. Each lowered weight is stored compressed (``kernels.layout.pack``); the dense int8 weight
   goes when nothing else reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values, producer
from graphc.kernels import DOMAIN
from graphc.kernels.layout import BlockColumns


@dataclass
class Candidate:
    node: gs.Node
    form: str  # "dynamic" | "static"
    weight: np.ndarray | None = None  # int8 [K, N]
    reason: str = ""  # why it stays dense ("" when it is lowered)
    columns: BlockColumns | None = None

    @property
    def density(self) -> float:
        k, n = self.weight.shape
        return self.columns.blocks / max(1, -(-k // 4) * n)


def _zero_or_absent(node: gs.Node, index: int) -> bool:
    if len(node.inputs) <= index or not node.inputs[index].name:
        return True
    values = constant_values(node.inputs[index])
    return values is not None and not np.any(values)


def _int8_matrix(tensor: gs.Tensor) -> np.ndarray | None:
    values = constant_values(tensor)
    if values is None or values.dtype != np.int8 or values.ndim != 2:
        return None
    return np.asarray(values)


def _dequantized(tensor: gs.Tensor) -> gs.Node | None:
    source = producer(tensor)
    return source if source is not None and source.op == "DequantizeLinear" else None


def dynamic_candidate(node: gs.Node) -> Candidate:
    c = Candidate(node, "dynamic")
    a = node.inputs[0]
    weight = _int8_matrix(node.inputs[1])
    if a.dtype is not None and np.dtype(a.dtype) != np.uint8:
        c.reason = f"{np.dtype(a.dtype).name} activations (the kernel multiplies uint8 by int8)"
    elif weight is None:
        c.reason = "its B is not a constant 2-D int8 matrix"
    elif not _zero_or_absent(node, 3):
        c.reason = "a non-zero weight zero point"
    c.weight = weight
    return c


def static_candidate(node: gs.Node) -> Candidate:
    c = Candidate(node, "static")
    x_dq, w_dq = _dequantized(node.inputs[0]), _dequantized(node.inputs[1])
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        c.reason = "Gemm with transA=1"
        return c
    if x_dq is None or w_dq is None:
        c.reason = "not a quantized layer (no DequantizeLinear on both inputs)"
        return c
    weight = _int8_matrix(w_dq.inputs[0])
    x_q = x_dq.inputs[0]
    x_scale = constant_values(x_dq.inputs[1])
    if x_q.dtype is not None and np.dtype(x_q.dtype) != np.uint8:
        c.reason = f"{np.dtype(x_q.dtype).name} activations (the kernel multiplies uint8 by int8)"
    elif x_scale is None or x_scale.size != 1 or (len(x_dq.inputs) > 2 and x_dq.inputs[2].name
                                                   and constant_values(x_dq.inputs[2]) is None):
        c.reason = "its activation scale or zero point is not a constant scalar"
    elif weight is None:
        c.reason = "its weight is not a constant 2-D int8 matrix"
    elif not _zero_or_absent(w_dq, 2):
        c.reason = "a non-zero weight zero point"
    elif constant_values(w_dq.inputs[1]) is None:
        c.reason = "its weight scale is not a constant"
    elif node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) != 1.0 and len(node.inputs) > 2 and \
            node.inputs[2].name and constant_values(node.inputs[2]) is None and _dequantized(node.inputs[2]) is None:
        c.reason = "a Gemm bias computed at run time with beta != 1"
    else:
        transposed = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        c.weight = np.ascontiguousarray(weight.T) if transposed else weight
    return c


def candidates(graph: gs.Graph) -> list[Candidate]:
    """Every MatMulInteger, quantized MatMul/Gemm and Conv of the top-level graph (rules 1-3)."""
    found = []
    for node in graph.nodes:
        if node.op == "MatMulInteger":
            found.append(dynamic_candidate(node))
        elif node.op in ("MatMul", "Gemm") and _dequantized(node.inputs[1]) is not None:
            found.append(static_candidate(node))
        elif node.op in ("ConvInteger", "QLinearConv") or (node.op == "Conv" and _dequantized(node.inputs[1])):
            found.append(Candidate(node, "conv", reason="Conv (no sparse Conv kernel yet)"))
    return found


def _weight_inputs(c: Candidate, names: Callable[[str], str]) -> list[gs.Constant]:
    base = c.node.name or c.node.op
    return [gs.Constant(names(f"{base}_col_ptr"), c.columns.col_ptr),
            gs.Constant(names(f"{base}_block_k"), c.columns.block_k),
            gs.Constant(names(f"{base}_values"), c.columns.values)]


def lower_dynamic(graph: gs.Graph, c: Candidate, names: Callable[[str], str]) -> None:
    """Rule 1."""
    node = c.node
    a = node.inputs[0]
    zero = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else \
        gs.Constant(names(f"{node.name or 'sparse'}_a_zero_point"), np.array(0, np.uint8))
    out = node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.append(gs.Node("SparseMatMulInteger", names(f"{node.name or 'MatMulInteger'}_sparse"),
                               {"K": int(c.weight.shape[0])}, [a, zero, *_weight_inputs(c, names)], [out],
                               domain=DOMAIN))


def lower_static(graph: gs.Graph, c: Candidate, names: Callable[[str], str]) -> None:
    """Rule 2."""
    node = c.node
    x_dq, w_dq = _dequantized(node.inputs[0]), _dequantized(node.inputs[1])
    x_q = x_dq.inputs[0]
    x_scale = float(np.asarray(constant_values(x_dq.inputs[1])).reshape(()))
    x_zero = np.asarray(constant_values(x_dq.inputs[2])).reshape(()).astype(np.uint8) \
        if len(x_dq.inputs) > 2 and x_dq.inputs[2].name else np.array(0, np.uint8)
    n = c.weight.shape[1]
    w_scale = np.broadcast_to(np.asarray(constant_values(w_dq.inputs[1]), np.float64).reshape(-1), (n,))
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    base = node.name or node.op
    product = gs.Variable(names(f"{base}_int32"), dtype=np.int32)
    as_float = gs.Variable(names(f"{base}_int32_float"), dtype=np.float32)
    nodes = [gs.Node("SparseMatMulInteger", names(f"{base}_sparse"), {"K": int(c.weight.shape[0])},
                     [x_q, gs.Constant(names(f"{base}_x_zero_point"), x_zero), *_weight_inputs(c, names)],
                     [product], domain=DOMAIN),
             gs.Node("Cast", names(f"{base}_cast"), {"to": 1}, [product], [as_float])]
    scale = gs.Constant(names(f"{base}_scale"), (x_scale * w_scale * alpha).astype(np.float32))
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    out = node.outputs[0]
    if bias is None:
        nodes.append(gs.Node("Mul", names(f"{base}_rescale"), {}, [as_float, scale], [out]))
    else:
        scaled = gs.Variable(names(f"{base}_rescaled"), dtype=np.float32)
        nodes.append(gs.Node("Mul", names(f"{base}_rescale"), {}, [as_float, scale], [scaled]))
        nodes.append(gs.Node("Add", names(f"{base}_bias"), {}, [scaled, _float_bias(node, bias, names)], [out]))
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.extend(nodes)


def _float_bias(node: gs.Node, bias: gs.Tensor, names: Callable[[str], str]) -> gs.Tensor:
    """beta * C as a float constant where C is constant or a DequantizeLinear of constants."""
    beta = float(node.attrs.get("beta", 1.0))
    values = constant_values(bias)
    dq = _dequantized(bias)
    if values is None and dq is not None:
        q, scale = constant_values(dq.inputs[0]), constant_values(dq.inputs[1])
        zero = constant_values(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else 0
        if q is not None and scale is not None and zero is not None:
            values = (np.asarray(q, np.float64) - np.asarray(zero, np.float64)) * np.asarray(scale, np.float64)
    if values is not None:
        return gs.Constant(names(f"{node.name or 'Gemm'}_float_bias"), (np.asarray(values, np.float64) * beta)
                           .astype(np.float32))
    if beta == 1.0:
        return bias
    raise ValueError("a Gemm bias computed at run time with beta != 1")  # never chosen: see static_candidate
