"""Rule 3: static activations, per tensor.

Quantized tensors: the data input of every static node; the output of every static
Conv-family node; then, to a fixed point, the output of an Add, Concat, Relu, Clip, MaxPool,
AveragePool, GlobalAveragePool, Reshape, Flatten, Transpose, Squeeze or Unsqueeze whose data
inputs are all quantized (never a graph output, never an Add/Concat with a constant input).
Each gets ``Q -> DQ`` after its producer and every consumer reads the DQ output (graph outputs
keep the float tensor). Sharing: across Reshape/Flatten/Transpose/Squeeze/Unsqueeze/MaxPool
the output uses the input's parameters, and a Relu/Clip that is its input's only reader gives
its input its own output's parameters, so onnxruntime drops those Q/DQ pairs and the
Relu/Clip (the range then starts at 0 and Q clamps exactly like the activation). Ranges come
from ``graphc.passes.int8.calibration`` (``calib``) over ``samples`` rows of ``--data``
(synthetic inputs without it).

- ``target=ort``: u8, ``scale = (hi - lo) / 255``, ``zp = round(-lo / scale)`` with the
  range widened to include 0. onnxruntime then fuses QLinearConv, QGemm, QLinearMatMul /
  MatMulIntegerToFloat, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool.
- AveragePool with ``ceil_mode=1`` and ``count_include_pad=1`` (``ceil_pool``; e.g.
  transformers' EfficientNet pooler): onnxruntime's QLinearAveragePool divides the windows the
  ceil mode extends past the input by another count than its float AveragePool does (off by
  up to 0.7 of the range, onnxruntime 1.32). Without padding the count of padded cells means
  nothing, so such a pool reading a quantized tensor gets ``count_include_pad=0`` (the same
  float result; ``uncount_ceil_pools``) and stays quantized; with padding it is never
  quantized and reads its input's float tensor, not the DQ (else onnxruntime's QDQ
  propagation would still fuse it into QLinearAveragePool).
- ``target=tensorrt``: see rule 6 (``graphc.passes.int8.tensorrt``): which tensors differ,
  and the parameters are s8 symmetric (``activation_qparams``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values, is_graph_output, producer, swap_tensor
from graphc.ops import CONV_OPS
from graphc.passes.int8.plan import is_float32
from graphc.passes.int8.tensorrt import residual_add_inputs

SHARE_INPUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")
ACTIVATION_OPS = ("Relu", "Clip")
PROPAGATE_OPS = (*SHARE_INPUT_OPS, *ACTIVATION_OPS, "Add", "Concat", "AveragePool", "GlobalAveragePool")
DATA_INPUTS = {"Reshape": 1, "Squeeze": 1, "Unsqueeze": 1, "Clip": 1}  # leading data inputs
MIN_SCALE = 1e-12


@dataclass
class QParams:
    """Quantization parameters of one tensor: scale(s), zero point(s), the axis if per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None


def ceil_pool(node: gs.Node) -> str | None:
    """"unpadded" or "padded" for an AveragePool with ``ceil_mode=1`` and
    ``count_include_pad=1`` (onnxruntime's QLinearAveragePool averages it differently), None
    for any other node."""
    attrs = node.attrs
    if node.op != "AveragePool" or not attrs.get("ceil_mode", 0) or not attrs.get("count_include_pad", 0):
        return None
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return "unpadded" if auto_pad in ("NOTSET", "VALID") and not any(attrs.get("pads", ())) else "padded"


def _propagates(node: gs.Node) -> bool:
    """Whether ``node``'s output joins rule 3's fixed point when its data inputs are quantized."""
    return node.op in PROPAGATE_OPS and ceil_pool(node) != "padded"


def uncount_ceil_pools(graph: gs.Graph, params: dict[str, QParams]) -> int:
    """Rule 3: ``count_include_pad=0`` on every unpadded ``ceil_pool`` whose input is quantized
    (the same float result; onnxruntime's QLinearAveragePool then agrees). Returns how many."""
    done = 0
    for node in graph.nodes:
        if ceil_pool(node) == "unpadded" and node.inputs and node.inputs[0].name in params:
            node.attrs["count_include_pad"] = 0
            done += 1
    return done


def _data_inputs(node: gs.Node) -> list[gs.Tensor]:
    inputs = [t for t in node.inputs if t.name]
    return inputs[:DATA_INPUTS[node.op]] if node.op in DATA_INPUTS else inputs


def activation_tensors(graph: gs.Graph, static: list[gs.Node], target: str = "ort",
                       extend: Callable[[gs.Node, dict], list[gs.Tensor]] | None = None) -> dict[str, gs.Variable]:
    """Rule 3 (ort) / rule 6 (tensorrt): the float activations that get a Q/DQ pair.
    ``extend(node, chosen)``: further node outputs to quantize in the same fixed point
    (rule 10, ``graphc.passes.int8.activation_chains``)."""
    chosen: dict[str, gs.Variable] = {}

    def add(tensor: gs.Tensor) -> bool:
        if (isinstance(tensor, gs.Variable) and is_float32(tensor) and not is_graph_output(graph, tensor)
                and tensor.name not in chosen):
            chosen[tensor.name] = tensor
            return True
        return False

    for node in static:
        add(node.inputs[0])
        if node.op in CONV_OPS and target == "ort":
            add(node.outputs[0])
    if target == "tensorrt":
        for tensor in residual_add_inputs(graph, static):
            add(tensor)
        return chosen
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if not node.outputs:
                continue
            data = _data_inputs(node) if _propagates(node) else []
            if data and all(not isinstance(t, gs.Constant) and t.name in chosen for t in data):
                changed |= add(node.outputs[0])
            elif extend is not None:
                for extra in extend(node, chosen):
                    changed |= add(extra)
    return chosen


class _Groups:
    """Union-find over tensor names: tensors that must share quantization parameters."""

    def __init__(self, names):
        self.parent = {n: n for n in names}

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def sharing_groups(graph: gs.Graph, tensors: dict[str, gs.Variable]) -> tuple[_Groups, set[str]]:
    """Groups of tensors sharing parameters, and the pre-activation tensors whose range is
    not used (their group's range comes from the Relu/Clip output). Every quantized output
    of a Split or Resize shares its input's (rule 10)."""
    groups = _Groups(tensors)
    pre_activation: set[str] = set()
    for node in graph.nodes:
        if node.op in ("Split", "Resize") and node.inputs and node.inputs[0].name in tensors:
            for result in node.outputs:
                if result.name in tensors:
                    groups.union(node.inputs[0].name, result.name)
            continue
        if node.op not in SHARE_INPUT_OPS + ACTIVATION_OPS or not node.outputs:
            continue
        source, result = node.inputs[0], node.outputs[0]
        if source.name not in tensors or result.name not in tensors:
            continue
        if node.op in ACTIVATION_OPS:
            if len(source.outputs) != 1 or producer(source) is None:
                continue
            pre_activation.add(source.name)
        groups.union(source.name, result.name)
    return groups, pre_activation


def activation_params(graph: gs.Graph, tensors: dict[str, gs.Variable],
                      ranges: dict[str, tuple[float, float]], target: str) -> dict[str, QParams]:
    """Per-tensor parameters from calibrated ranges, shared within each group."""
    groups, pre_activation = sharing_groups(graph, tensors)
    hull: dict[str, tuple[float, float]] = {}
    for name in tensors:  # a group's range: the hull of its members but pre-activation ones
        root = groups.find(name)
        lo, hi = ranges[name] if name not in pre_activation else (np.inf, -np.inf)
        old_lo, old_hi = hull.get(root, (np.inf, -np.inf))
        hull[root] = (min(old_lo, lo), max(old_hi, hi))
    shared = {root: activation_qparams(*bounds, target) for root, bounds in hull.items()}
    return {name: shared[groups.find(name)] for name in tensors}


def absorb_activations(graph: gs.Graph, params: dict[str, QParams]) -> int:
    """Rule 3 (ort): drop a Relu/Clip between a Q/DQ pair and the same Q/DQ parameters when
    the quantized range lies inside the activation's range (it is then the identity on every
    dequantized value); its readers read the pre-activation DQ. Not when a padded ``ceil_pool``
    reads it (that reads the float output). Returns how many."""
    absorbed = 0
    for node in graph.nodes:
        if node.op not in ACTIVATION_OPS or not node.outputs:
            continue
        source, result = node.inputs[0], node.outputs[0]
        qp = params.get(source.name)
        if qp is None or params.get(result.name) is not qp or len(source.outputs) != 1:
            continue
        if any(ceil_pool(reader) == "padded" for reader in result.outputs):  # it reads the float output
            continue
        low, high = 0.0, np.inf
        if node.op == "Clip":
            bounds = [constant_values(t) if t.name else None for t in node.inputs[1:3]]
            if any(b is None for b, t in zip(bounds, node.inputs[1:3]) if t.name):
                continue
            low = float(bounds[0]) if len(bounds) > 0 and bounds[0] is not None else -np.inf
            high = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else np.inf
        info = np.iinfo(qp.zero_point.dtype)
        scale, zero = float(qp.scale), int(qp.zero_point)
        q_low, q_high = (info.min - zero) * scale, (info.max - zero) * scale
        slack = 1e-6 * max(abs(q_low), abs(q_high))
        if q_low < low - slack or q_high > high + slack:
            continue
        for consumer in list(result.outputs):
            swap_tensor(consumer.inputs, result, source)
        del params[result.name]
        node.inputs.clear()
        node.outputs.clear()
        absorbed += 1
    return absorbed


def activation_qparams(lo: float, hi: float, target: str) -> QParams:
    """u8 asymmetric (ort) or s8 symmetric (tensorrt) parameters for a range."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if target == "tensorrt":
        scale = max(max(-lo, hi) / 127.0, MIN_SCALE)
        return QParams(np.array(scale, dtype=np.float32), np.array(0, dtype=np.int8))
    scale = max((hi - lo) / 255.0, MIN_SCALE)
    zero_point = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.uint8))


def insert_qdq(graph: gs.Graph, params: dict[str, QParams], names: Callable[[str], str],
               static: list[gs.Node], chain_ops: tuple[str, ...] = ()) -> None:
    """Q -> DQ after every quantized activation. Its readers read the DQ output when its
    producer runs quantized (it must end in Q for onnxruntime to fuse it); otherwise only the
    quantized readers do and the others keep the exact float tensor (a transformer's
    residual stream stays FP32). ``chain_ops``: further ops whose quantized outputs make
    them quantized nodes (rule 10)."""
    tensors = graph.tensors()
    quantized_nodes = {id(n) for n in static}
    for name in params:
        node = producer(tensors[name])
        if node is not None and (node.op in PROPAGATE_OPS or node.op in chain_ops):
            quantized_nodes.add(id(node))
    constants: dict[int, tuple[gs.Constant, gs.Constant]] = {}  # one pair per shared QParams
    for name, qp in params.items():
        tensor = tensors[name]
        consumers = list(tensor.outputs)
        quantized = gs.Variable(names(f"{name}_quantized"), dtype=qp.zero_point.dtype)
        restored = gs.Variable(names(f"{name}_dequantized"), dtype=np.float32)
        if id(qp) not in constants:
            constants[id(qp)] = (gs.Constant(names(f"{name}_scale"), qp.scale),
                                 gs.Constant(names(f"{name}_zero_point"), qp.zero_point))
        scale, zero = constants[id(qp)]
        graph.nodes.append(gs.Node("QuantizeLinear", names(f"{name}_Q"), {}, [tensor, scale, zero], [quantized]))
        graph.nodes.append(gs.Node("DequantizeLinear", names(f"{name}_DQ"), {}, [quantized, scale, zero], [restored]))
        source = producer(tensor)
        everyone = source is not None and id(source) in quantized_nodes
        for consumer in consumers:
            if ceil_pool(consumer) == "padded":
                continue
            if everyone or id(consumer) in quantized_nodes:
                swap_tensor(consumer.inputs, tensor, restored)
