"""``prune``: structured pruning that physically removes channels, heads and FFN neurons.

Rules:

1. Constant subgraphs are folded first (exported weights behind Transpose/Constant become
   plain initializers; a node reading a weight shared with other nodes is not folded, so tied
   embeddings are not duplicated), then the channel dependency graph (``graphc.channel_graph``) groups
   coupled channels. Only unblocked groups with at least two units are prunable; the
   hidden/residual dimension of transformers is blocked by its LayerNorms unless
   ``hidden=true``.
2. Importance per unit (one channel, or one head of ``head_dim`` channels):
   ``by=l1|l2``: the L1/L2 norm of the unit's slices of every weight in the group (weights
   of rank >= 2: producers, consumers, depthwise), each weight's scores divided by their
   mean, averaged over weights (data-free); ``by=activation``: mean |activation| of the
   unit's channels over ``--data``; ``by=taylor``: first-order estimate of the loss change
   |a x g| with the gradient approximated by the consumer weights' column norms
   (activation x consumer weight norm), since an ONNX graph has no gradient path.
   Scores are normalised per group (divided by the group mean).
3. Selection: ``ratio`` is the share of the prunable cost removed, where the cost is the
   parameter count of every tensor in a prunable group (``target=params``, default),
   their MACs (``target=macs``), or the measured time of their weighted layers
   (``target=latency``: one onnxruntime profile as for ``latency=true`` below, each layer's
   time falling in proportion to its MACs). ``scope=global`` removes the least important units across
   all groups until the share is reached; ``scope=uniform`` removes ``ratio`` of the units
   of every group. No group loses more than ``max_layer_ratio`` of its units or its last
   unit; with ``round_to=k`` the kept channel count of a channel group is rounded up to a
   multiple of k. ``latency=true`` (global scope) multiplies every unit's importance by its
   group's measured speed: the MACs per microsecond its layers save per removed unit over
   the model's MACs per microsecond (``graphc.node_times`` profiles the model once in
   onnxruntime at batch 1 with ``--threads``; factors clipped to [0.5, 2]), so at equal
   importance the channels of layers that run slowly per MAC go first and the same MACs
   cost less time. The choice then depends on the machine that profiled; ``profile=FILE``
   keeps the measurement (written on the first run, read on later ones) so a run can be
   repeated exactly, or use times measured on the deployment machine.
4. Removal: every weight slice of a removed unit is deleted (producer outputs, consumer
   inputs, BatchNorm/bias/depthwise parameters, Reshape target-shape constants, a depthwise
   Conv's ``group``); shared constants are copied rather than edited; shapes are re-inferred. Input and output shapes
   of the model never change.
5. ``recalibrate=true`` with ``--data``: BatchNormalization running statistics are
   re-estimated on the pruned model (streamed per-channel mean and variance).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from graphc.channel_graph import ChannelGraph, ChannelGroup
from graphc.data import synthetic_feeds
from graphc.errors import GraphcError
from graphc.graph import clear_intermediate_shapes, constant_values, infer_shapes, swap_tensor
from graphc.ops import WEIGHTED_OPS
from graphc.node_times import load_layer_times, save_layer_times, weighted_node_times
from graphc.pass_api import InspectSection, Pass, PassResult
from graphc.verify import Tolerance
from graphc.prune_select import CostModel, PruneConfig, select_units, speed_factors, timed_cost, unit_importance
from graphc.stats import tensor_shapes


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = field(default=0.3, metadata={"min": 0.0, "max": 0.95,
                                                "help": "share of the prunable cost to remove (see target)"})
    by: Literal["l1", "l2", "activation", "taylor"] = field(default="l2", metadata={"help": "importance score"})
    target: Literal["params", "macs", "latency"] = field(default="params", metadata={
        "help": "what ratio measures: parameters, MACs, or measured time (latency profiles the model once)"})
    scope: Literal["global", "uniform"] = field(default="global", metadata={
        "help": "rank units across all groups, or remove ratio of every group"})
    max_layer_ratio: float = field(default=0.9, metadata={"min": 0.0, "max": 0.99,
                                                          "help": "most units any one group may lose"})
    round_to: int = field(default=8, metadata={"min": 1, "help": "kept channels a multiple of this (1: exact ratio; "
                                                                "8 keeps onnxruntime's fast blocked Conv/GEMM paths)"})
    hidden: bool = field(default=False, metadata={"help": "also prune the transformer hidden size (inexact)"})
    latency: bool = field(default=False, metadata={"help": "rank by importance x measured speed: channels of layers "
                                                           "slow per MAC go first (profiles the model once)"})
    profile: str = field(default="", metadata={"help": "layer-times JSON for latency=true / target=latency: read "
                                                      "if it exists, else measured and written there"})
    recalibrate: bool = field(default=False, metadata={"help": "re-estimate BatchNorm statistics on --data"})


class PrunePass(Pass):
    name = "prune"
    summary = "structured pruning of channels, attention heads and FFN neurons (physically removed)"
    Options = PruneOptions
    main_option = "ratio"
    in_place = False

    def tolerance(self) -> Tolerance:
        return Tolerance()  # pruning changes outputs by design; distill wins accuracy back

    def check(self, ctx) -> None:
        needs_data = self.options.by in ("activation", "taylor") or self.options.recalibrate
        if needs_data and ctx.data is None:
            raise GraphcError(f"prune:by={self.options.by}{':recalibrate=true' if self.options.recalibrate else ''} "
                              f"needs --data (inputs to measure activations on)")
        uses_times = self.options.latency or self.options.target == "latency"
        if self.options.profile and not uses_times:
            raise GraphcError(f"prune:profile={self.options.profile} is only read with latency=true or target=latency")
        if self.options.profile and pathlib.Path(self.options.profile).exists():
            load_layer_times(self.options.profile)  # refuse a malformed file before any work
        if self.options.latency and self.options.scope == "uniform":
            raise GraphcError("prune:latency=true reorders units across groups; scope=uniform removes the same share "
                              "of every group, so it would change nothing (use scope=global)")

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        plan = plan_pruning(graph, self.options, ctx)
        stats = plan.stats()
        if not plan.removed:  # the given graph is returned untouched
            if ctx is not None and ctx.report is not None:
                ctx.report.note(plan.nothing_message())
            return PassResult(changed=False, stats=stats, graph=graph, details={"groups": plan.group_table()})
        apply_pruning(plan)
        pruned = infer_shapes(plan.graph)
        if self.options.recalibrate:
            from graphc.bn_recalibrate import recalibrate_batchnorm

            stats["bn_recalibrated"] = recalibrate_batchnorm(pruned, ctx.data)
        return PassResult(changed=True, stats=stats, graph=pruned, details={"groups": plan.group_table()})


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
            return ("prune: nothing prunable in this model; returned unchanged"
                    + (f" (blocked: {'; '.join(reasons)})" if reasons else " (no channel groups)"))
        return "prune: ratio selects no unit; model returned unchanged"


def analyse(graph: gs.Graph, options: PruneOptions | None = None, shapes=None) -> ChannelGraph:
    """Fold constants and build the channel dependency graph of ``graph`` (edited in place)."""
    options = options or PruneOptions()
    graph.fold_constants(error_ok=True, should_exclude_node=_duplicates_shared_weight)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    names = {t for node in model.graph.node for t in [*node.input, *node.output] if t}
    return ChannelGraph(graph, tensor_shapes(model, shapes or {}, wanted=names), allow_hidden_norm=options.hidden)


def _duplicates_shared_weight(node: gs.Node) -> bool:
    """Folding this node would copy a weight matrix other nodes still read (a tied embedding).

    Vectors are exempt: the TorchScript exporter merges identical biases (zero-initialised
    ones) and reads them through Identity nodes; copying a vector is cheap, and leaving it
    unfolded would block its channel group.
    """
    return any(isinstance(t, gs.Constant) and t.values.ndim >= 2 and t.values.size > 1024 and len(t.outputs) > 1
               for t in node.inputs)


def plan_pruning(graph: gs.Graph, options: PruneOptions, ctx=None) -> PrunePlan:
    """Analyse a copy of ``graph`` and choose the units to remove (``graph`` is not edited)."""
    shapes = ctx.shapes if ctx is not None else {}
    graph = graph.copy()
    channel_graph = analyse(graph, options, shapes)
    groups = sorted(channel_graph.groups.values(), key=lambda g: g.id)
    prunable = [g for g in groups if not g.blocked and g.units >= 2]
    config = PruneConfig(options.ratio, options.scope, options.max_layer_ratio, options.round_to)
    data = ctx.data if ctx is not None else None
    importance = unit_importance(prunable, graph, options.by, data) if prunable else {}
    times: dict[str, float] = {}
    if (options.latency or options.target == "latency") and prunable and options.ratio > 0:
        times = _layer_times(graph, shapes, data, ctx, options.profile)
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


def _layer_times(graph: gs.Graph, shapes, data, ctx, profile: str = "") -> dict[str, float]:
    """Microseconds of each weighted layer of ``graph`` at batch 1 (one row of ``--data``, else
    synthetic inputs shaped by ``--shape``): read from ``profile`` when that file exists,
    else measured (and written to ``profile`` when one is named)."""
    model = gs.export_onnx(graph, do_type_check=False)
    if profile and pathlib.Path(profile).exists():
        times = load_layer_times(profile)
        layers = {n.outputs[0].name for n in graph.nodes if n.op in WEIGHTED_OPS and n.outputs}
        if not layers & set(times):
            raise GraphcError(f"prune:profile={profile} names none of this model's weighted layers "
                              f"(measured on another model?)")
        return times
    threads = getattr(ctx, "threads", None)
    feeds = next(data.batches(1))[0] if data is not None else synthetic_feeds(model, shapes, 1)
    times = weighted_node_times(model, feeds, threads=threads)
    if profile:
        save_layer_times(profile, times, threads)
    return times


def apply_pruning(plan: PrunePlan) -> None:
    """Delete the planned units' slices from every member of their groups (in ``plan.graph``)."""
    graph = plan.graph
    removals: dict[tuple[int, int], tuple[gs.Node, int, dict[int, set[int]]]] = {}
    for group in plan.groups:
        channels = plan.removed_channels(group)
        if not channels:
            continue
        for member in group.params():
            index = member.index[channels]
            positions = set(np.unique(index[index >= 0]).tolist())
            key = (id(member.node), member.input_index)
            entry = removals.setdefault(key, (member.node, member.input_index, {}))
            entry[2].setdefault(member.axis, set()).update(positions)
        for node, axis in group.reshapes:
            _shrink_reshape(node, axis, _removed_on_axis(group, channels, node.outputs[0].name, axis))
        for node, k in group.splits:
            _shrink_split(node, k, _removed_on_axis(group, channels, node.outputs[k].name,
                                                    int(node.attrs.get("axis", 0)), any_axis=True))

    shared: dict[tuple[int, str], gs.Constant] = {}
    for node, input_index, axes in removals.values():
        tensor = node.inputs[input_index]
        values = np.asarray(constant_values(tensor))
        key = (id(tensor), repr(sorted((a, sorted(p)) for a, p in axes.items())))
        if key not in shared:
            for axis, positions in sorted(axes.items()):
                values = np.delete(values, sorted(positions), axis=axis)
            shared[key] = gs.Constant(f"{tensor.name}_pruned{len(shared)}", values)
        swap_tensor(node.inputs, tensor, shared[key])
        if node.op == "Conv" and input_index == 1 and int(node.attrs.get("group", 1)) > 1:
            node.attrs["group"] = int(shared[key].values.shape[0])  # depthwise: one group per channel
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    clear_intermediate_shapes(graph)


def _removed_on_axis(group: ChannelGroup, channels: list[int], tensor: str, axis: int,
                     any_axis: bool = False) -> int:
    for member in group.members:
        if member.kind == "activation" and member.tensor == tensor and (member.axis == axis or any_axis):
            index = member.index[channels]
            return int(np.unique(index[index >= 0]).size)
    raise AssertionError(f"no activation member for {tensor} axis {axis}")


def _shrink_split(node: gs.Node, k: int, removed: int) -> None:
    """Lower the size of Split output ``k`` by ``removed`` (split sizes input or attribute)."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        sizes = np.array(constant_values(node.inputs[1]), copy=True)
        sizes[k] -= removed
        swap_tensor(node.inputs, node.inputs[1], gs.Constant(f"{node.inputs[1].name}_pruned", sizes))
    elif "split" in node.attrs:
        sizes = list(node.attrs["split"])
        sizes[k] -= removed
        node.attrs["split"] = sizes
    else:
        raise GraphcError(f"cannot prune through Split {node.name}: equal split sizes cannot shrink one output")


def _shrink_reshape(node: gs.Node, axis: int, removed: int) -> None:
    """Lower the Reshape target-shape entry of ``axis`` by ``removed`` (a constant there)."""
    shape_input = node.inputs[1]
    values = constant_values(shape_input)
    if values is not None:
        new = np.array(values, copy=True)
        new[axis] -= removed
        swap_tensor(node.inputs, shape_input, gs.Constant(f"{shape_input.name}_pruned", new))
        return
    concat = shape_input.inputs[0]
    offset = 0
    for piece in list(concat.inputs):
        piece_values = np.asarray(constant_values(piece)) if constant_values(piece) is not None else None
        length = piece_values.size if piece_values is not None else 1
        if offset <= axis < offset + length:
            new = np.array(piece_values, copy=True).reshape(piece_values.shape)
            new.flat[axis - offset] -= removed
            swap_tensor(concat.inputs, piece, gs.Constant(f"{piece.name or 'shape'}_pruned", new))
            return
        offset += length


def mask_pruned_channels(plan: PrunePlan) -> None:
    """Zero, instead of removing, the consumer slices of the planned units (in ``plan.graph``):
    the reference the pruned model must equal (cuts exactly the removed channels' contribution)."""
    for group in plan.groups:
        channels = plan.removed_channels(group)
        for member in (m for m in group.params() if m.kind == "consumer" and channels):
            tensor = member.node.inputs[member.input_index]
            values = np.array(constant_values(tensor), copy=True)
            index = member.index[channels]
            positions = np.unique(index[index >= 0])
            slicer = [slice(None)] * values.ndim
            slicer[member.axis] = positions
            values[tuple(slicer)] = 0
            swap_tensor(member.node.inputs, tensor, gs.Constant(f"{tensor.name}_masked{group.id}", values))


def prune_groups(model, shapes) -> list[dict]:
    """The channel groups of ``model`` as prune sees them, with what blocks each."""
    from graphc.graph import to_graph

    channel_graph = analyse(to_graph(model), PruneOptions(), dict(shapes))
    rows = []
    for group in sorted(channel_graph.groups.values(), key=lambda g: g.id):
        status = f"blocked: {group.blocked}" if group.blocked else (
            "prunable" if group.units >= 2 else "single unit")
        rows.append({"group": group.id, "kind": group.kind, "units": group.units,
                     "unit_channels": group.channels_per_unit, "origin": group.origin,
                     "params": int(CostModel([group], channel_graph.shapes, "params").total), "status": status})
    return rows


def prune_groups_text(groups: list[dict]) -> str:
    from graphc.report import markdown_table
    from graphc.stats import human

    prunable = sum(1 for g in groups if g["status"] == "prunable")
    table = [["group", "kind", "units x channels", "params", "origin", "status"]]
    table += [[str(g["group"]), g["kind"], f"{g['units']} x {g['unit_channels']}", human(g["params"]),
               g["origin"], g["status"]] for g in groups]
    return f"prune groups: {len(groups)} ({prunable} prunable)\n" + markdown_table(table)


PrunePass.inspect = InspectSection(
    flag="prune-groups", key="prune_groups", collect=prune_groups, render=prune_groups_text,
    help="list the channel groups prune sees: kind, units, origin, and what blocks a group")
