"""Rule 8: accuracy budget (``budget=<max drop>``, needs ``--eval-data`` and ``--metric``).

After smoothing and one calibration of every candidate tensor, quantized models are built
with some compute nodes kept FP32 (activation ranges reused) and scored with the metric on
``budget_rows`` rows (the original model is the reference for cosine / agreement). Groups of
nodes (``budget_group=layer|node``), their sensitivity, the greedy FP32 fallback and the
failure rule are below (``search``); ``drop = metric(FP32 input) - metric(INT8)`` must end
``<= budget``. The stats, details and a report note list each group kept FP32 with the metric
it gave back alone; if no mix that still quantizes something meets the budget the pass fails
with one line (``budget_result``).

Per-group quantization sensitivity and the greedy FP32 fallback. Rules (``search``):

- Groups: ``by="node"``: every quantized compute node alone; ``by="layer"``: nodes whose
  names share the path up to the first non-final ``/`` segment ending in digits
  (``/encoder/layer.3/...``, ``/features/features.6/...``); a node without one is its own
  group. Groups keep the graph's order.
- Scores come from one evaluator: the metric (``graphc.metrics.evaluate``) on the first
  ``rows`` of the evaluation data, with the original model as the reference for cosine /
  agreement (its outputs computed once and cached). ``drop = fp32 - score``.
- 1. ``fp32`` = score of the unquantized model; ``all`` = score with every group INT8. If
  ``fp32 - all <= budget`` nothing stays FP32.
  2. Sensitivity of a group = ``score(everything INT8 but that group) - all``: the metric it
  gives back when kept FP32 alone.
  3. Greedy, most sensitive first (ties: graph order): keep groups FP32 one by one until
  ``fp32 - score <= budget``.
  4. Keeping every group FP32 is not a mix (nothing would be quantized): when the budget
  still fails with all groups but the least sensitive one FP32, the search fails with one
  GraphcError line giving the smallest drop of any mix it scored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.data import Dataset, output_batch_axes
from graphc.errors import GraphcError
from graphc.graph import to_model
from graphc.metrics import evaluate
from graphc.pass_api import PassResult
from graphc.passes.int8.activations import activation_params, activation_tensors
from graphc.passes.int8.calibration import calibrate
from graphc.passes.int8.plan import NodePlan, node_label, plan_nodes, plan_stats
from graphc.passes.int8.rewrite import rewrite
from graphc.graph import infer_shapes
from graphc.runtime import open_session, run_session

if TYPE_CHECKING:
    from graphc.context import Context
    from graphc.passes.int8 import Int8Options

NUMBERED = re.compile(r"\d+$")


def group_key(label: str, by: str) -> str:
    """The group of a node label (see the module rules)."""
    if by == "node":
        return label
    segments = label.split("/")
    for i, segment in enumerate(segments[:-1]):
        if NUMBERED.search(segment):
            return "/".join(segments[:i + 1])
    return label


def make_groups(labels: list[str], by: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(group_key(label, by), []).append(label)
    return groups


class Evaluator:
    """``score(model)``: the metric on fixed rows; the reference model runs once per batch."""

    BATCH = 64

    def __init__(self, data: Dataset, metric: str, reference: onnx.ModelProto, threads: int | None = None):
        self.data, self.metric, self.threads = data, metric, threads
        self.reference = open_session(reference, threads, what="the reference model")
        self.output_axis = output_batch_axes(reference).get(reference.graph.output[0].name, 0)
        self.cache: dict[bytes, list[np.ndarray]] = {}
        self.calls = 0

    def _reference(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        digest = hashlib.sha1()
        for name in sorted(feeds):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feeds[name]).tobytes())
        key = digest.digest()
        if key not in self.cache:
            self.cache[key] = run_session(self.reference, feeds)
        return self.cache[key]

    def __call__(self, model: onnx.ModelProto) -> float:
        self.calls += 1
        session = open_session(model, self.threads, what="a budget candidate")
        return evaluate(lambda feeds: run_session(session, feeds), self.data, self.metric,
                        reference=self._reference, batch_size=self.BATCH, output_axis=self.output_axis)


@dataclass
class BudgetResult:
    fp32: float
    all_int8: float
    final: float
    model: onnx.ModelProto
    kept: list[str]  # groups kept FP32, most sensitive first
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> metric gained when FP32 alone
    evaluations: int = 0


def search(groups: dict[str, list[str]], build: Callable[[frozenset[str]], onnx.ModelProto],
           score: Callable[[onnx.ModelProto], float], fp32_model: onnx.ModelProto, budget: float,
           what: str) -> BudgetResult:
    """Steps 1-4 of the module rules. ``build(keep)`` is the quantized model with the node
    labels in ``keep`` FP32; ``what`` names the budget in the failure message."""
    calls = 0

    def measure(model):
        nonlocal calls
        calls += 1
        return score(model)

    fp32 = measure(fp32_model)
    everything = build(frozenset())
    all_int8 = measure(everything)
    if fp32 - all_int8 <= budget:
        return BudgetResult(fp32, all_int8, all_int8, everything, [], {}, calls)
    if len(groups) < 2:  # keeping the only group FP32 would quantize nothing
        raise GraphcError(f"{what}: no INT8 mix meets it: the only group {next(iter(groups))!r} drops "
                          f"{fp32 - all_int8:.6g}; raise the budget or run without it")
    sensitivity = {name: measure(build(frozenset(members))) - all_int8 for name, members in groups.items()}
    best = all_int8 + max(sensitivity.values())  # the best mix scored so far
    position = {name: i for i, name in enumerate(groups)}
    order = sorted(groups, key=lambda g: (-sensitivity[g], position[g]))
    kept: list[str] = []
    for name in order[:-1]:
        kept.append(name)
        model = build(frozenset(label for g in kept for label in groups[g]))
        value = measure(model)
        if fp32 - value <= budget:
            return BudgetResult(fp32, all_int8, value, model, kept, sensitivity, calls)
        best = max(best, value)
    raise GraphcError(
        f"{what}: no INT8 mix meets it: the smallest drop of the {calls - 1} mixes scored is {fp32 - best:.6g} "
        f"(all INT8: {fp32 - all_int8:.6g}; {len(order) - 1} of {len(order)} groups FP32, only "
        f"{order[-1]!r} INT8: {fp32 - value:.6g}); "
        f"raise the budget or run without it")


def budget_result(graph: gs.Graph, ctx: Context, plan: NodePlan, opts: Int8Options, qmax: int,
                  stats: dict) -> PassResult:
    """Rule 8: the quantized graph with the fewest sensitive groups FP32 that meets the budget."""
    base = to_model(graph, ctx.original)  # FP32 (after smoothing): every candidate starts from it
    tensors = activation_tensors(graph, plan.static, opts.target)
    ranges: dict[str, tuple[float, float]] = {}
    if tensors:
        ranges, calib_stats = calibrate(graph, ctx, tensors, opts)
        stats.update(calib_stats)
    built: dict[frozenset[str], tuple[gs.Graph, NodePlan, dict]] = {}

    def build(keep: frozenset[str]) -> onnx.ModelProto:
        candidate = infer_shapes(gs.import_onnx(base))
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
    groups = make_groups(labels, opts.budget_group)
    rows = ctx.eval_data.take(opts.budget_rows)
    score = Evaluator(rows, ctx.metric, ctx.original, ctx.threads)
    what = f"int8:budget={opts.budget:g} ({ctx.metric} on {len(rows)} rows of --eval-data)"
    result = search(groups, build, score, base, opts.budget, what)
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
