"""``int8``: post-training INT8 quantization by QDQ insertion, with streamed calibration.

Run it after ``fold`` (``--passes fold,int8``): a BatchNormalization left after a Conv stays
in float between the Conv's Q/DQ pair.

Which nodes (rule 1). A Conv, ConvTranspose, Gemm (``transA=0``) or MatMul whose weight
(input 1) is a float32 constant (MatMul: rank 2) and whose data input is float32 is
quantized, unless its name or op type matches an ``exclude`` glob (patterns joined by
``+``, e.g. ``exclude=Gemm+/encoder/layer.0/*``). Each is quantized ``static`` (activation
range calibrated once) or ``dynamic`` (range measured per run):

- ``mode=static``: all static; ``mode=dynamic``: MatMul/Gemm dynamic, Conv-family static
  (onnxruntime's dynamic ConvInteger is ~4x slower than FP32, issue 3);
- ``mode=auto`` (default): Conv-family static; MatMul/Gemm dynamic when the graph has a
  Softmax (a transformer: measured fastest and most accurate on CPU, issue 3), else static.

Weights (rule 2): per output channel (``per_channel=false``: per tensor), symmetric, s8,
zero point 0, ``scale = max|w| / qmax`` (an all-zero channel gets scale 1). ``qmax`` is 127,
except ``target=ort`` on a CPU whose u8 x s8 products saturate (AVX2 without VNNI, see
``graphc.cpu_features``): 63 (7-bit weights), unless ``weight_bits`` says otherwise. Axis:
Conv 0, ConvTranspose 1 (per tensor when grouped), Gemm 0 with ``transB=1`` else 1, MatMul 1.
The int8 weight is an initializer read by a DequantizeLinear.

Static activations (rule 3), per tensor. Quantized tensors: the data input of every static
node; the output of every static Conv-family node; then, to a fixed point, the output of an
Add, Concat, Relu, Clip, MaxPool, AveragePool, GlobalAveragePool, Reshape, Flatten,
Transpose, Squeeze or Unsqueeze whose data inputs are all quantized (never a graph output,
never an Add/Concat with a constant input). Each gets ``Q -> DQ`` after its producer and
every consumer reads the DQ output (graph outputs keep the float tensor). Sharing: across
Reshape/Flatten/Transpose/Squeeze/Unsqueeze/MaxPool the output uses the input's parameters,
and a Relu/Clip that is its input's only reader gives its input its own output's
parameters, so onnxruntime drops those Q/DQ pairs and the Relu/Clip (the range then starts
at 0 and Q clamps exactly like the activation). Ranges come from ``graphc.calibration``
(``calib``) over ``samples`` rows of ``--data`` (synthetic inputs without it).

- ``target=ort``: u8, ``scale = (hi - lo) / 255``, ``zp = round(-lo / scale)`` with the
  range widened to include 0. onnxruntime then fuses QLinearConv, QGemm, QLinearMatMul /
  MatMulIntegerToFloat, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool.
- ``target=tensorrt``: see rule 6.

A static MatMul's bias Add stays a float Add after the fused MatMulIntegerToFloat (onnxruntime's
QDQ fusion of ``DQ -> MatMul`` takes no bias). Writing it as ``Reshape(x, [-1, K]) -> Gemm
(int32 bias) -> Reshape(back)``, which onnxruntime fuses into one QGemm, was measured no faster
on MiniLM (batch 1: 1.50x vs 1.52x FP32; batch 32: 1.57x vs 1.63x): the reshapes cost what
the Adds saved, so the pass keeps the MatMul form.

Bias (rule 4): a static Conv/Gemm bias becomes int32 with scale ``s_x * s_w`` (per channel,
zero point 0; ``beta`` folded in) for ``target=ort``; it stays float for TensorRT.

Dynamic nodes (rule 5): ``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp) ->
Cast -> Mul(x_scale * w_scale)`` (+ ``Add(beta * C)`` for a Gemm bias), the form onnxruntime
fuses into DynamicQuantizeMatMul. ``target=tensorrt`` has no dynamic form: all static.

TensorRT (rule 6, ``target=tensorrt``, explicit quantization): every node static; weights
8-bit; activations s8, symmetric (``scale = max(|lo|, |hi|) / 127``), zero point 0 everywhere
(TensorRT rejects others); Q/DQ only on the data inputs of quantized nodes and on both
inputs of every Add reading a quantized node's output (a residual Add: TensorRT then fuses
Conv + Add + ReLU in INT8); never on outputs, so no Q/DQ lands before an op TensorRT runs
in float (Softmax, LayerNorm, ...); biases stay float. ``tensorrt_violations`` checks these
rules on a model.

Smoothing (rule 7, ``smooth=<alpha>`` in (0, 1]; 0 = off): before calibration, per-channel
activation outliers of every quantized MatMul/Gemm whose input comes from a LayerNormalization
(cloned when its output also feeds other nodes) or from a MatMul/Gemm (+ bias Add) move into
its weight: ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``, the producer's output channel ``j``
divided by ``s_j``, the weight's input row ``j`` multiplied by it (exact in FP32; the rules
are ``graphc.smoothquant``'s). Channel maxima come from one streamed run over the same rows
as calibration. ``smoothed_matmuls`` in the stats counts the nodes smoothed.

Accuracy budget (rule 8, ``budget=<max drop>``, needs ``--eval-data`` and ``--metric``):
after smoothing and one calibration of every candidate tensor, quantized models are built
with some compute nodes kept FP32 (activation ranges reused) and scored with the metric on
``budget_rows`` rows (the original model is the reference for cosine / agreement). Groups of
nodes (``budget_group=layer|node``), their sensitivity, the greedy FP32 fallback and the
failure rule are ``graphc.sensitivity``'s; ``drop = metric(FP32 input) - metric(INT8)``
must end ``<= budget``. The stats, details and a report note list each group kept FP32 with
the metric it gave back alone; if no mix that still quantizes something meets the budget the
pass fails with one line.

Embeddings (rule 9, ``target=ort``, ``embeddings=true`` by default; in ``rewrite``, so only
when some compute node is quantized): a float32 2-D constant of at least 4096 values whose
readers are all ``Gather(axis=0)`` (a word / position embedding table; a table also used as a
MatMul weight, as in tied language-model heads, is left float) is stored as s8 with one
symmetric scale per column (``max|column| / 127``), and each Gather's rows are restored by
``Cast(float) -> Mul(column scales)``. The Gather then reads 1/4 of the bytes (MiniLM's file:
56 MiB -> 22 MiB) and only the gathered rows are widened. Not a per-axis DequantizeLinear
after the Gather: onnxruntime runs a last-axis per-axis DequantizeLinear element by element
(measured 122 us vs 44 us for Cast + Mul on 128 MiniLM rows). ``embeddings_quantized`` in the
stats counts the tables.

Refuses to touch: nodes in subgraphs, weights that are not constants, integer or float16
graphs. Opset 13 or newer is required (per-axis Q/DQ).
"""

from __future__ import annotations

import fnmatch
import pathlib
import tempfile
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from graphc import sensitivity, smoothquant
from graphc.calibration import collect, tensor_range
from graphc.cpu_features import cpu_features, default_weight_bits
from graphc.data import synthetic_dataset
from graphc.errors import GraphcError
from graphc.graph import constant_values, is_graph_output, producer, swap_tensor, to_model
from graphc.model_io import write_graph_with_external_weights
from graphc.pass_api import InspectSection, Pass, PassResult
from graphc.verify import Tolerance

CONV_OPS = ("Conv", "ConvTranspose")
COMPUTE_OPS = (*CONV_OPS, "Gemm", "MatMul")
SHARE_INPUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")
ACTIVATION_OPS = ("Relu", "Clip")
PROPAGATE_OPS = (*SHARE_INPUT_OPS, *ACTIVATION_OPS, "Add", "Concat", "AveragePool", "GlobalAveragePool")
DATA_INPUTS = {"Reshape": 1, "Squeeze": 1, "Unsqueeze": 1, "Clip": 1}  # leading data inputs
MIN_OPSET = 13
EXCLUDE_SEPARATOR = "+"
MIN_SCALE = 1e-12
EMBEDDING_MIN_ELEMENTS = 4096


@dataclass(frozen=True)
class Int8Options:
    calib: Literal["minmax", "percentile", "entropy", "mse"] = field(default="minmax", metadata={
        "help": "activation range method (streamed histograms)"})
    target: Literal["ort", "tensorrt"] = field(default="ort", metadata={
        "help": "ort: u8 activations/s8 weights for onnxruntime CPU; tensorrt: s8 symmetric, zero points 0"})
    mode: Literal["auto", "static", "dynamic"] = field(default="auto", metadata={
        "help": "auto: Conv static, MatMul/Gemm dynamic in transformers (graphs with Softmax); "
                "dynamic: MatMul/Gemm dynamic, Conv static"})
    percentile: float = field(default=99.99, metadata={"min": 50.0, "max": 100.0,
                                                        "help": "percentile of |x| kept by calib=percentile"})
    per_channel: bool = field(default=True, metadata={"help": "per-output-channel weight scales"})
    weight_bits: Literal["auto", "7", "8"] = field(default="auto", metadata={
        "help": "auto: 7 on CPUs whose u8 x s8 products saturate (AVX2 without VNNI), else 8"})
    exclude: str = field(default="", metadata={
        "help": "node-name or op-type globs kept in FP32, joined by '+' (e.g. Gemm+/head/*)"})
    samples: int = field(default=256, metadata={"min": 1, "max": 1_000_000,
                                                "help": "calibration rows taken from --data (or synthetic)"})
    calib_batch: int = field(default=16, metadata={"min": 1, "max": 4096,
                                                   "help": "rows per calibration run"})
    smooth: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "help": (
        "SmoothQuant alpha in (0, 1]: migrate activation outliers into MatMul/Gemm weights (0: off)")})
    budget: float = field(default=-1.0, metadata={"min": 0.0, "help": (
        "max metric drop vs FP32 (needs --eval-data and --metric); keeps the most sensitive "
        "layers FP32 until it holds (default: off)")})
    budget_rows: int = field(default=256, metadata={"min": 1, "max": 1_000_000,
                                                    "help": "--eval-data rows scored per budget candidate"})
    budget_group: Literal["layer", "node"] = field(default="layer", metadata={
        "help": "what budget keeps FP32 together: a numbered layer (e.g. /encoder/layer.3/*) or one node"})
    embeddings: bool = field(default=True, metadata={
        "help": "target=ort: store constant tables read only by Gather (embeddings) as s8, per column"})

    def __post_init__(self):
        patterns = self.exclude_patterns()
        if self.exclude and any(not p for p in patterns):
            raise ValueError(f"exclude={self.exclude!r} has an empty pattern (join patterns with "
                             f"'{EXCLUDE_SEPARATOR}')")

    def exclude_patterns(self) -> list[str]:
        return [p.strip() for p in self.exclude.split(EXCLUDE_SEPARATOR)] if self.exclude else []


@dataclass
class QParams:
    """Quantization parameters of one tensor: scale(s), zero point(s), the axis if per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None


class Int8Pass(Pass):
    name = "int8"
    summary = "INT8 QDQ quantization: per-channel s8 weights, calibrated (or dynamic) activations"
    Options = Int8Options
    main_option = "calib"
    in_place = False

    def tolerance(self) -> Tolerance:
        # int8 noise: outputs stay aligned in direction (cosine), not within a relative bound
        return Tolerance(min_cosine=0.99)

    def check(self, ctx) -> None:
        if self.options.budget >= 0 and (ctx.eval_data is None or ctx.metric is None):
            raise GraphcError(f"int8:budget={self.options.budget:g} needs --eval-data and --metric "
                              f"(the accuracy the budget holds); give both or drop budget")

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        opts = self.options
        opset = int(graph.opset or 0)
        if opset < MIN_OPSET:
            raise GraphcError(f"int8 needs opset {MIN_OPSET} or newer (per-axis QuantizeLinear); "
                              f"the model has opset {opset}")
        self.check(ctx)
        if opts.target == "tensorrt":
            weight_bits = 8  # GPUs accumulate u8/s8 products in 32 bits
        else:
            weight_bits = default_weight_bits() if opts.weight_bits == "auto" else int(opts.weight_bits)
        qmax = 127 if weight_bits == 8 else 63
        graph = with_types(graph)
        plan = plan_nodes(graph, opts)
        stats: dict = {"target": opts.target, "weight_bits": weight_bits, "cpu": cpu_features().describe()}
        if not plan.static and not plan.dynamic:
            stats.update(plan_stats(plan))
            return PassResult(changed=False, stats=stats, graph=graph)
        if opts.smooth > 0:
            stats.update(smooth_activations(graph, ctx, plan, opts))
        if opts.budget >= 0:
            return budget_result(graph, ctx, plan, opts, qmax, stats)
        tensors = activation_tensors(graph, plan.static, opts.target)
        params: dict[str, QParams] = {}
        if tensors:
            ranges, calib_stats = calibrate(graph, ctx, tensors, opts)
            stats.update(calib_stats)
            params = activation_params(graph, tensors, ranges, opts.target)
        stats.update(plan_stats(plan))
        stats.update(rewrite(graph, plan, params, opts, qmax))
        return PassResult(changed=True, stats=stats, graph=graph)


def plan_stats(plan: NodePlan) -> dict:
    stats = {"static_nodes": len(plan.static), "dynamic_nodes": len(plan.dynamic),
             "fp32_compute_nodes": len(plan.skipped)}
    if plan.skipped:
        stats["fp32_reasons"] = dict(sorted(plan.skipped.items())[:20])
    return stats


def rewrite(graph: gs.Graph, plan: NodePlan, params: dict[str, QParams], opts: Int8Options, qmax: int) -> dict:
    """Rules 2-6 applied to the planned nodes with the given activation parameters."""
    stats = {}
    names = NameMaker(graph)
    weights = WeightCache(names, qmax, opts.per_channel)
    for node in plan.static:
        quantize_static_node(node, params, weights, opts.target, names)
    graph.nodes.extend(weights.nodes)
    if opts.target == "ort":
        stats["activations_absorbed"] = absorb_activations(graph, params)
    insert_qdq(graph, params, names, plan.static)
    dynamic_inputs: dict[int, list[gs.Variable]] = {}  # one DynamicQuantizeLinear per tensor
    for node in plan.dynamic:
        quantize_dynamic_node(graph, node, weights, names, dynamic_inputs)
    if opts.target == "ort" and opts.embeddings:
        stats["embeddings_quantized"] = quantize_embeddings(graph, names)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    stats["quantized_tensors"] = len(params)
    return stats


def with_types(graph: gs.Graph) -> gs.Graph:
    """``graph`` with the dtype (and shape, where unknown) of every variable from ONNX shape
    inference, set in place. Inference runs on a weight-free skeleton (constants become typed
    graph inputs), so no second copy of the weights is made (BERT-base: 440 MB)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_model(graph))
    except (onnx.shape_inference.InferenceError, ValueError):
        return graph
    infos = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    for name, tensor in graph.tensors().items():
        info = infos.get(name)
        if not isinstance(tensor, gs.Variable) or info is None or not info.type.HasField("tensor_type"):
            continue
        kind = info.type.tensor_type
        if tensor.dtype is None and kind.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        if tensor.shape is None and kind.HasField("shape"):
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim]
    return graph


def weightless_model(graph: gs.Graph) -> onnx.ModelProto:
    """Nodes, inputs and outputs of ``graph`` with every constant a typed graph input (no
    values): enough for ONNX shape inference, a few KB instead of the weights."""
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    inputs += [onnx.helper.make_tensor_value_info(t.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                                  list(t.shape)) for t in constants]
    outputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs]
    body = onnx.helper.make_graph([OnnxExporter.export_node(n) for n in graph.nodes], graph.name or "graph",
                                  inputs, outputs)
    opsets = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
    return onnx.helper.make_model(body, opset_imports=opsets)


# ------------------------------------------------------------------------- node selection
@dataclass
class NodePlan:
    static: list[gs.Node]
    dynamic: list[gs.Node]
    skipped: dict[str, str]  # node name -> why it stays FP32


def _float32(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def refusal(node: gs.Node) -> str | None:
    """Why a compute node cannot be quantized (None: it can)."""
    if len(node.inputs) < 2:
        return "no weight input"
    weight = constant_values(node.inputs[1])
    if weight is None:
        return "weight is not a constant"
    weight = np.asarray(weight)
    if weight.dtype != np.float32:
        return f"weight dtype {weight.dtype}"
    if isinstance(node.inputs[0], gs.Constant) or not _float32(node.inputs[0]):
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


def plan_nodes(graph: gs.Graph, opts: Int8Options, keep: frozenset[str] = frozenset()) -> NodePlan:
    """Rule 1: which compute nodes are quantized, and how (labels in ``keep``: FP32, rule 8)."""
    patterns = opts.exclude_patterns()
    matched = {p: False for p in patterns}
    transformer = any(n.op == "Softmax" for n in graph.nodes)
    plan = NodePlan([], [], {})
    for node in graph.nodes:
        if node.op not in COMPUTE_OPS:
            continue
        label = node_label(node)
        hits = [p for p in patterns if fnmatch.fnmatchcase(node.name or "", p) or fnmatch.fnmatchcase(node.op, p)]
        for p in hits:
            matched[p] = True
        if hits:
            plan.skipped[label] = f"excluded by {hits[0]!r}"
            continue
        why = refusal(node) or ("kept FP32 by budget" if label in keep else None)
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


# ------------------------------------------------------------------ activation tensors
def _data_inputs(node: gs.Node) -> list[gs.Tensor]:
    inputs = [t for t in node.inputs if t.name]
    return inputs[:DATA_INPUTS[node.op]] if node.op in DATA_INPUTS else inputs


def activation_tensors(graph: gs.Graph, static: list[gs.Node], target: str = "ort") -> dict[str, gs.Variable]:
    """Rule 3 (ort) / rule 6 (tensorrt): the float activations that get a Q/DQ pair."""
    chosen: dict[str, gs.Variable] = {}

    def add(tensor: gs.Tensor) -> bool:
        if (isinstance(tensor, gs.Variable) and _float32(tensor) and not is_graph_output(graph, tensor)
                and tensor.name not in chosen):
            chosen[tensor.name] = tensor
            return True
        return False

    for node in static:
        add(node.inputs[0])
        if node.op in CONV_OPS and target == "ort":
            add(node.outputs[0])
    if target == "tensorrt":
        static_ids = {id(n) for n in static}
        for node in graph.nodes:
            if node.op == "Add" and any(id(producer(t)) in static_ids for t in node.inputs if producer(t)):
                for tensor in node.inputs:
                    add(tensor)
        return chosen
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.op not in PROPAGATE_OPS or not node.outputs:
                continue
            data = _data_inputs(node)
            if not data or any(isinstance(t, gs.Constant) or t.name not in chosen for t in data):
                continue
            changed |= add(node.outputs[0])
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
    not used (their group's range comes from the Relu/Clip output)."""
    groups = _Groups(tensors)
    pre_activation: set[str] = set()
    for node in graph.nodes:
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
    dequantized value); its readers read the pre-activation DQ. Returns how many."""
    absorbed = 0
    for node in graph.nodes:
        if node.op not in ACTIVATION_OPS or not node.outputs:
            continue
        source, result = node.inputs[0], node.outputs[0]
        qp = params.get(source.name)
        if qp is None or params.get(result.name) is not qp or len(source.outputs) != 1:
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


def calibration_data(ctx, opts: Int8Options):
    """(rows to calibrate on, how to name them): ``--data``, else synthetic inputs."""
    if ctx.data is not None:
        return ctx.data, "--data"
    return (synthetic_dataset(ctx.original, batches=opts.samples, shapes=ctx.shapes, seed=0),
            "synthetic inputs (no --data)")


def calibrate(graph: gs.Graph, ctx, tensors: dict[str, gs.Variable], opts: Int8Options):
    """Ranges of ``tensors`` from ``--data`` (or synthetic inputs), and report statistics."""
    data, source = calibration_data(ctx, opts)
    with tempfile.TemporaryDirectory(prefix="graphc-calib-") as tmp:
        # written tensor by tensor, no proto of the weights: onnxruntime reads the file
        path = write_graph_with_external_weights(graph, ctx.original, pathlib.Path(tmp))
        result = collect(path, list(tensors), data, opts.samples, opts.calib_batch, ctx.threads)
    ranges = {name: tensor_range(state, opts.calib, opts.percentile, symmetric=opts.target == "tensorrt")
              for name, state in result.states.items()}
    stats = {"calibration": f"{opts.calib} on {result.samples} rows of {source}",
             "calibration_seconds": round(result.seconds, 3),
             "calibration_state_bytes": result.state_bytes()}
    return ranges, stats


def smooth_activations(graph: gs.Graph, ctx, plan: NodePlan, opts: Int8Options) -> dict:
    """Rule 7: SmoothQuant on the planned MatMul/Gemm nodes, in place; statistics."""
    sites = smoothquant.find_sites(graph, [n for n in [*plan.static, *plan.dynamic] if n.op in ("MatMul", "Gemm")])
    if not sites:
        return {"smoothed_matmuls": 0}
    data, _ = calibration_data(ctx, opts)
    with tempfile.TemporaryDirectory(prefix="graphc-calib-") as tmp:
        path = write_graph_with_external_weights(graph, ctx.original, pathlib.Path(tmp))
        result = collect(path, [], data, opts.samples, opts.calib_batch, ctx.threads,
                         channel_names=[site.tensor.name for site in sites])
    return smoothquant.smooth(graph, sites, result.channel_max, opts.smooth)


def budget_result(graph: gs.Graph, ctx, plan: NodePlan, opts: Int8Options, qmax: int, stats: dict) -> PassResult:
    """Rule 8: the quantized graph with the fewest sensitive groups FP32 that meets the budget."""
    base = to_model(graph, ctx.original)  # FP32 (after smoothing): every candidate starts from it
    tensors = activation_tensors(graph, plan.static, opts.target)
    ranges: dict[str, tuple[float, float]] = {}
    if tensors:
        ranges, calib_stats = calibrate(graph, ctx, tensors, opts)
        stats.update(calib_stats)
    built: dict[frozenset[str], tuple[gs.Graph, NodePlan, dict]] = {}

    def build(keep: frozenset[str]) -> onnx.ModelProto:
        candidate = with_types(gs.import_onnx(base))
        candidate_plan = plan_nodes(candidate, opts, keep)
        chosen = activation_tensors(candidate, candidate_plan.static, opts.target)
        missing = [name for name in chosen if name not in ranges]
        if missing:  # never expected: fewer quantized nodes quantize a subset of the tensors
            ranges.update(calibrate(candidate, ctx, {n: chosen[n] for n in missing}, opts)[0])
        params = activation_params(candidate, chosen, {n: ranges[n] for n in chosen}, opts.target)
        rewrite_stats = rewrite(candidate, candidate_plan, params, opts, qmax)
        built.clear()  # keep only the latest: the search returns the last model it built or scored
        built[keep] = (candidate, candidate_plan, rewrite_stats)
        return to_model(candidate, ctx.original)

    planned = {id(n) for n in [*plan.static, *plan.dynamic]}
    labels = [node_label(n) for n in graph.nodes if id(n) in planned]
    groups = sensitivity.make_groups(labels, opts.budget_group)
    rows = ctx.eval_data.take(opts.budget_rows)
    score = sensitivity.Evaluator(rows, ctx.metric, ctx.original, ctx.threads)
    what = f"int8:budget={opts.budget:g} ({ctx.metric} on {len(rows)} rows of --eval-data)"
    result = sensitivity.search(groups, build, score, base, opts.budget, what)
    keep = frozenset(label for g in result.kept for label in groups[g])
    if keep not in built:
        build(keep)
    final_graph, final_plan, rewrite_stats = built[keep]
    stats.update(plan_stats(final_plan))
    stats.update(rewrite_stats)
    drop = result.fp32 - result.final
    stats.update({"budget": opts.budget, "budget_metric": f"{ctx.metric} on {len(rows)} rows",
                  "metric_fp32": round(result.fp32, 6), "metric_int8_all": round(result.all_int8, 6),
                  "metric_int8": round(result.final, 6), "budget_fp32_groups": len(result.kept),
                  "budget_fp32_nodes": len(keep), "budget_evaluations": result.evaluations})
    kept = [{"group": g, "nodes": groups[g], "gain": result.sensitivity[g]} for g in result.kept]
    details = {"budget": {"kept_fp32": kept, "sensitivity": result.sensitivity, "groups": len(groups)}}
    listed = ", ".join(f"{k['group']} (alone FP32: {k['gain']:+.6g})" for k in kept) or "nothing"
    ctx.report.note(f"int8 budget {opts.budget:g} on {ctx.metric} ({len(rows)} rows): FP32 {result.fp32:.6g}, "
                    f"all INT8 {result.all_int8:.6g}, final {result.final:.6g} (drop {drop:.6g}); "
                    f"kept FP32: {listed}")
    return PassResult(changed=True, stats=stats, graph=final_graph, details=details)


# -------------------------------------------------------------------- embeddings (rule 9)
def quantize_embeddings(graph: gs.Graph, names: NameMaker) -> int:
    """Rule 9: every float32 2-D constant table of at least ``EMBEDDING_MIN_ELEMENTS`` values
    whose readers are all ``Gather(axis=0)`` is stored as s8 with one symmetric scale per
    column (``max|column| / 127``, an all-zero column gets 1); each Gather reads the s8 table
    and ``Cast(float) -> Mul(column scales)`` restores the gathered rows. Returns how many."""
    done = 0
    for tensor in list(graph.tensors().values()):
        if not isinstance(tensor, gs.Constant) or not tensor.outputs:
            continue
        readers = list(tensor.outputs)
        if any(r.op != "Gather" or int(r.attrs.get("axis", 0)) != 0 or r.inputs[0] is not tensor for r in readers):
            continue
        table = np.asarray(tensor.values)
        if table.dtype != np.float32 or table.ndim != 2 or table.size < EMBEDDING_MIN_ELEMENTS:
            continue
        q, scale = quantize_weight(table, 1, 127)
        const = gs.Constant(names(f"{tensor.name}_quantized"), q)
        scale_const = gs.Constant(names(f"{tensor.name}_scale"), scale)
        for gather in readers:
            rows = gather.outputs[0]
            gathered = gs.Variable(names(f"{rows.name}_quantized"), dtype=np.int8)
            widened = gs.Variable(names(f"{rows.name}_int8_float"), dtype=np.float32)
            gather.inputs[0] = const  # item assignment keeps graphsurgeon's links
            gather.outputs[0] = gathered
            base = gather.name or rows.name
            graph.nodes.append(gs.Node("Cast", names(f"{base}_cast"), {"to": onnx.TensorProto.FLOAT},
                                       [gathered], [widened]))
            graph.nodes.append(gs.Node("Mul", names(f"{base}_scale"), {}, [widened, scale_const], [rows]))
        done += 1
    return done


# --------------------------------------------------------------------------- rewriting
class NameMaker:
    """Unique tensor/node names for inserted nodes."""

    def __init__(self, graph: gs.Graph):
        self.taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def weight_axis(node: gs.Node, weight: np.ndarray) -> int | None:
    """The output-channel axis of a compute node's weight (None: per tensor only)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1 if int(node.attrs.get("group", 1)) == 1 else None
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return weight.ndim - 1  # MatMul [K, N]


def quantize_weight(weight: np.ndarray, axis: int | None, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2: symmetric s8 weight and its scale (per ``axis``, or one scale)."""
    w = np.asarray(weight, dtype=np.float64)
    if axis is None:
        peak = np.array(np.abs(w).max() if w.size else 0.0)
    else:
        peak = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = np.where(peak > 0, peak / qmax, 1.0)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale.astype(np.float32)


class WeightCache:
    """Quantized weights, one per (weight tensor, axis), read through a DequantizeLinear."""

    def __init__(self, names: NameMaker, qmax: int, per_channel: bool):
        self.names, self.qmax, self.per_channel = names, qmax, per_channel
        self.cache: dict[tuple[int, int | None], tuple[gs.Constant, np.ndarray, int | None]] = {}
        self.nodes: list[gs.Node] = []  # DequantizeLinear nodes to add to the graph

    def quantized(self, node: gs.Node) -> tuple[gs.Constant, np.ndarray, int | None]:
        """(int8 weight constant, scales, axis) for ``node``'s weight."""
        tensor = node.inputs[1]
        weight = np.asarray(constant_values(tensor))
        axis = weight_axis(node, weight) if self.per_channel else None
        key = (id(tensor), axis)
        if key not in self.cache:
            q, scale = quantize_weight(weight, axis, self.qmax)
            const = gs.Constant(self.names(f"{tensor.name}_quantized"), q)
            self.cache[key] = (const, scale, axis)
        return self.cache[key]

    def dequantized(self, node: gs.Node) -> tuple[gs.Variable, np.ndarray]:
        """A DQ node's output reading the int8 weight (for static nodes) and the scales."""
        const, scale, axis = self.quantized(node)
        out = gs.Variable(self.names(f"{node.inputs[1].name}_dequantized"), dtype=np.float32)
        zero = np.zeros_like(scale, dtype=np.int8)
        attrs = {"axis": axis} if axis is not None else {}
        dq = gs.Node("DequantizeLinear", self.names(f"{node.name or node.op}_weight_dq"), attrs,
                     [const, gs.Constant(self.names(f"{const.name}_scale"), scale),
                      gs.Constant(self.names(f"{const.name}_zero_point"), zero)], [out])
        self.nodes.append(dq)
        return out, scale


def quantize_static_node(node: gs.Node, params: dict[str, QParams], weights: WeightCache, target: str,
                         names: NameMaker) -> None:
    """Rules 2 and 4 for one static node: weight through DQ, bias int32 through DQ (ort)."""
    dq_weight, w_scale = weights.dequantized(node)
    swap_tensor(node.inputs, node.inputs[1], dq_weight)
    bias_index = 2
    x_params = params.get(node.inputs[0].name)
    if (target == "ort" and x_params is not None and len(node.inputs) > bias_index
            and node.inputs[bias_index].name and node.op in ("Conv", "ConvTranspose", "Gemm")):
        _quantize_bias(node, float(x_params.scale), w_scale, names, weights.nodes)


def _quantize_bias(node: gs.Node, x_scale: float, w_scale: np.ndarray, names: NameMaker, pending) -> None:
    bias = constant_values(node.inputs[2])
    if bias is None:
        return
    bias = np.asarray(bias, dtype=np.float64)
    channels = w_scale.size
    if node.op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if bias.size not in (1, channels) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
            return  # a per-row bias: keep it float
        bias = np.broadcast_to(bias.reshape(-1), (channels,)) * beta if channels > 1 else bias.reshape(-1) * beta
    if bias.ndim != 1:
        return
    if w_scale.size == 1 and bias.size > 1:
        scale = np.full(bias.size, float(w_scale) * x_scale)
    else:
        scale = w_scale.astype(np.float64) * x_scale
    limit = 2**31 - 1
    q = np.clip(np.round(bias / scale), -limit, limit).astype(np.int32)
    out = gs.Variable(names(f"{node.inputs[2].name}_dequantized"), dtype=np.float32)
    dq = gs.Node("DequantizeLinear", names(f"{node.name or node.op}_bias_dq"), {"axis": 0},
                 [gs.Constant(names(f"{node.inputs[2].name}_quantized"), q),
                  gs.Constant(names(f"{node.inputs[2].name}_scale"), scale.astype(np.float32)),
                  gs.Constant(names(f"{node.inputs[2].name}_zero_point"), np.zeros(q.size, dtype=np.int32))],
                 [out])
    pending.append(dq)
    swap_tensor(node.inputs, node.inputs[2], out)
    if node.op == "Gemm":
        node.attrs["beta"] = 1.0


def insert_qdq(graph: gs.Graph, params: dict[str, QParams], names: NameMaker, static: list[gs.Node]) -> None:
    """Q -> DQ after every quantized activation. Its readers read the DQ output when its
    producer runs quantized (it must end in Q for onnxruntime to fuse it); otherwise only the
    quantized readers do and the others keep the exact float tensor (a transformer's
    residual stream stays FP32)."""
    tensors = graph.tensors()
    quantized_nodes = {id(n) for n in static}
    for name in params:
        node = producer(tensors[name])
        if node is not None and node.op in PROPAGATE_OPS:
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
            if everyone or id(consumer) in quantized_nodes:
                swap_tensor(consumer.inputs, tensor, restored)


def quantize_dynamic_node(graph: gs.Graph, node: gs.Node, weights: WeightCache, names: NameMaker,
                          shared: dict[int, list[gs.Variable]]) -> None:
    """Rule 5: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (-> Add for a Gemm bias)."""
    const, w_scale, axis = weights.quantized(node)
    x, y = node.inputs[0], node.outputs[0]
    base = node.name or node.op
    weight = const
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):  # MatMulInteger wants [K, N]
        weight = gs.Constant(names(f"{const.name}_t"), np.ascontiguousarray(const.values.T))
    new_nodes = []
    if id(x) not in shared:
        shared[id(x)] = [gs.Variable(names(f"{x.name}_dyn_q"), dtype=np.uint8),
                         gs.Variable(names(f"{x.name}_dyn_scale"), dtype=np.float32),
                         gs.Variable(names(f"{x.name}_dyn_zero_point"), dtype=np.uint8)]
        new_nodes.append(gs.Node("DynamicQuantizeLinear", names(f"{x.name}_dyn_quant"), {}, [x], shared[id(x)]))
    x_q, x_scale, x_zero = shared[id(x)]
    acc = gs.Variable(names(f"{base}_int32"), dtype=np.int32)
    acc_f = gs.Variable(names(f"{base}_int32_float"), dtype=np.float32)
    scales = gs.Variable(names(f"{base}_scales"), dtype=np.float32)
    factor = w_scale.astype(np.float64)
    if node.op == "Gemm":
        factor = factor * float(node.attrs.get("alpha", 1.0))
    new_nodes += [
        gs.Node("MatMulInteger", names(f"{base}_matmul_integer"), {}, [x_q, weight, x_zero], [acc]),
        gs.Node("Cast", names(f"{base}_cast"), {"to": 1}, [acc], [acc_f]),
        gs.Node("Mul", names(f"{base}_scale_product"), {},
                [x_scale, gs.Constant(names(f"{base}_weight_scale"), factor.astype(np.float32))], [scales]),
    ]
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    node.outputs.clear()
    node.inputs.clear()
    if bias is None:
        new_nodes.append(gs.Node("Mul", names(f"{base}_rescale"), {}, [acc_f, scales], [y]))
    else:
        scaled = gs.Variable(names(f"{base}_rescaled"), dtype=np.float32)
        beta = float(node.attrs.get("beta", 1.0))
        if beta != 1.0:
            values = constant_values(bias)
            if values is None:
                c = gs.Variable(names(f"{base}_beta_c"), dtype=np.float32)
                new_nodes.append(gs.Node("Mul", names(f"{base}_beta"), {},
                                         [bias, gs.Constant(names(f"{base}_beta_value"),
                                                            np.array(beta, dtype=np.float32))], [c]))
                bias = c
            else:
                bias = gs.Constant(names(f"{base}_bias_beta"), (np.asarray(values) * beta).astype(np.float32))
        new_nodes.append(gs.Node("Mul", names(f"{base}_rescale"), {}, [acc_f, scales], [scaled]))
        new_nodes.append(gs.Node("Add", names(f"{base}_bias"), {}, [scaled, bias], [y]))
    graph.nodes.extend(new_nodes)


# ----------------------------------------------------------------- TensorRT structure
TENSORRT_INT8_CONSUMERS = {*COMPUTE_OPS, "Add"}


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
        return node is not None and node.op_type in COMPUTE_OPS and len(node.input) > 1 and from_dq(node.input[1])

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
        if node.op_type in COMPUTE_OPS and len(node.input) > 1 and from_dq(node.input[1]):
            if not from_dq(node.input[0]):
                problems.append(f"{label}: weight quantized but data input {node.input[0]!r} is not")
            if len(node.input) > 2 and node.input[2] and from_dq(node.input[2]):
                problems.append(f"{label}: bias is dequantized int32; TensorRT wants it float")
        if node.op_type == "Add":
            fed = [name for name in node.input if quantized_compute(origin(name))]
            if fed and not all(from_dq(name) or name in inits for name in node.input):
                problems.append(f"{label}: residual Add reads a quantized node's output without Q/DQ on both inputs")
    return problems


# --------------------------------------------------------------- graphc inspect --quant
INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
               "ConvInteger", "MatMulInteger"}


def quantization_summary(model) -> list[dict]:
    """Every compute node of a model and how it runs: ``static`` (data and weight through
    DequantizeLinear), ``weight-only``, ``dynamic`` (MatMulInteger/ConvInteger fed by
    DynamicQuantizeLinear), ``integer`` (an already fused integer op) or ``fp32``, with the
    weight's bit width (7 when its int8 values stay within +-64) and the activation type."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def dq_source(name):
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def bits(name):
        if name not in inits:
            return None
        values = onnx.numpy_helper.to_array(inits[name])
        if values.dtype != np.int8:
            return None
        return 7 if values.size and np.abs(values.astype(np.int16)).max() <= 64 else 8

    rows = []
    for node in model.graph.node:
        if node.op_type not in (*COMPUTE_OPS, *INTEGER_OPS):
            continue
        row = {"node": node.name or node.output[0], "op": node.op_type, "state": "fp32", "weight_bits": None,
               "activation": None}
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            data = producers.get(node.input[0])
            row["state"] = "dynamic" if data is not None and data.op_type == "DynamicQuantizeLinear" else "integer"
            row["weight_bits"] = bits(node.input[1])
            row["activation"] = "uint8"
        elif node.op_type in INTEGER_OPS:
            row["state"] = "integer"
        elif len(node.input) > 1:
            weight, data = dq_source(node.input[1]), dq_source(node.input[0])
            if weight is not None:
                row["weight_bits"] = bits(weight.input[0])
                row["state"] = "static" if data is not None else "weight-only"
                if data is not None and len(data.input) > 2 and data.input[2] in inits:
                    row["activation"] = str(onnx.numpy_helper.to_array(inits[data.input[2]]).dtype)
            elif node.input[1] not in inits:
                row["reason"] = "weight is an activation"
        rows.append(row)
    return rows


def quantization_text(rows: list[dict]) -> str:
    from collections import Counter

    from graphc.report import markdown_table

    counts = Counter(r["state"] for r in rows)
    head = "quantization: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) if rows else \
        "quantization: no compute nodes"
    table = [["node", "op", "state", "weight bits", "activation"]]
    table += [[r["node"], r["op"], r["state"] + (f" ({r['reason']})" if r.get("reason") else ""),
               str(r["weight_bits"] or ""), r["activation"] or ""] for r in rows]
    return head + ("\n" + markdown_table(table) if rows else "")


Int8Pass.inspect = InspectSection(
    flag="quant", key="quant", collect=lambda model, shapes: quantization_summary(model), render=quantization_text,
    help="list compute nodes as quantized (static/dynamic/integer, weight bits) or FP32")
