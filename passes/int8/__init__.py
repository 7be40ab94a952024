"""``int8``: post-training INT8 quantization by QDQ insertion, with streamed calibration.

Run it after ``fold`` (``--passes fold,int8``): a BatchNormalization left after a Conv stays
in float between the Conv's Q/DQ pair.

``run`` plans the compute nodes (rule 1), smooths their inputs (rule 7, ``smooth``),
calibrates the static activations once, then rewrites the graph (rules 2-6, 9, 10), profiles
the result against FP32 and rebuilds it with the layers measured slower kept FP32 (rule 11);
with ``budget`` it searches which layers stay FP32 instead (rule 8). The rules, each in the module
that applies it:

1. which nodes, static or dynamic (``mode``, ``exclude``): ``plan``
2. weights, per channel, s8, 7-bit on saturating CPUs (``weight_bits``): ``weights``
3. static activations: which tensors, shared parameters, Q/DQ placement: ``activations``
   (ranges: ``calibration``, ``calib``, ``samples``)
4. int32 biases of static Conv/Gemm (``target=ort``): ``weights``
5. dynamic nodes (DynamicQuantizeLinear -> MatMulInteger): ``dynamic``
6. TensorRT explicit quantization (``target=tensorrt``) and ``tensorrt_violations``:
   ``tensorrt``
7. SmoothQuant smoothing (``smooth``): ``smoothing``
8. accuracy budget (``budget``, ``budget_rows``, ``budget_group``): ``budget``
9. s8 embedding tables read by Gather (``embeddings``): ``embeddings``
10. activation chains through onnxruntime's integer element-wise kernels (target=ort):
    ``activation_chains``
11. layers measured slower in INT8 stay FP32 (``speed_guard``, target=ort): ``speed_guard``

``rewrite`` applies rules 2-6, 9 and 10 to a plan; ``types`` gives the graph's variables their
dtypes (shape inference on a weight-free skeleton); ``inspect`` is ``graphc inspect --quant``.

Refuses to touch: nodes in subgraphs (If/Loop/Scan bodies: their activations cannot be
calibrated, the tensor tap reads top-level tensors only; the report says how many compute
nodes stay FP32 there), weights that are not constants, integer or float16 graphs. A model
that is already quantized keeps its Q/DQ and QOperator nodes as they are: only float compute
nodes left in it are quantized, and the report says how many quantized nodes it kept. Opset 13 or newer is required (per-axis Q/DQ): the pipeline converts an older model
where that is exact (``graphc.opsets``); ``run`` refuses one that reaches it unconverted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import onnx_graphsurgeon as gs

from graphc.cpu_features import cpu_features
from graphc.errors import GraphcError
from graphc.pass_api import InspectSection, Pass, PassResult
from graphc.spec import Globs, normalise_globs
from graphc.passes.int8.activation_chains import chain_tensors
from graphc.passes.int8.activations import QParams, activation_params
from graphc.passes.int8.budget import budget_result
from graphc.passes.int8.calibration import calibrate
from graphc.passes.int8.inspect import quantization_summary, quantization_text
from graphc.passes.int8.plan import left_alone, plan_nodes, plan_stats
from graphc.passes.int8.rewrite import rewrite
from graphc.passes.int8 import speed_guard
from graphc.passes.int8.smoothing import smooth_activations
from graphc.passes.int8.tensorrt import tensorrt_violations
from graphc.graph import infer_shapes, to_model
from graphc.passes.int8.weights import weight_bits, weight_qmax
from graphc.verify import Tolerance

__all__ = ["Int8Options", "Int8Pass", "quantization_summary", "quantization_text", "tensorrt_violations"]

MIN_OPSET = 13


@dataclass(frozen=True)
class Int8Options:
    calib: Literal["minmax", "percentile", "entropy", "mse"] = field(default="minmax", metadata={
        "help": "activation range method (streamed histograms)"})
    target: Literal["ort", "tensorrt"] = field(default="ort", metadata={
        "help": "ort: u8 activations/s8 weights for onnxruntime CPU; tensorrt: s8 symmetric, zero points 0"})
    mode: Literal["auto", "static", "dynamic"] = field(default="auto", metadata={
        "help": "auto: Conv static, MatMul/Gemm dynamic in transformers (graphs with Softmax or fused attention); "
                "dynamic: MatMul/Gemm dynamic, Conv static"})
    percentile: float = field(default=99.99, metadata={"min": 50.0, "max": 100.0,
                                                        "help": "percentile of |x| kept by calib=percentile"})
    per_channel: bool = field(default=True, metadata={"help": "per-output-channel weight scales"})
    weight_bits: Literal["auto", "7", "8"] = field(default="auto", metadata={
        "help": "auto: 7 on CPUs whose u8 x s8 products saturate (AVX2 without VNNI), else 8"})
    exclude: Globs = field(default=Globs(), metadata={
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
    speed_guard: bool = field(default=True, metadata={"help": (
        "target=ort: profile FP32 and INT8 once at batch 1 and keep FP32 the layers measured "
        "slower in INT8 (the report lists them)")})
    embeddings: bool = field(default=True, metadata={
        "help": "target=ort: store constant tables read only by Gather (embeddings) as s8, per column"})

    def __post_init__(self):
        normalise_globs(self)


class Int8Pass(Pass):
    name = "int8"
    summary = "INT8 QDQ quantization: per-channel s8 weights, calibrated (or dynamic) activations"
    Options = Int8Options
    main_option = "calib"
    in_place = False
    min_opset = MIN_OPSET
    inspect = InspectSection(
        flag="quant", key="quant", collect=lambda model, shapes: quantization_summary(model),
        render=quantization_text,
        help="list compute nodes as quantized (static/dynamic/integer, weight bits) or FP32")

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
        bits = weight_bits(opts)
        qmax = weight_qmax(bits)
        graph = infer_shapes(graph)
        plan = plan_nodes(graph, opts)
        stats: dict = {"target": opts.target, "weight_bits": bits, "cpu": cpu_features().describe()}
        _note_left_alone(graph, plan, stats, ctx)
        if not plan.static and not plan.dynamic:
            stats.update(plan_stats(plan))
            return PassResult(changed=False, stats=stats, graph=graph)
        if opts.smooth > 0:
            stats.update(smooth_activations(graph, ctx, plan, opts))
        if opts.budget >= 0:
            return budget_result(graph, ctx, plan, opts, qmax, stats)
        guarded = opts.speed_guard and opts.target == "ort"
        if guarded and (why := speed_guard.skipped(graph, ctx)) is not None:
            stats.update(why)
            guarded = False
        base = to_model(graph, ctx.original) if guarded else None  # FP32, before rule 10 edits it
        tensors = chain_tensors(graph, plan.static, opts.target)
        params: dict[str, QParams] = {}
        ranges: dict[str, tuple[float, float]] = {}
        if tensors:
            ranges, calib_stats = calibrate(graph, ctx, tensors, opts)
            stats.update(calib_stats)
            params = activation_params(graph, tensors, ranges, opts.target)
        compute = speed_guard.compute_layers(plan)
        rewrite_stats = rewrite(graph, plan, params, opts, qmax)
        details: dict = {}
        if guarded:
            chosen = speed_guard.guard(base, graph, compute, ctx, opts, qmax, ranges)
            stats.update(chosen.stats)
            details = chosen.details
            if chosen.graph is not None:
                graph, plan = chosen.graph, chosen.plan
                rewrite_stats = {k: v for k, v in chosen.rewrite_stats.items() if not k.startswith("calibration")}
        stats.update(plan_stats(plan))
        stats.update(rewrite_stats)
        return PassResult(changed=True, stats=stats, graph=graph, details=details)


def _note_left_alone(graph: gs.Graph, plan, stats: dict, ctx) -> None:
    """Report the quantized nodes kept and the subgraph compute nodes left FP32 (``left_alone``)."""
    counts = left_alone(graph)
    floats = len(plan.static) + len(plan.dynamic)
    if counts["prequantized_nodes"]:
        stats["prequantized_nodes_kept"] = counts["prequantized_nodes"]
        ctx.report.note(f"int8: the model is already quantized: {counts['prequantized_nodes']} quantized nodes "
                        f"(Q/DQ, QOperator) kept as they are; {floats} float compute nodes left to quantize")
    if counts["subgraph_compute_nodes"]:
        stats["subgraph_compute_nodes_fp32"] = counts["subgraph_compute_nodes"]
        ctx.report.note(f"int8: {counts['subgraph_compute_nodes']} compute nodes inside If/Loop/Scan bodies left "
                        f"FP32 (their activations cannot be calibrated: the tensor tap reads top-level tensors only)")
