"""Measured onnxruntime CPU time of a model's weighted layers, from one profiled session
(``prune:latency=true`` and ``prune:target=latency``, rule 3 of ``prune``).

onnxruntime's profiler reports time per *executed* node, after its graph optimiser has fused
and renamed nodes (a Conv with its Relu and residual Add becomes one fused Conv; the NCHWc
layout transform names the new node after its output tensor with ``_nchwc`` appended, a
Gemm fused with its activation is named ``fused <name>``). No
library maps those events back to the nodes of the graph that was loaded; this module does.

Rules:

1. The model is profiled as it will run: every onnxruntime optimisation on, ``threads``
   intra-op threads, ``warmup + runs`` runs of one batch of feeds in one profiled session
   (by default as many runs as fill half a second, 15 to 300, so that microsecond-scale
   kernels of small models are measured often enough to rank them the same way each time).
   A node's time is the median of its kernel times over the last ``runs`` runs.
2. An executed node is credited to the weighted node (Conv, ConvTranspose, Gemm, MatMul
   with a constant weight) whose name it bears, or whose output it is named after
   (``_nchwc`` suffix and ``fused `` prefix stripped), or whose output reaches it through at most three single-input
   chains of element-wise nodes (activation, bias or residual Add, Mul, BatchNormalization)
   that onnxruntime fuses into it. The first weighted node to claim a tensor keeps it.
3. Weighted nodes that no executed node is credited to are absent from the result.
4. A measurement can be kept in a JSON file (``save_layer_times``) and read back
   (``load_layer_times``), so a pruning run can be repeated exactly or use times measured
   on the deployment machine: ``{"format": "graphc-layer-times/1", "unit": "us",
   "threads": ..., "layers": {output name: microseconds}}``; anything else is refused.
5. ``prune`` profiles the analysed graph at batch 1 (one row of ``--data``, else synthetic
   inputs shaped by ``--shape``), unless ``profile=FILE`` exists: then that file is read,
   and refused when it names none of the graph's weighted layers
   (``weighted_layer_times``).
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time
from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.data import synthetic_feeds
from graphc.errors import GraphcError
from graphc.ops import WEIGHTED_OPS
from graphc.model_io import write_text_atomically
from graphc.runtime import open_session

FUSED_FOLLOWERS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "Tanh", "Add", "Mul",
                   "BatchNormalization", "Gelu", "FastGelu", "Erf", "Div"}
FUSION_DEPTH = 3
PROFILE_SECONDS = 0.5  # small models get more runs: the profiler counts whole microseconds
PROFILE_RUNS = (15, 300)
FILE_FORMAT = "graphc-layer-times/1"


def _aliases(model: onnx.ModelProto) -> dict[str, str]:
    """Executed-node names onnxruntime may give a weighted node, mapped to its output name."""
    initializers = {t.name for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    aliases: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        key = node.output[0]
        for name in (node.name, key):
            if name:
                aliases.setdefault(name, key)
        frontier = [key]
        for _ in range(FUSION_DEPTH):
            reached = []
            for tensor in frontier:
                if len(consumers[tensor]) != 1:
                    continue
                follower = consumers[tensor][0]
                if follower.op_type in FUSED_FOLLOWERS and follower.output:
                    for name in (follower.output[0], follower.name):
                        if name:
                            aliases.setdefault(name, key)
                    reached.append(follower.output[0])
            frontier = reached
    return aliases


def weighted_node_times(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int | None = None,
                        warmup: int = 3, runs: int | None = None) -> dict[str, float]:
    """Median kernel time in microseconds of each weighted node, keyed by its output name.
    ``runs=None``: as many runs as fill ``PROFILE_SECONDS`` (``PROFILE_RUNS`` bounds them)."""
    aliases = _aliases(model)
    with tempfile.TemporaryDirectory(prefix="graphc-profile-") as tmp:
        session = open_session(model, threads, what="the model to profile", profile_prefix=str(pathlib.Path(tmp) / "p"))
        for _ in range(warmup - 1):
            session.run(None, feeds)
        start = time.perf_counter()
        session.run(None, feeds)  # the last warm-up run sizes the profile
        if runs is None:
            runs = int(np.clip(PROFILE_SECONDS / max(time.perf_counter() - start, 1e-6), *PROFILE_RUNS))
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(pathlib.Path(session.end_profiling()).read_text())
    durations: dict[str, list[float]] = defaultdict(list)  # in run order
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        executed = name[: -len("_kernel_time")]
        executed = executed[: -len("_nchwc")] if executed.endswith("_nchwc") else executed
        executed = executed[len("fused "):] if executed.startswith("fused ") else executed
        if executed in aliases:
            durations[executed].append(float(event["dur"]))
    times: dict[str, float] = defaultdict(float)
    for executed, values in durations.items():
        times[aliases[executed]] += float(np.median(values[warmup:] or values))
    return dict(times)


def save_layer_times(path: str | pathlib.Path, times: dict[str, float], threads: int | None) -> None:
    """Write a measurement (rule 4), atomically."""
    record = {"format": FILE_FORMAT, "unit": "us", "threads": threads, "layers": times}
    write_text_atomically(path, json.dumps(record, indent=1) + "\n")


def load_layer_times(path: str | pathlib.Path) -> dict[str, float]:
    """Read a measurement written by ``save_layer_times``; a malformed file is a GraphcError."""
    try:
        record = json.loads(pathlib.Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphcError(f"cannot read layer times {path}: {exc}") from None
    layers = record.get("layers") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != FILE_FORMAT or not isinstance(layers, dict):
        raise GraphcError(f"{path} is not a graphc layer-times file (want {{\"format\": \"{FILE_FORMAT}\", "
                          f"\"layers\": {{name: microseconds}}}})")
    bad = next((name for name, value in layers.items()
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0), None)
    if bad is not None:
        raise GraphcError(f"{path}: layer {bad!r} has time {layers[bad]!r}; times must be positive microseconds")
    return {str(name): float(value) for name, value in layers.items()}


def weighted_layer_times(graph: gs.Graph, shapes, data, threads: int | None, profile: str = "") -> dict[str, float]:
    """Microseconds of each weighted layer of ``graph`` at batch 1 (rule 5): read from
    ``profile`` when that file exists, else measured (and written to ``profile`` when one is
    named)."""
    model = gs.export_onnx(graph, do_type_check=False)
    if profile and pathlib.Path(profile).exists():
        times = load_layer_times(profile)
        layers = {n.outputs[0].name for n in graph.nodes if n.op in WEIGHTED_OPS and n.outputs}
        if not layers & set(times):
            raise GraphcError(f"prune:profile={profile} names none of this model's weighted layers "
                              f"(measured on another model?)")
        return times
    feeds = next(data.batches(1))[0] if data is not None else synthetic_feeds(model, shapes, 1)
    times = weighted_node_times(model, feeds, threads=threads)
    if profile:
        save_layer_times(profile, times, threads)
    return times
