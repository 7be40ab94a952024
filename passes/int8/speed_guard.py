"""Rule 11 (``speed_guard``, on by default for ``target=ort``): layers whose INT8 form is
measured slower stay FP32.

1. Candidate: the graph quantized as planned (rules 1-10). The FP32 graph (before rule 10's
   decompositions) and the candidate are profiled side by side once, at batch 1, on the
   first row of ``--data`` (else a synthetic row), with ``graphc.profiling`` (one session
   each, non-spinning, round-robin runs, median kernel time per executed node, credited back
   to the loaded nodes).
2. Layers (``layer_of``): every planned compute node is a layer; every other node belongs to
   the layer its first input comes from (the activation chain after a Conv, its Q/DQ
   pairs), a node named ``<compute node>_...`` (its weight/bias DQ, its dynamic-quantization
   nodes) to that node's layer, and a node before every layer (input pre-processing, the
   input's Q) to the layer of its first reader. The FP32 graph and the candidate are split
   alike, so a layer's time in each is the sum over its nodes.
3. Decision (``decide``): a layer whose INT8 time exceeds its FP32 time by more than
   ``SLACK_US`` (the profiler counts whole microseconds) stays FP32; the graph is rebuilt
   from the FP32 graph with those compute nodes planned FP32 (activation ranges reused,
   tensors not yet calibrated are calibrated).
4. The stats give the count and the profiled totals, the details and a report note list each
   layer kept FP32 with both times. Off with ``speed_guard=false``; not run for
   ``target=tensorrt`` (the CPU measures nothing about a GPU) nor with ``budget`` (the budget
   search decides which layers stay FP32).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import onnx
import onnx_graphsurgeon as gs

from graphc.graph import infer_shapes, to_model
from graphc.profiling import attribute, profile_models
from graphc.passes.int8.activation_chains import chain_tensors
from graphc.passes.int8.activations import activation_params
from graphc.passes.int8.calibration import calibrate
from graphc.passes.int8.plan import NodePlan, node_label, plan_nodes
from graphc.passes.int8.rewrite import rewrite

if TYPE_CHECKING:
    from graphc.context import Context
    from graphc.passes.int8 import Int8Options

SLACK_US = 1.0
NOTE_LAYERS = 20


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


def decide(fp32: Mapping[str, float], int8: Mapping[str, float]) -> dict[str, str]:
    """Rule 3: label -> reason for every layer whose INT8 time exceeds its FP32 time."""
    return {label: f"kept FP32 by speed_guard: INT8 {int8[label]:.0f} us vs FP32 {fp32.get(label, 0.0):.0f} us"
            for label in int8 if int8[label] > fp32.get(label, 0.0) + SLACK_US}


def build(base: onnx.ModelProto, ctx: Context, opts: Int8Options, qmax: int,
          ranges: dict[str, tuple[float, float]], keep: Mapping[str, str]) -> tuple[gs.Graph, NodePlan, dict]:
    """The quantized graph from the FP32 model ``base`` with the labels in ``keep`` FP32
    (``ranges`` reused, missing ones calibrated and added)."""
    graph = infer_shapes(gs.import_onnx(base))
    plan = plan_nodes(graph, opts, keep)
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


def profile_pair(base: onnx.ModelProto, candidate: onnx.ModelProto, ctx: Context):
    """Rule 1: (FP32 node times, candidate node times), each keyed by node (first output)."""
    feeds = next(ctx.sample_data(1).batches(1))[0]
    fp32, int8 = profile_models([base, candidate], feeds, threads=ctx.threads)
    return attribute(fp32, base), attribute(int8, candidate), (fp32, int8)


def compute_layers(plan: NodePlan) -> dict[str, str]:
    """First output -> label of every planned compute node (taken before the rewrite, which
    replaces dynamic nodes)."""
    return {n.outputs[0].name: node_label(n) for n in [*plan.static, *plan.dynamic]}


def guard(base: onnx.ModelProto, candidate: gs.Graph, compute: Mapping[str, str], ctx: Context
          ) -> tuple[dict[str, str], dict, dict]:
    """Rules 1-3 on a built candidate: (label -> reason kept FP32, stats, details);
    ``compute``: ``compute_layers`` of its plan."""
    candidate_model = to_model(candidate, ctx.original)
    fp32_nodes, int8_nodes, (fp32_profile, int8_profile) = profile_pair(base, candidate_model, ctx)
    fp32 = layer_times(base, fp32_nodes, compute)
    int8 = layer_times(candidate_model, int8_nodes, compute)
    keep = decide(fp32, int8)
    kept = [{"layer": label, "int8_us": round(int8[label], 1), "fp32_us": round(fp32.get(label, 0.0), 1)}
            for label in compute.values() if label in keep]
    stats = {"speed_guard_fp32_layers": len(keep), "speed_guard_layers": len(compute),
             "speed_guard_profile_us": f"FP32 {fp32_profile.total:.0f}, INT8 candidate {int8_profile.total:.0f} "
                                       f"({int8_profile.rounds} runs)"}
    details = {"speed_guard": {"kept_fp32": kept,
                               "layers": {label: {"int8_us": round(int8[label], 1),
                                                  "fp32_us": round(fp32.get(label, 0.0), 1)}
                                          for label in compute.values()}}}
    return keep, stats, details


def note(ctx: Context, keep: Mapping[str, str], details: dict, layers: int) -> None:
    """Rule 4: the report note listing the layers kept FP32 and why."""
    kept = details["speed_guard"]["kept_fp32"]
    listed = ", ".join(f"{k['layer']} (INT8 {k['int8_us']:g} us > FP32 {k['fp32_us']:g} us)"
                       for k in kept[:NOTE_LAYERS])
    more = f" and {len(kept) - NOTE_LAYERS} more" if len(kept) > NOTE_LAYERS else ""
    ctx.report.note(f"int8 speed_guard: {len(keep)} of {layers} layers kept FP32, measured slower in INT8 "
                    f"at batch 1: {listed or 'none'}{more}")
