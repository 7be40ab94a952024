"""Rule 6: TensorRT (``target=tensorrt``, explicit quantization).

Every node static (no dynamic form); weights 8-bit; activations s8, symmetric (``scale =
max(|lo|, |hi|) / 127``), zero point 0 everywhere (TensorRT rejects others); Q/DQ only on the
data inputs of quantized nodes and on both inputs of every Add reading a quantized node's
output (a residual Add: TensorRT then fuses Conv + Add + ReLU in INT8); never on outputs, so
no Q/DQ lands before an op TensorRT runs in float (Softmax, LayerNorm, ...); biases stay
float. ``tensorrt_violations`` checks these rules on a model.

Where the rest of rule 6 is applied: the plan (all static, ``plan``), the 8-bit weights
(``weights.weight_bits``), the s8 parameters (``activations.activation_qparams``), the float
biases (``weights.quantize_static_node``); the residual Adds' inputs are ``residual_add_inputs``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.graph import producer
from graphc.ops import WEIGHTED_OPS

TENSORRT_INT8_CONSUMERS = {*WEIGHTED_OPS, "Add"}


def residual_add_inputs(graph: gs.Graph, static: list[gs.Node]) -> Iterator[gs.Tensor]:
    """Rule 6: every input of every Add that reads a static node's output, in graph order."""
    static_ids = {id(n) for n in static}
    for node in graph.nodes:
        if node.op == "Add" and any(id(producer(t)) in static_ids for t in node.inputs if producer(t)):
            yield from node.inputs


def tensorrt_violations(model) -> list[str]:
    """Rule 6 checked on an ONNX model: a list of violations (empty: the QDQ graph follows it).

    1. every Q/DQ zero point is present, int8 and all zero;
    2. every Q is read only by DQs with the same scale and zero point tensors;
    3. every compute node whose weight comes from a DQ reads its data input from a DQ too,
       and its bias (if any) is float, not dequantized int32;
    4. every Add reading a quantized compute node's output reads its other input from a DQ;
    5. every activation Q feeds (through its DQ) at least one compute node or Add.
    """
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    problems = []

    def from_dq(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    def origin(name: str):
        """The node whose output reaches ``name``, looking through one Q -> DQ pair."""
        node = producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            q = producers.get(node.input[0])
            node = producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        return node

    def quantized_compute(node) -> bool:
        return node is not None and node.op_type in WEIGHTED_OPS and len(node.input) > 1 and from_dq(node.input[1])

    for node in model.graph.node:
        label = node.name or node.op_type
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) < 3 or node.input[2] not in inits:
                problems.append(f"{label}: no constant zero point")
                continue
            zero = onnx.numpy_helper.to_array(inits[node.input[2]])
            if zero.dtype != np.int8 or zero.any():
                problems.append(f"{label}: zero point {zero.dtype} {zero.ravel()[:4].tolist()} is not int8 0")
        if node.op_type == "QuantizeLinear":
            for reader in readers.get(node.output[0], []):
                if reader.op_type != "DequantizeLinear" or list(reader.input[1:3]) != list(node.input[1:3]):
                    problems.append(f"{label}: read by {reader.op_type} {reader.name!r}, not its DequantizeLinear")
            consumers = [c for dq in readers.get(node.output[0], []) for c in readers.get(dq.output[0], [])]
            if not any(c.op_type in TENSORRT_INT8_CONSUMERS for c in consumers):
                problems.append(f"{label}: quantizes a tensor no INT8 node reads")
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and from_dq(node.input[1]):
            if not from_dq(node.input[0]):
                problems.append(f"{label}: weight quantized but data input {node.input[0]!r} is not")
            if len(node.input) > 2 and node.input[2] and from_dq(node.input[2]):
                problems.append(f"{label}: bias is dequantized int32; TensorRT wants it float")
        if node.op_type == "Add":
            fed = [name for name in node.input if quantized_compute(origin(name))]
            if fed and not all(from_dq(name) or name in inits for name in node.input):
                problems.append(f"{label}: residual Add reads a quantized node's output without Q/DQ on both inputs")
    return problems
