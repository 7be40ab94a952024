"""Rule 1: which nodes are quantized, and how.

A Conv, ConvTranspose, Gemm (``transA=0``) or MatMul whose weight (input 1) is a float32
constant (MatMul: rank 2) and whose data input is float32 is quantized, unless its name or op
type matches an ``exclude`` glob (patterns joined by ``+``, e.g.
``exclude=Gemm+/encoder/layer.0/*``). Each is quantized ``static`` (activation range
calibrated once) or ``dynamic`` (range measured per run):

- ``mode=static``: all static; ``mode=dynamic``: MatMul/Gemm dynamic, Conv-family static
  (onnxruntime's dynamic ConvInteger is ~4x slower than FP32, issue 3);
- ``mode=auto`` (default): Conv-family static; MatMul/Gemm dynamic when the graph has a
  Softmax or a fused attention op (``fuse``'s; a transformer: measured fastest and most
  accurate on CPU, issue 3), else static.

``target=tensorrt`` has no dynamic form: all static (rule 6). Nodes whose labels the accuracy
budget keeps FP32 (rule 8), or the speed guard (rule 11, a label -> reason mapping), are planned
FP32 too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.errors import GraphcError
from graphc.graph import constant_values
from graphc.ops import ATTENTION_OPS, CONV_OPS, QUANTIZED_OPS, WEIGHTED_OPS

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})  # compute nodes rule 1 does not quantize either

if TYPE_CHECKING:
    from graphc.passes.int8 import Int8Options



@dataclass
class NodePlan:
    static: list[gs.Node]
    dynamic: list[gs.Node]
    skipped: dict[str, str]  # node name -> why it stays FP32


def is_float32(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def refusal(node: gs.Node) -> str | None:
    """Why a compute node cannot be quantized (None: it can)."""
    if len(node.inputs) < 2:
        return "no weight input"
    weight = constant_values(node.inputs[1])
    if weight is None:
        source = node.inputs[1].inputs[0].op if len(node.inputs[1].inputs) == 1 else None
        return "already quantized (its weight is a DequantizeLinear output)" if source == "DequantizeLinear" \
            else "weight is not a constant"
    weight = np.asarray(weight)
    if weight.dtype != np.float32:
        return f"weight dtype {weight.dtype}"
    if isinstance(node.inputs[0], gs.Constant) or not is_float32(node.inputs[0]):
        return "data input is not a float32 activation"
    if node.op == "MatMul" and weight.ndim != 2:
        return f"MatMul weight of rank {weight.ndim}"
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return "Gemm with transA=1"
    if node.op in CONV_OPS and weight.ndim < 3:
        return "Conv weight of rank < 3"
    return None


def node_label(node: gs.Node) -> str:
    """A compute node's name in plans and reports (its output's name when it has none)."""
    return node.name or f"{node.op}->{node.outputs[0].name}"


def plan_nodes(graph: gs.Graph, opts: Int8Options, keep: frozenset[str] | Mapping[str, str] = frozenset()) -> NodePlan:
    """Rule 1: which compute nodes are quantized, and how (labels in ``keep``: FP32, rule 8;
    a mapping gives each kept label its reason, rule 11)."""
    patterns = list(opts.exclude)
    matched = {p: False for p in patterns}
    transformer = any(n.op == "Softmax" or n.op in ATTENTION_OPS for n in graph.nodes)
    plan = NodePlan([], [], {})
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS:
            continue
        label = node_label(node)
        hits = [p for p in patterns if fnmatch.fnmatchcase(node.name or "", p) or fnmatch.fnmatchcase(node.op, p)]
        for p in hits:
            matched[p] = True
        if hits:
            plan.skipped[label] = f"excluded by {hits[0]!r}"
            continue
        kept = (keep[label] if isinstance(keep, Mapping) else "kept FP32 by budget") if label in keep else None
        why = refusal(node) or kept
        if why is not None:
            plan.skipped[label] = why
            continue
        dynamic = (opts.target == "ort" and node.op not in CONV_OPS
                   and (opts.mode == "dynamic" or (opts.mode == "auto" and transformer)))
        (plan.dynamic if dynamic else plan.static).append(node)
    unused = [p for p, hit in matched.items() if not hit]
    if unused:
        raise GraphcError(f"int8:exclude pattern {unused[0]!r} matches no Conv/ConvTranspose/Gemm/MatMul "
                          f"node name or op type")
    return plan


def left_alone(graph: gs.Graph) -> dict:
    """What rule 1 never sees: quantized nodes already in the graph (QOperator ops such as
    QLinearConv/MatMulInteger, Q/DQ pairs) and compute nodes inside If/Loop/Scan bodies (their
    activations cannot be calibrated: the tensor tap reads top-level tensors only)."""
    counts = {"prequantized_nodes": sum(1 for n in graph.nodes if n.op in QUANTIZED_OPS or n.op.startswith("QLinear"))}
    counts["subgraph_compute_nodes"] = sum(1 for node in graph.nodes for sub in node.subgraphs(recursive=True)
                                           for n in sub.nodes if n.op in WEIGHTED_OPS or n.op in RECURRENT_OPS)
    return counts


def plan_stats(plan: NodePlan) -> dict:
    stats = {"static_nodes": len(plan.static), "dynamic_nodes": len(plan.dynamic),
             "fp32_compute_nodes": len(plan.skipped)}
    if plan.skipped:
        stats["fp32_reasons"] = dict(sorted(plan.skipped.items())[:20])
    return stats
