"""Rules 1-4 of ``sparse-int8``: which quantized MatMul/Gemm nodes become graphc's sparse op, and
the rewrite.

1. The dynamic form (graphc ``int8``'s and ``onnxruntime.quantization.quantize_dynamic``'s):
   ``MatMulInteger(A uint8, B, a_zero_point, b_zero_point)`` with ``B`` a constant int8
   ``[K, N]`` and ``b_zero_point`` absent or all zero. Where it is followed by ``Cast(float)
   -> Mul(Mul(a_scale, constant))`` (``-> Add(constant [N])``), ``a_scale`` being the scale
   of the ``DynamicQuantizeLinear`` that made A, the chain becomes one
   ``SparseMatMulIntegerToFloat``, which does the very same float32 operations; otherwise the
   MatMulInteger alone becomes ``SparseMatMulInteger`` (the same int32 product). Either way the
   model's outputs are bit-identical.
2. The static form (QDQ): ``MatMul`` (or ``Gemm`` with ``transA=0``) reading
   ``DequantizeLinear(x_q uint8, x_scale, x_zp)`` (scalars) and ``DequantizeLinear(W_q int8
   constant, w_scale, w_zp)`` (per tensor or per output channel, zero points 0) becomes
   ``SparseMatMulIntegerToFloat(x_q, x_scale, x_zp, ..., w_scale * alpha, beta * bias)`` (a
   DequantizeLinear of an int32 bias is folded to its float values; a bias computed at run time
   is added by an Add). The integers are exact; the float result differs from onnxruntime's only
   by float rounding (its QDQ MatMul accumulates the same integers).
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


def _only_reader(graph: gs.Graph, tensor: gs.Tensor, op: str) -> gs.Node | None:
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    reader = tensor.outputs[0]
    return reader if reader.op == op else None


def _other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    if len(node.inputs) != 2:
        return None
    return node.inputs[1] if node.inputs[0] is tensor else node.inputs[0] if node.inputs[1] is tensor else None


def _float_chain(graph: gs.Graph, node: gs.Node, n: int):
    """Rule 1's ``Cast -> Mul(Mul(a_scale, constant)) (-> Add(constant))`` after a MatMulInteger:
    (a_scale, b_scale, bias or None, the chain's last output, its nodes), or None."""
    source = producer(node.inputs[0])
    if source is None or source.op != "DynamicQuantizeLinear" or len(node.inputs) < 3 or \
            node.inputs[2] is not source.outputs[2]:
        return None
    cast = _only_reader(graph, node.outputs[0], "Cast")
    if cast is None or int(cast.attrs.get("to", 0)) != 1:
        return None
    rescale = _only_reader(graph, cast.outputs[0], "Mul")
    scales = _other_input(rescale, cast.outputs[0]) if rescale is not None else None
    scale_node = producer(scales) if scales is not None else None
    if scale_node is None or scale_node.op != "Mul":
        return None
    b_scale = _other_input(scale_node, source.outputs[1])
    values = constant_values(b_scale) if b_scale is not None else None
    if values is None or values.dtype != np.float32 or values.size not in (1, n):
        return None
    out, nodes, bias = rescale.outputs[0], [cast, rescale], None
    add = _only_reader(graph, out, "Add")
    if add is not None:
        offsets = constant_values(_other_input(add, out))
        if offsets is not None and offsets.dtype == np.float32 and offsets.shape == (n,):
            bias, out, nodes = offsets, add.outputs[0], nodes + [add]
    return source.outputs[1], values.reshape(-1), bias, out, nodes


def lower_dynamic(graph: gs.Graph, c: Candidate, names: Callable[[str], str]) -> str:
    """Rule 1; the op it wrote."""
    node = c.node
    a = node.inputs[0]
    zero = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else \
        gs.Constant(names(f"{node.name or 'sparse'}_a_zero_point"), np.array(0, np.uint8))
    base = node.name or "MatMulInteger"
    chain = _float_chain(graph, node, c.columns.n)
    if chain is None:
        out = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.append(gs.Node("SparseMatMulInteger", names(f"{base}_sparse"), {"K": int(c.weight.shape[0])},
                                   [a, zero, *_weight_inputs(c, names)], [out], domain=DOMAIN))
        return "SparseMatMulInteger"
    a_scale, b_scale, bias, out, replaced = chain
    inputs = [a, a_scale, zero, *_weight_inputs(c, names), gs.Constant(names(f"{base}_b_scale"), b_scale)]
    if bias is not None:
        inputs.append(gs.Constant(names(f"{base}_bias"), bias))
    for old in [node, *replaced]:
        old.inputs.clear()
        old.outputs.clear()
    graph.nodes.append(gs.Node("SparseMatMulIntegerToFloat", names(f"{base}_sparse"), {"K": int(c.weight.shape[0])},
                               inputs, [out], domain=DOMAIN))
    return "SparseMatMulIntegerToFloat"


def lower_static(graph: gs.Graph, c: Candidate, names: Callable[[str], str]) -> str:
    """Rule 2; the op it wrote."""
    node = c.node
    x_dq, w_dq = _dequantized(node.inputs[0]), _dequantized(node.inputs[1])
    x_q = x_dq.inputs[0]
    x_scale = np.asarray(constant_values(x_dq.inputs[1]), np.float32).reshape(())
    x_zero = np.asarray(constant_values(x_dq.inputs[2])).reshape(()).astype(np.uint8) \
        if len(x_dq.inputs) > 2 and x_dq.inputs[2].name else np.array(0, np.uint8)
    n = c.weight.shape[1]
    w_scale = np.broadcast_to(np.asarray(constant_values(w_dq.inputs[1]), np.float64).reshape(-1), (n,))
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    base = node.name or node.op
    inputs = [x_q, gs.Constant(names(f"{base}_x_scale"), x_scale), gs.Constant(names(f"{base}_x_zero_point"), x_zero),
              *_weight_inputs(c, names), gs.Constant(names(f"{base}_b_scale"), (w_scale * alpha).astype(np.float32))]
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    out = node.outputs[0]
    nodes = []
    if bias is not None:
        folded = _float_bias(node, bias, names)
        if isinstance(folded, gs.Constant):
            inputs.append(folded)
        else:  # computed at run time (beta 1): added after the op
            product = gs.Variable(names(f"{base}_product"), dtype=np.float32)
            nodes.append(gs.Node("Add", names(f"{base}_bias"), {}, [product, folded], [out]))
            out = product
    nodes.append(gs.Node("SparseMatMulIntegerToFloat", names(f"{base}_sparse"), {"K": int(c.weight.shape[0])},
                         inputs, [out], domain=DOMAIN))
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.extend(nodes)
    return "SparseMatMulIntegerToFloat"


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
