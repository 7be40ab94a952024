"""``fold``: exact graph clean-up before any lossy pass.

Rewrite rules, in order:

1. Constant nodes become initializers (exported models store weights as Constant nodes),
   unless the Constant's output is a graph output.
2. Identity nodes and inference Dropout nodes (no ``training_mode`` input, or a constant
   false one, and an unused mask output) are removed; consumers read the input directly.
   When the removed node's output is a graph output, its producer is renamed to write the
   graph output instead (output names never change); an Identity that only forwards a
   graph input or a constant to a graph output stays.
3. Constant subgraphs are evaluated with onnxruntime and replaced by initializers
   (``graphc.graph.fold_constants``: onnx-graphsurgeon's, shape subgraphs included, with
   its rules for bounded ``Shape`` nodes and sequences), unless a folded tensor would exceed
   ``size_threshold`` bytes; inside If/Loop/Scan bodies too, except nodes that read an outer
   weight (folding would copy it into every body that reads it: it stays one outer
   initializer, written once, ``graphc.graph.export_model``).
4. A BatchNormalization in inference mode whose input is produced only for it by a Conv,
   ConvTranspose or Gemm with constant weights is folded into that node's weights and bias;
   after a MatMul with a constant 2-D weight and a rank-2 output (the BN channel axis is then
   the MatMul's output column) it folds into the weight and becomes an Add of the shift.
   Weights shared with other nodes are copied, never edited in place.
5. Dead nodes and unused initializers are removed, the graph is sorted, and ONNX shape
   inference annotates every tensor.

Refuses to touch: BatchNormalization in training mode or with used mean/var outputs, nodes
in subgraphs (If/Loop bodies) for rules 2 and 4, Dropout that may be in training mode.
All rules are exact in real arithmetic; BN folding changes float rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from graphc.graph import (constant_values, fold_constants, infer_shapes, is_graph_input, is_graph_output, producer,
                          replace_uses, set_tensors, swap_tensor, unique_name)
from graphc.pass_api import Pass, PassResult
from graphc.verify import Tolerance

G_LOGGER.severity = G_LOGGER.ERROR  # fold_constants warns for every node it cannot fold

CONSTANT_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32,
    "value_int": np.int64, "value_ints": np.int64,
}


@dataclass(frozen=True)
class FoldOptions:
    constants: bool = field(default=True, metadata={"help": "evaluate constant subgraphs (rule 3)"})
    bn: bool = field(default=True, metadata={"help": "fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul"})
    size_threshold: int = field(default=64 * 2**20, metadata={
        "min": 0, "help": "largest tensor (bytes) constant folding may create"})


class FoldPass(Pass):
    name = "fold"
    summary = "constant folding, Identity/Dropout removal, BatchNorm folding, dead-code removal (exact)"
    Options = FoldOptions
    in_place = False
    exact = True

    def tolerance(self) -> Tolerance:
        # 1e-6 absolute: a folded BatchNorm or constant rounds differently in float32; on an
        # output whose values are all tiny (ppocr-det's sigmoid map at 4e-5 on synthetic
        # inputs: max abs 1.5e-7, relative 0.0036) that is no change
        return Tolerance(max_rel_error=1e-4, min_cosine=0.99999, abs_floor=1e-6)

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        nodes_before = len(graph.nodes)
        initializers_before = sum(1 for t in graph.tensors().values() if isinstance(t, gs.Constant))
        stats = {
            "constants_to_initializers": constants_to_initializers(graph),
            "identity_dropout_removed": remove_passthrough_nodes(graph),
        }
        if self.options.constants:
            fold_constants(graph, size_threshold=self.options.size_threshold)
        stats["bn_folded"] = fold_batchnorms(graph) if self.options.bn else 0
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        stats["nodes_removed"] = nodes_before - len(graph.nodes)
        initializers_after = sum(1 for t in graph.tensors().values() if isinstance(t, gs.Constant))
        stats["initializers"] = f"{initializers_before}->{initializers_after}"
        annotated = infer_shapes(graph)
        changed = stats["nodes_removed"] != 0 or stats["bn_folded"] != 0 or stats["constants_to_initializers"] != 0
        return PassResult(changed=changed, stats=stats, graph=annotated)


def constants_to_initializers(graph: gs.Graph) -> int:
    """Rule 1: replace Constant node outputs with initializers; returns how many."""
    converted = 0
    for node in graph.nodes:
        if node.op != "Constant" or not node.outputs or is_graph_output(graph, node.outputs[0]):
            continue
        values = constant_values(node.outputs[0])
        if values is None:
            key = next((k for k in CONSTANT_ATTRS if k in node.attrs), None)
            if key is None:  # sparse_value / strings: leave the node alone
                continue
            values = np.array(node.attrs[key], dtype=CONSTANT_ATTRS[key])
        output = node.outputs[0]
        initializer = gs.Constant(output.name, np.asarray(values))
        output.name = output.name + "__constant_node"
        replace_uses(graph, output, initializer)
        node.outputs.clear()
        converted += 1
    return converted


def _is_inference_dropout(node: gs.Node) -> bool:
    if any(t.outputs for t in node.outputs[1:]):  # the mask is read
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = constant_values(node.inputs[2])
        return training is not None and not bool(np.asarray(training).item())
    return True


def remove_passthrough_nodes(graph: gs.Graph) -> int:
    """Rule 2: remove Identity and inference Dropout; returns how many."""
    removed = 0
    for node in graph.nodes:
        if node.op not in ("Identity", "Dropout") or (node.op == "Dropout" and not _is_inference_dropout(node)):
            continue
        source, target = node.inputs[0], node.outputs[0]
        if len(node.outputs) > 1 and any(is_graph_output(graph, t) for t in node.outputs[1:]):
            continue
        if is_graph_output(graph, target):
            upstream = producer(source)
            if (upstream is None or is_graph_input(graph, source) or is_graph_output(graph, source)
                    or isinstance(source, gs.Constant)):
                continue
            # the producer writes the graph output directly; its other readers follow
            node.outputs.clear()
            node.inputs.clear()
            swap_tensor(upstream.outputs, source, target)
            for consumer in list(source.outputs):
                swap_tensor(consumer.inputs, source, target)
        else:
            replace_uses(graph, target, source)
            node.outputs.clear()
            node.inputs.clear()
        removed += 1
    return removed


def _bn_scale_shift(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) of an inference-mode BatchNormalization, or None."""
    if bn.attrs.get("training_mode", 0) or any(t.outputs for t in bn.outputs[1:]):
        return None
    params = [constant_values(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return scale, beta - mean * scale


def _fold_into_conv(node: gs.Node, scale, shift, make_const) -> bool:
    weight = constant_values(node.inputs[1])
    if weight is None:
        return False
    weight = np.asarray(weight)
    groups = int(node.attrs.get("group", 1))
    if node.op == "Conv":
        out_channels = weight.shape[0]
        if out_channels != scale.size:
            return False
        new_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    else:  # ConvTranspose: weight [C_in, C_out / group, k...]
        per_group = weight.shape[1]
        if per_group * groups != scale.size:
            return False
        grouped = weight.reshape(groups, weight.shape[0] // groups, per_group, *weight.shape[2:])
        factor = scale.reshape(groups, 1, per_group, *([1] * (weight.ndim - 2)))
        new_weight = (grouped * factor).reshape(weight.shape)
    bias = constant_values(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.zeros(scale.size)
    if bias is None:
        return False
    new_bias = np.asarray(bias, dtype=np.float64) * scale + shift
    node.inputs[1] = make_const(node.inputs[1].name, new_weight.astype(weight.dtype))
    bias_const = make_const(f"{node.name or node.op}_bias", new_bias.astype(weight.dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = bias_const
    else:
        node.inputs.append(bias_const)
    return True


def _fold_into_gemm(node: gs.Node, scale, shift, make_const) -> bool:
    weight = constant_values(node.inputs[1])
    if weight is None or np.asarray(weight).ndim != 2:
        return False
    weight = np.asarray(weight)
    trans_b = int(node.attrs.get("transB", 0))
    features = weight.shape[0] if trans_b else weight.shape[1]
    if features != scale.size:
        return False
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    bias = np.zeros(features)
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = constant_values(node.inputs[2])
        if c is None:
            return False
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            return False  # a per-row bias cannot be folded per channel
        bias = beta * np.broadcast_to(c.reshape(-1), (features,))
    del alpha  # alpha scales A*B and commutes with the per-column scale
    new_weight = weight * (scale[:, None] if trans_b else scale[None, :])
    node.inputs[1] = make_const(node.inputs[1].name, new_weight.astype(weight.dtype))
    bias_const = make_const(f"{node.name or node.op}_bias", (bias * scale + shift).astype(weight.dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = bias_const
    else:
        node.inputs.append(bias_const)
    node.attrs["beta"] = 1.0
    return True


def _fold_into_matmul(node: gs.Node, bn: gs.Node, scale, shift, make_const) -> bool:
    weight = constant_values(node.inputs[1])
    activation = node.inputs[0]
    if weight is None or np.asarray(weight).ndim != 2 or activation.shape is None or len(activation.shape) != 2:
        return False
    weight = np.asarray(weight)
    if weight.shape[1] != scale.size:
        return False
    node.inputs[1] = make_const(node.inputs[1].name, (weight * scale[None, :]).astype(weight.dtype))
    bn.op = "Add"
    bn.attrs.clear()
    set_tensors(bn.inputs, [bn.inputs[0], make_const(f"{bn.name or 'bn'}_shift", shift.astype(weight.dtype))])
    set_tensors(bn.outputs, bn.outputs[:1])
    return True


def fold_batchnorms(graph: gs.Graph) -> int:
    """Rule 4: fold BatchNormalization into the producing node; returns how many."""
    taken = set(graph.tensors().keys())

    def make_const(base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(unique_name(base + "_bnfold", taken), values)

    folded = 0
    for bn in graph.nodes:
        if bn.op != "BatchNormalization":
            continue
        x = bn.inputs[0]
        node = producer(x)
        if node is None or len(x.outputs) != 1 or is_graph_output(graph, x):
            continue
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        scale_shift = _bn_scale_shift(bn)
        if scale_shift is None:
            continue
        scale, shift = scale_shift
        if node.op == "MatMul":
            ok = _fold_into_matmul(node, bn, scale, shift, make_const)
        else:
            fold = _fold_into_conv if node.op in ("Conv", "ConvTranspose") else _fold_into_gemm
            ok = fold(node, scale, shift, make_const)
            if ok:  # the producer now writes the BN's output; the BN node is dropped
                output = bn.outputs[0]
                bn.outputs.clear()
                bn.inputs.clear()
                set_tensors(node.outputs, [output])
        folded += ok
    return folded
