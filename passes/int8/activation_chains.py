"""Rule 10 (``target=ort``): activation chains stay integer through onnxruntime's quantized
element-wise kernels.

onnxruntime's CPU QDQ fusions (its ``QDQSelectorActionTransformer``) turn ``DQ -> op -> Q``
into a com.microsoft integer kernel for Sigmoid (QLinearSigmoid), LeakyRelu
(QLinearLeakyRelu), Add (QLinearAdd), Mul (QLinearMul), AveragePool, GlobalAveragePool and
Concat (rule 3 already covers the last three and Add of two activations). This rule extends
rule 3's quantized tensors, in the same fixed point, with the output of:

a. a Sigmoid or LeakyRelu whose input is quantized (SiLU's gate, sigmoid-gated blocks);
b. a Mul or Add whose two inputs are quantized, or one quantized and the other a float
   constant with at most one axis longer than 1 (a scalar, a per-channel bias or scale);
   the constant is stored as u8 per tensor (``constant_qparams``: a scalar is exact) and
   read through a DequantizeLinear (``quantize_constant_inputs``);
c. a Div by, or Mul by, a positive scalar constant ``c`` whose input is quantized: its
   output's parameters are its input's with the scale divided (multiplied) by ``c``, so the
   op is dropped after Q/DQ insertion (``drop_rescales``): the next DequantizeLinear reads
   the input's integers with the output's scale. Dropped only when the two tensors' Q/DQ
   parameters agree to 1e-5 (calibrated ranges scale exactly; a sharing group can widen
   one, and then the op stays float between its Q/DQ pairs);
d. HardSwish and HardSigmoid (no integer kernel) whose input is quantized are first written
   in those ops (``decompose_hard_activations``): ``HardSigmoid(x) = Clip(x + beta/alpha,
   0, 1/alpha) * alpha`` and ``HardSwish(x) = x * HardSigmoid(x)`` (alpha 1/6, beta 1/2):
   Add (b) -> Clip (absorbed by rule 3) -> Mul by alpha (c) -> Mul (b). Paddle's HardSwish
   ``x * Clip(x + 3, 0, 6) / 6`` is that form already.

e. every float output of a Split or Resize whose data input is quantized, with the input's
   parameters (onnxruntime then splits / resizes the integers: its Split and Resize rules
   want one set of parameters).

A graph output is never quantized; a node whose output is not float32 is not chained.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values, is_graph_output, producer, replace_uses, unique_name
from graphc.passes.int8.activations import QParams, activation_qparams, activation_tensors
from graphc.passes.int8.plan import is_float32

UNARY_OPS = ("Sigmoid", "LeakyRelu")
BINARY_OPS = ("Mul", "Add")
RESCALE_OPS = ("Div", "Mul")
SHARED_OPS = ("Split", "Resize")  # outputs share the input's parameters (rule e)
CHAIN_OPS = (*UNARY_OPS, *BINARY_OPS, "Div", *SHARED_OPS)  # ops whose outputs rule 10 may quantize
HARD_OPS = {"HardSigmoid": (0.2, 0.5), "HardSwish": (1.0 / 6.0, 0.5)}  # op -> default (alpha, beta)
SCALE_TOLERANCE = 1e-5


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    values = constant_values(tensor) if tensor.name else None
    if values is None:
        return None
    values = np.asarray(values)
    return values if values.dtype == np.float32 else None


def rescale_factor(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """(data input, factor) of a Div by / Mul by a positive scalar constant: the output is
    the data input times ``factor`` (c; 1/c for Div). None otherwise (rule c)."""
    if node.op not in RESCALE_OPS or len(node.inputs) != 2:
        return None
    order = [(0, 1)] if node.op == "Div" else [(0, 1), (1, 0)]
    for data, const in order:
        values = _constant(node.inputs[const])
        if values is None or values.size != 1 or _constant(node.inputs[data]) is not None:
            continue
        c = float(values.reshape(-1)[0])
        if np.isfinite(c) and c > 0:
            return node.inputs[data], (1.0 / c if node.op == "Div" else c)
    return None


def _broadcast_constant(values: np.ndarray) -> bool:
    return sum(1 for d in values.shape if d > 1) <= 1


def chain_output(node: gs.Node, chosen: dict[str, gs.Variable]) -> list[gs.Tensor]:
    """Rule 10 a-c and e: the outputs that become quantized when ``node``'s inputs are."""
    if node.op in SHARED_OPS:
        return [t for t in node.outputs if is_float32(t)] if node.inputs[0].name in chosen else []
    return [] if (out := _chain_output(node, chosen)) is None else [out]


def _chain_output(node: gs.Node, chosen: dict[str, gs.Variable]) -> gs.Tensor | None:
    if node.op not in CHAIN_OPS or not node.outputs or not is_float32(node.outputs[0]):
        return None
    if node.op in UNARY_OPS:
        return node.outputs[0] if node.inputs[0].name in chosen else None
    scaled = rescale_factor(node)
    if scaled is not None:
        return node.outputs[0] if scaled[0].name in chosen else None
    if node.op not in BINARY_OPS or len(node.inputs) != 2:
        return None
    quantized = [t.name in chosen for t in node.inputs]
    if all(quantized):
        return node.outputs[0]
    constants = [_constant(t) for t in node.inputs]
    if any(quantized) and any(c is not None and c.size and _broadcast_constant(c) for c in constants):
        return node.outputs[0]
    return None


def chain_tensors(graph: gs.Graph, static: list[gs.Node], target: str = "ort") -> dict[str, gs.Variable]:
    """Rules 3 and 10 to one fixed point (rule 10 for ``target=ort`` only); HardSwish and
    HardSigmoid nodes reached are decomposed first (rule d), which edits ``graph``."""
    if target != "ort":
        return activation_tensors(graph, static, target)
    chosen = activation_tensors(graph, static, target, extend=chain_output)
    if decompose_hard_activations(graph, chosen):
        chosen = activation_tensors(graph, static, target, extend=chain_output)
    return chosen


def decompose_hard_activations(graph: gs.Graph, chosen: dict[str, gs.Variable]) -> int:
    """Rule d: HardSwish / HardSigmoid nodes with a quantized input written as Add -> Clip
    -> Mul(alpha) [-> Mul(x)]; returns how many. Tensor names derive from the node's output
    (deterministic: every candidate built from the same graph names them alike)."""
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}
    done = 0
    for node in list(graph.nodes):
        if node.op not in HARD_OPS or not node.inputs or node.inputs[0].name not in chosen:
            continue
        x, out = node.inputs[0], node.outputs[0]
        if not is_float32(out):
            continue
        default_alpha, default_beta = HARD_OPS[node.op]
        alpha = float(node.attrs.get("alpha", default_alpha)) if node.op == "HardSigmoid" else default_alpha
        beta = float(node.attrs.get("beta", default_beta)) if node.op == "HardSigmoid" else default_beta
        if not alpha > 0:
            continue
        base = node.name or out.name

        def tensor(suffix: str) -> gs.Variable:
            return gs.Variable(unique_name(f"{out.name}_{suffix}", taken), dtype=np.float32)

        def const(suffix: str, value: float) -> gs.Constant:
            return gs.Constant(unique_name(f"{out.name}_{suffix}", taken), np.array(value, dtype=np.float32))

        shifted, clipped, gate = tensor("shifted"), tensor("clipped"), tensor("gate")
        new = [gs.Node("Add", unique_name(f"{base}/add", taken), {}, [x, const("offset", beta / alpha)], [shifted]),
               gs.Node("Clip", unique_name(f"{base}/clip", taken), {},
                       [shifted, const("low", 0.0), const("high", 1.0 / alpha)], [clipped])]
        if node.op == "HardSigmoid":
            new.append(gs.Node("Mul", unique_name(f"{base}/scale", taken), {}, [clipped, const("alpha", alpha)], [out]))
        else:
            new.append(gs.Node("Mul", unique_name(f"{base}/scale", taken), {}, [clipped, const("alpha", alpha)],
                               [gate]))
            new.append(gs.Node("Mul", unique_name(f"{base}/mul", taken), {}, [x, gate], [out]))
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.extend(new)
        done += 1
    if done:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return done


def constant_qparams(values: np.ndarray) -> QParams:
    """u8 per-tensor parameters of a constant: its range widened to 0; a scalar ``c`` gets
    ``scale = |c| / 255`` and is represented exactly (0 or 255)."""
    return activation_qparams(float(values.min()), float(values.max()), "ort")


def quantize_constant_inputs(graph: gs.Graph, params: dict[str, QParams], names: Callable[[str], str]) -> int:
    """Rule b: the float constant input of a chained Add/Mul (output quantized, not a
    rescale) becomes a u8 initializer read through a DequantizeLinear. Returns how many."""
    done = 0
    for node in list(graph.nodes):
        if node.op not in BINARY_OPS or not node.outputs or node.outputs[0].name not in params:
            continue
        if rescale_factor(node) is not None:
            continue
        for tensor in list(node.inputs):
            values = _constant(tensor)
            if values is None:
                continue
            qp = constant_qparams(values)
            scale, zero = float(qp.scale), int(qp.zero_point)
            q = np.asarray(np.clip(np.round(values.astype(np.float64) / scale) + zero, 0, 255), dtype=np.uint8)
            restored = gs.Variable(names(f"{tensor.name}_dequantized"), dtype=np.float32)
            graph.nodes.append(gs.Node(
                "DequantizeLinear", names(f"{tensor.name}_DQ"), {},
                [gs.Constant(names(f"{tensor.name}_quantized"), q),
                 gs.Constant(names(f"{tensor.name}_scale"), qp.scale),
                 gs.Constant(names(f"{tensor.name}_zero_point"), qp.zero_point)], [restored]))
            for i, t in enumerate(node.inputs):
                if t is tensor:
                    node.inputs[i] = restored
            done += 1
    return done


def _qdq_params(node: gs.Node) -> tuple[float, int, np.dtype] | None:
    """(scale, zero point, dtype) of a per-tensor QuantizeLinear/DequantizeLinear."""
    scale = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
    zero = constant_values(node.inputs[2]) if len(node.inputs) > 2 else None
    if scale is None or zero is None or np.asarray(scale).size != 1 or np.asarray(zero).size != 1:
        return None
    zero = np.asarray(zero)
    return float(np.asarray(scale).reshape(-1)[0]), int(zero.reshape(-1)[0]), zero.dtype


def drop_rescales(graph: gs.Graph) -> int:
    """Rule c after Q/DQ insertion: ``Q1 -> DQ1 -> Div|Mul(c) -> Q2`` where DQ1's scale
    times the factor is Q2's scale (zero points equal): Q2's readers read Q1's output and the
    op is gone. Returns how many."""
    dropped = 0
    for node in list(graph.nodes):
        scaled = rescale_factor(node) if node.outputs else None
        if scaled is None:
            continue
        data, factor = scaled
        out = node.outputs[0]
        dq = producer(data)
        q1 = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q1 is None or q1.op != "QuantizeLinear" or is_graph_output(graph, out) or len(out.outputs) != 1:
            continue
        q2 = out.outputs[0]
        if q2.op != "QuantizeLinear":
            continue
        before, after = _qdq_params(dq), _qdq_params(q2)
        if before is None or after is None or before[1:] != after[1:]:
            continue
        if abs(before[0] * factor - after[0]) > SCALE_TOLERANCE * after[0]:
            continue
        replace_uses(graph, q2.outputs[0], q1.outputs[0])
        dropped += 1
    if dropped:
        graph.cleanup(remove_unused_graph_inputs=False)
    return dropped
