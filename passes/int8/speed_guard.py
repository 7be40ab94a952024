"""Rule 11 (``speed_guard``, on by default for ``target=ort``): layers whose INT8 form is
measured slower stay FP32, and INT8 never makes the model slower at batch 1.

1. Profile: the FP32 graph (before rule 10's decompositions) and the candidate quantized as
   planned (rules 1-10) are profiled side by side once, at batch 1, on the first row of
   ``--data`` (else a synthetic row), with ``graphc.profiling`` (one non-spinning session
   each, round-robin runs, median kernel time per executed node, credited back to the
   loaded nodes).
2. Layers (``layer_of``): every planned compute node is a layer; every other node belongs to
   the layer its first input comes from (the activation chain after a Conv, its Q/DQ
   pairs), a node named ``<compute node>_...`` (its weight/bias DQ, its dynamic-quantization
   nodes) to that node's layer, and a node before every layer (input pre-processing, the
   input's Q) to the layer of its first reader. Both graphs are split alike; a layer's time
   in each is the sum over its nodes.
3. Decision (``decide``): each layer is INT8 or FP32 so that the sum of the layers' measured
   times plus a boundary cost is least. A boundary is a compute node's data input whose
   producing layer gets the other precision: it costs a Q or DQ and a layout change of that
   tensor, ``2 x elements x`` the per-element time of the candidate's executed
   QuantizeLinear/DequantizeLinear nodes (``boundary_cost``). Start: each layer alone (INT8
   unless it is slower by more than ``SLACK_US``, the profiler's microsecond resolution);
   then layers flip one at a time, in graph order, while a flip lowers the total
   (``SWEEPS`` passes at most).
4. Confirmation: the mix is built when some layers stay FP32 (activation ranges reused,
   tensors not yet calibrated are calibrated); FP32, the all-INT8 candidate and the mix
   are timed side by side without the profiler (``graphc.profiling.time_models_rounds``: median
   wall time per run, what a user sees; the profiler's own per-node cost would favour the
   graph with fewer nodes; up to ``CONFIRM_ROUNDS`` rounds in ``CONFIRM_SECONDS`` per model, so
   a sub-millisecond model gets about a thousand); the fastest is written (FP32: every layer
   stays FP32), but an INT8 form replaces FP32 only when it is faster by more than
   ``CONFIRM_MARGIN`` (3%) of FP32's time and the 95% interval of FP32 / INT8 over the rounds
   (``graphc.speedup.ratio_interval``, a paired bootstrap) lies above 1: a gain within the
   run's noise is a tie. (Corpus hf-efficientnet-ts, 0.2-0.35 ms per run in two modes: its
   confirmation's medians over 200 rounds had all INT8 at 279 us against FP32's 336, and
   ``graphc bench`` then measured that INT8 model at 0.95x of FP32, interval 0.94-0.96x.) Runs of the confirmation on one model move by about that much and more (AMD EPYC Zen 3:
   the corpus MobileNetV3 block's all INT8 took 1.09x FP32's time in one run and 0.99x in the
   next, and ``benchmarks/int8_speed.py`` then measured that INT8 model at 0.94x FP32's speed;
   open-nsfw's mix 0.88-0.95x of FP32's time in three runs, 1.06-1.14x faster in the benchmark):
   a closer win is a tie, and a tie keeps FP32. At 5%, open-nsfw stayed FP32 in two runs of four
   (the benchmark's and one of three by hand).
5. The stats give the layer counts and the measured times; the details and a report note
   list each layer kept FP32 with its times. Off with ``speed_guard=false``; not run for
   ``target=tensorrt`` (the CPU measures nothing about a GPU) nor with ``budget`` (the budget
   search decides which layers stay FP32); skipped, with a note, for a model of more than
   ``MAX_WEIGHT_BYTES`` of weights (profiling holds an FP32 and an INT8 copy beside the graph).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.graph import infer_shapes, skeleton, to_model
from graphc.ops import QDQ_OPS
from graphc.speedup import ratio_interval
from graphc.profiling import Profile, attribute, profile_models, time_models_rounds
from graphc.passes.int8.activation_chains import chain_tensors
from graphc.passes.int8.activations import activation_params
from graphc.passes.int8.calibration import calibrate
from graphc.passes.int8.plan import NodePlan, node_label, plan_nodes
from graphc.passes.int8.rewrite import rewrite

if TYPE_CHECKING:
    from graphc.context import Context
    from graphc.passes.int8 import Int8Options

SLACK_US = 1.0
SWEEPS = 10
DEFAULT_ELEMENT_US = 1e-3  # a boundary's cost per element when no Q/DQ was executed
NOTE_LAYERS = 20
MAX_WEIGHT_BYTES = 512 * 2**20
CONFIRM_SECONDS = 0.5  # per model
CONFIRM_ROUNDS = (5, 2000)
CONFIRM_MARGIN = 0.03  # of FP32's time: an INT8 form must beat FP32 by more to be written


def weight_bytes(graph: gs.Graph) -> int:
    """Bytes of the graph's constant tensors (from their shapes and dtypes; nothing loaded)."""
    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.shape is not None and tensor.dtype is not None:
            total += int(np.prod(tensor.shape, dtype=np.int64)) * np.dtype(tensor.dtype).itemsize
    return total


def skipped(graph: gs.Graph, ctx: Context) -> dict | None:
    """Stats saying why rule 11 does not run on ``graph`` (None: it runs)."""
    size = weight_bytes(graph)
    if size <= MAX_WEIGHT_BYTES:
        return None
    why = f"skipped: {size / 2**20:.0f} MiB of weights > {MAX_WEIGHT_BYTES // 2**20} MiB"
    ctx.report.note(f"int8 speed_guard {why} (profiling would hold FP32 and INT8 copies); layers not measured")
    return {"speed_guard": why}


def layer_of(model: onnx.ModelProto, compute: Mapping[str, str]) -> dict[str, str]:
    """Rule 2: node key (first output) -> layer label; ``compute`` maps each planned
    compute node's first output to its label. Nodes are taken in the model's (topological)
    order."""
    nodes = [n for n in model.graph.node if n.output]
    producer = {out: n.output[0] for n in nodes for out in n.output}
    prefixes = {f"{label}_": label for label in compute.values()}
    layer: dict[str, str] = {}
    for node in nodes:
        key = node.output[0]
        if key in compute:
            layer[key] = compute[key]
            continue
        named = next((label for prefix, label in prefixes.items() if node.name.startswith(prefix)), None)
        if named is not None:
            layer[key] = named
            continue
        source = next((producer[i] for i in node.input if i in producer and producer[i] in layer), None)
        if source is not None:
            layer[key] = layer[source]
    readers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node.output[0])
    for node in reversed(nodes):
        key = node.output[0]
        if key not in layer:
            reader = next((r for o in node.output for r in readers.get(o, ()) if r in layer), None)
            if reader is not None:
                layer[key] = layer[reader]
    return layer


def layer_times(model: onnx.ModelProto, node_times: Mapping[str | None, float],
                compute: Mapping[str, str]) -> dict[str, float]:
    """Microseconds per layer label (node times summed by ``layer_of``)."""
    layer = layer_of(model, compute)
    times = {label: 0.0 for label in compute.values()}
    for key, us in node_times.items():
        label = layer.get(key) if key is not None else None
        if label is not None:
            times[label] += us
    return times


def layer_edges(base: onnx.ModelProto, compute: Mapping[str, str], shapes: Mapping[str, Sequence[int]]
                ) -> list[tuple[str, str, int]]:
    """(producing layer, compute layer, elements) for every compute node's data input made
    by another layer (rule 3's boundaries), element counts from shape inference at the
    profiled input ``shapes``."""
    layer = layer_of(base, compute)
    producer = {out: n.output[0] for n in base.graph.node if n.output for out in n.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(base, shapes))
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = None
    sizes: dict[str, int] = {}
    for info in (inferred.graph.value_info if inferred is not None else []):
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            sizes[info.name] = int(np.prod([d.dim_value for d in dims]))
    edges = []
    for node in base.graph.node:
        if not node.output or node.output[0] not in compute or not node.input:
            continue
        source = producer.get(node.input[0])
        if source is not None and layer.get(source) not in (None, compute[node.output[0]]):
            edges.append((layer[source], compute[node.output[0]], sizes.get(node.input[0], 0)))
    return edges


def boundary_cost(profile: Profile) -> float:
    """Rule 3: microseconds per element of one boundary (a Q or DQ plus a layout change):
    twice the candidate's executed Q/DQ time over the elements they read (large tensors
    weigh most; a small one's time is mostly fixed overhead)."""
    named = [name for name, node in profile.executed.items()
             if node.op in QDQ_OPS and name in profile.times and (profile.elements or {}).get(name)]
    elements = sum(profile.elements[name] for name in named)
    if not elements:
        return DEFAULT_ELEMENT_US
    return 2.0 * sum(profile.times[name] for name in named) / elements


def decide(fp32: Mapping[str, float], int8: Mapping[str, float], edges: Sequence[tuple[str, str, int]] = (),
           element_us: float = 0.0) -> dict[str, str]:
    """Rule 3: label -> reason for every layer kept FP32."""
    labels = list(int8)
    fp32_us = {label: fp32.get(label, 0.0) for label in labels}
    int8_us = {label: int8[label] - SLACK_US for label in labels}  # within the slack, INT8 wins
    quantized = {label: int8_us[label] <= fp32_us[label] for label in labels}
    neighbours: dict[str, list[tuple[str, float]]] = {label: [] for label in labels}
    for u, v, elements in edges:
        if u in neighbours and v in neighbours:
            neighbours[u].append((v, elements * element_us))
            neighbours[v].append((u, elements * element_us))

    def cost(label: str, as_int8: bool) -> float:
        own = int8_us[label] if as_int8 else fp32_us[label]
        return own + sum(us for other, us in neighbours[label] if quantized[other] != as_int8)

    for _ in range(SWEEPS):
        flipped = False
        for label in labels:
            if cost(label, not quantized[label]) < cost(label, quantized[label]) - 1e-9:
                quantized[label] = not quantized[label]
                flipped = True
        if not flipped:
            break
    return {label: f"kept FP32 by speed_guard: INT8 {int8[label]:.0f} us vs FP32 {fp32_us[label]:.0f} us"
            for label in labels if not quantized[label]}


def build(base: onnx.ModelProto, ctx: Context, opts: Int8Options, qmax: int,
          ranges: dict[str, tuple[float, float]], keep: Mapping[str, str],
          compute: Mapping[str, str]) -> tuple[gs.Graph, NodePlan, dict]:
    """The quantized graph from the FP32 model ``base`` with the layers in ``keep`` FP32 (labels
    of the candidate's plan; ``compute``: their first outputs -> label), ``ranges`` reused, missing
    ones calibrated and added. The kept nodes are found by their first output: a node without a
    name is labelled ``op->output`` in the candidate's plan, but profiling ``base`` named it after
    its output (``graphc.profiling`` rule 2, in place), so its label alone matched nothing there
    and the "FP32" and mix builds came out all INT8 (gru-state: "1 of 1 layers kept FP32",
    written INT8)."""
    graph = infer_shapes(gs.import_onnx(base))
    local = {node.outputs[0].name: node_label(node) for node in graph.nodes if node.outputs}
    plan = plan_nodes(graph, opts, {local[output]: keep[label] for output, label in compute.items()
                                    if label in keep and output in local})
    chosen = chain_tensors(graph, plan.static, opts.target)
    missing = {name: tensor for name, tensor in chosen.items() if name not in ranges}
    stats: dict = {}
    if missing:
        found, calib_stats = calibrate(graph, ctx, missing, opts)
        ranges.update(found)
        stats.update(calib_stats)
    params = activation_params(graph, chosen, {n: ranges[n] for n in chosen}, opts.target)
    stats.update(rewrite(graph, plan, params, opts, qmax))
    return graph, plan, stats


def compute_layers(plan: NodePlan) -> dict[str, str]:
    """First output -> label of every planned compute node (taken before the rewrite, which
    replaces dynamic nodes)."""
    return {n.outputs[0].name: node_label(n) for n in [*plan.static, *plan.dynamic]}


@dataclass
class Guarded:
    """What rule 11 chose: the graph to write (None: the candidate), its plan, rewrite stats."""

    graph: gs.Graph | None
    plan: NodePlan | None
    rewrite_stats: dict
    stats: dict
    details: dict


def guard(base: onnx.ModelProto, candidate: gs.Graph, compute: Mapping[str, str], ctx: Context,
          opts: Int8Options, qmax: int, ranges: dict[str, tuple[float, float]]) -> Guarded:
    """Rules 1-5 on a built candidate (``compute``: ``compute_layers`` of its plan)."""
    feeds = next(ctx.sample_data(1).batches(1))[0]
    candidate_model = to_model(candidate, ctx.original)
    fp32_profile, int8_profile = profile_models([base, candidate_model], feeds, threads=ctx.threads)
    fp32 = layer_times(base, attribute(fp32_profile, base), compute)
    int8 = layer_times(candidate_model, attribute(int8_profile, candidate_model), compute)
    edges = layer_edges(base, compute, {name: value.shape for name, value in feeds.items()})
    keep = decide(fp32, int8, edges, boundary_cost(int8_profile))
    stats = {"speed_guard_layers": len(compute),
             "speed_guard_profile_us": f"FP32 {fp32_profile.total:.0f}, all INT8 {int8_profile.total:.0f}"}
    chosen = Guarded(None, None, {}, stats, {})
    models = [base, candidate_model]
    if keep:
        graph, plan, rewrite_stats = build(base, ctx, opts, qmax, ranges, keep, compute)
        models.append(to_model(graph, ctx.original))
    walls = time_models_rounds(models, feeds, threads=ctx.threads, seconds=CONFIRM_SECONDS, rounds=CONFIRM_ROUNDS)
    totals = [float(np.median(w)) for w in walls]
    names = ("FP32", "all INT8", "mix")
    stats["speed_guard_confirm_us"] = ", ".join(f"{what} {us:.0f}" for what, us in zip(names, totals))
    best = 1 + int(np.argmin(totals[1:]))
    low, high = ratio_interval(walls[0], walls[best])
    stats["speed_guard_confirm_interval"] = f"FP32 / {names[best]} {low:.2f}-{high:.2f}x over {len(walls[0])} rounds"
    if totals[best] >= (1.0 - CONFIRM_MARGIN) * totals[0] or low <= 1.0:
        slower = " and ".join(f"{what} {us:.0f} us" for what, us in zip(("all INT8", "mix"), totals[1:]))
        if min(totals[1:]) >= totals[0]:
            how = "slower than"
        elif totals[best] >= (1.0 - CONFIRM_MARGIN) * totals[0]:
            how = f"within {CONFIRM_MARGIN:.0%} of"
        else:
            how = f"faster than, but within the noise of (95% interval of the speed-up {low:.2f}-{high:.2f}x),"
        best = 0
        keep = {label: f"kept FP32 by speed_guard: every INT8 form measured {how} FP32 "
                       f"({slower} vs {totals[0]:.0f} us per run)" for label in compute.values()}
        graph, plan, rewrite_stats = build(base, ctx, opts, qmax, ranges, keep, compute)
    if best == 1:
        keep = {}
    else:
        chosen = Guarded(graph, plan, rewrite_stats, stats, {})
    stats["speed_guard_fp32_layers"] = len(keep)
    chosen.details = {"speed_guard": {
        "kept_fp32": [{"layer": label, "int8_us": round(int8[label], 1), "fp32_us": round(fp32.get(label, 0.0), 1),
                       "reason": keep[label]} for label in compute.values() if label in keep],
        "layers": {label: {"int8_us": round(int8[label], 1), "fp32_us": round(fp32.get(label, 0.0), 1)}
                   for label in compute.values()}}}
    note(ctx, keep, chosen.details, len(compute), stats)
    return chosen


def note(ctx: Context, keep: Mapping[str, str], details: dict, layers: int, stats: dict) -> None:
    """Rule 5: the report note listing the layers kept FP32 and why."""
    kept = details["speed_guard"]["kept_fp32"]
    listed = ", ".join(f"{k['layer']} (INT8 {k['int8_us']:g} us, FP32 {k['fp32_us']:g} us)"
                       for k in kept[:NOTE_LAYERS])
    more = f" and {len(kept) - NOTE_LAYERS} more" if len(kept) > NOTE_LAYERS else ""
    measured = stats["speed_guard_confirm_us"]
    ctx.report.note(f"int8 speed_guard (batch 1, us per run: {measured}): {len(keep)} of {layers} layers kept FP32"
                    f"{': ' + listed + more if kept else ''}")
