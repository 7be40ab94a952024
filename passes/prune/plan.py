"""Rule 1 of ``prune`` and the plan: analyse the graph, then choose what to remove.

Rule 1 (analysis, ``analyse``): constant subgraphs are folded first (exported weights behind
Transpose/Constant become plain initializers; a node reading a weight shared with other
nodes is not folded, so tied embeddings are not duplicated), then the channel dependency
graph (``channel_graph``) groups coupled channels. Only unblocked groups with at least two
units are prunable; the hidden/residual dimension of transformers is blocked by its
LayerNorms unless ``hidden=true``.

``plan_pruning`` then scores the units (rule 2, ``scores``), measures layer times when the
options ask for them (``layer_times``) and selects the units to remove (rule 3,
``selection``); ``removal.apply_pruning`` carries the plan out (rule 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from graphc.graph import fold_constants
from graphc.passes.prune.channel_graph import ChannelGraph
from graphc.passes.prune.channel_groups import ChannelGroup
from graphc.passes.prune.layer_times import weighted_layer_times
from graphc.passes.prune.scores import unit_importance
from graphc.passes.prune.selection import CostModel, PruneConfig, select_units, speed_factors, timed_cost
from graphc.stats import tensor_shapes
from graphc.subgraphs import subgraphs_of

if TYPE_CHECKING:
    from graphc.data import Dataset
    from graphc.passes.prune import PruneOptions


@dataclass
class PrunePlan:
    graph: gs.Graph  # the analysed copy of the input graph, which apply/mask edit
    groups: list[ChannelGroup]
    removed: dict[int, list[int]]  # group id -> removed unit indices
    cost_total: float
    cost_removed: float
    target: str
    layers_timed: int = 0  # weighted layers profiled for latency=true / target=latency
    time_share_removed: float | None = None  # predicted share of the prunable layers' time (other targets)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.blocked and g.units >= 2]

    def removed_channels(self, group: ChannelGroup) -> list[int]:
        return group.channels_of(self.removed.get(group.id, [])).tolist()

    def stats(self) -> dict:
        prunable = self.prunable()
        return {
            "groups": len(self.groups), "prunable_groups": len(prunable),
            "blocked_groups": sum(1 for g in self.groups if g.blocked),
            "groups_pruned": len(self.removed),
            "units_removed": sum(len(v) for v in self.removed.values()),
            f"prunable_{self.target}_removed": f"{self.cost_removed / self.cost_total:.1%}" if self.cost_total else "0%",
            **({"layers_timed": self.layers_timed} if self.layers_timed else {}),
            **({"prunable_latency_removed_predicted": f"{self.time_share_removed:.1%}"}
               if self.time_share_removed is not None else {}),
        }

    def group_table(self) -> list[dict]:
        return [{"group": g.id, "kind": g.kind, "origin": g.origin, "units": g.units, "unit_channels": g.channels_per_unit,
                 "removed": len(self.removed.get(g.id, [])), "blocked": g.blocked} for g in self.groups]

    def nothing_message(self) -> str:
        if not self.prunable():
            reasons = sorted({g.blocked for g in self.groups if g.blocked})[:3]
            nested = [n for n in self.graph.nodes if subgraphs_of(n)]
            inside = (f"; prune does not look inside the subgraphs of {len(nested)} node(s): "
                      f"{', '.join(sorted({n.op for n in nested}))}" if nested else "")
            return ("prune: nothing prunable in this model; returned unchanged"
                    + (f" (blocked: {'; '.join(reasons)}{inside})" if reasons else f" (no channel groups{inside})"))
        return "prune: ratio selects no unit; model returned unchanged"


def analyse(graph: gs.Graph, shapes: dict | None = None, hidden: bool = False) -> ChannelGraph:
    """Fold constants and build the channel dependency graph of ``graph`` (edited in place);
    ``shapes`` are the ``--shape`` overrides, ``hidden`` is ``prune:hidden``."""
    fold_constants(graph, exclude=_duplicates_shared_weight, flatten_subgraphs=True)
    graph.toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    names = {t for node in model.graph.node for t in [*node.input, *node.output] if t}
    return ChannelGraph(graph, tensor_shapes(model, shapes or {}, wanted=names), allow_hidden_norm=hidden)


def _duplicates_shared_weight(node: gs.Node) -> bool:
    """Folding this node would copy a weight matrix other nodes still read (a tied embedding).

    Vectors are exempt: the TorchScript exporter merges identical biases (zero-initialised
    ones) and reads them through Identity nodes; copying a vector is cheap, and leaving it
    unfolded would block its channel group.
    """
    return any(isinstance(t, gs.Constant) and t.values.ndim >= 2 and t.values.size > 1024 and len(t.outputs) > 1
               for t in node.inputs)


def plan_pruning(graph: gs.Graph, options: PruneOptions, *, shapes: dict | None = None, data: Dataset | None = None,
                 threads: int | None = None) -> PrunePlan:
    """Analyse a copy of ``graph`` and choose the units to remove (``graph`` is not edited).

    ``shapes`` (``--shape``), ``data`` (``--data``, for data-driven scores and profiling) and
    ``threads`` (``--threads``, for profiling) are what the pass reads of its context.
    """
    shapes = shapes or {}
    graph = graph.copy()
    channel_graph = analyse(graph, shapes, options.hidden)
    groups = sorted(channel_graph.groups.values(), key=lambda g: g.id)
    prunable = [g for g in groups if not g.blocked and g.units >= 2]
    config = PruneConfig(options.ratio, options.scope, options.max_layer_ratio, options.round_to)
    importance = unit_importance(prunable, graph, options.by, data, threads) if prunable else {}
    times: dict[str, float] = {}
    if (options.latency or options.target == "latency") and prunable and options.ratio > 0:
        times = weighted_layer_times(graph, shapes, data, threads, options.profile)
    # one MACs model serves the MACs target, the measured-time costs and the speed factors
    macs = CostModel(prunable, channel_graph.shapes, "macs") if times or options.target != "params" else None
    timed = timed_cost(macs, times) if times or options.target == "latency" else None
    if options.target == "params":
        cost = CostModel(prunable, channel_graph.shapes, "params")
    else:
        cost = timed if options.target == "latency" else macs
    if options.latency and times:
        factors = speed_factors(macs, times)
        importance = {gid: scores * factors[gid] for gid, scores in importance.items()}
    removed = select_units(prunable, importance, cost, config) if options.ratio > 0 else {}
    time_share = None
    if times and options.target != "latency":  # what the measurement predicts this choice saves
        time_share = timed.share(removed)
    return PrunePlan(graph, groups, removed, cost.total, cost.removed(removed), options.target, len(times), time_share)
