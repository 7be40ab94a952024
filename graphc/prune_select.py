"""Scoring and selection for ``prune``: the cost and importance of each unit of a group,
and which units go for a given ratio (rules in ``passes/prune.py``'s docstring)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.channel_graph import ChannelGroup, Member
from graphc.graph import constant_values
from graphc.ops import WEIGHTED_OPS


@dataclass(frozen=True)
class PruneConfig:
    ratio: float
    scope: str = "global"
    max_layer_ratio: float = 0.9
    round_to: int = 1


def _unit_positions(member: Member, group: ChannelGroup) -> list[np.ndarray]:
    """Unique positions on the member's axis of each unit of the group."""
    result = []
    for u in range(group.units):
        index = member.index[group.channels_of([u])]
        result.append(np.unique(index[index >= 0]))
    return result


def _node_macs(node: gs.Node, shapes: dict) -> float:
    out = shapes.get(node.outputs[0].name)
    weight = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
    if out is None or weight is None:
        return 0.0
    weight = np.asarray(weight)
    if node.op in ("Conv", "ConvTranspose"):
        if node.op == "ConvTranspose":
            x = shapes.get(node.inputs[0].name)
            return float(np.prod(x) * np.prod(weight.shape[1:])) if x else 0.0
        return float(np.prod(out) * np.prod(weight.shape[1:]))
    k = weight.shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else weight.shape[0]
    return float(np.prod(out) * k)


class CostModel:
    """The exact parameter count (or weighted-layer MACs) left after removing units.

    Every constant touched by a prunable group is one entry; removing positions on several
    of its axes (output channels by one group, input channels by another) multiplies.
    """

    def __init__(self, groups: list[ChannelGroup], shapes: dict, target: str):
        self.groups = {g.id: g for g in groups}
        self.tensors: dict[tuple[int, int], tuple[tuple[int, ...], float]] = {}  # key -> (shape, cost)
        self.members: dict[int, list[tuple[tuple[int, int], int, list[np.ndarray]]]] = {}
        self.nodes: dict[tuple[int, int], gs.Node] = {}
        for group in groups:
            for member in group.params():
                values = constant_values(member.node.inputs[member.input_index])
                if values is None:
                    continue
                shape = np.asarray(values).shape
                key = (id(member.node), member.input_index)
                if target == "params":
                    cost = float(np.prod(shape))
                elif member.node.op in WEIGHTED_OPS and member.input_index == 1:
                    cost = _node_macs(member.node, shapes)
                else:
                    continue
                self.tensors[key] = (shape, cost)
                self.nodes[key] = member.node
                self.members.setdefault(group.id, []).append((key, member.axis, _unit_positions(member, group)))
        self.total = sum(cost for _, cost in self.tensors.values())

    def removed(self, chosen: dict[int, list[int]]) -> float:
        gone: dict[tuple[int, int], dict[int, set[int]]] = {}
        for gid, units in chosen.items():
            for key, axis, positions in self.members.get(gid, []):
                axes = gone.setdefault(key, {})
                for u in units:
                    axes.setdefault(axis, set()).update(positions[u].tolist())
        result = 0.0
        for key, axes in gone.items():
            shape, cost = self.tensors[key]
            kept = np.prod([(d - len(axes.get(a, ()))) / d for a, d in enumerate(shape)])
            result += cost * (1 - kept)
        return result

    def share(self, chosen: dict[int, list[int]]) -> float:
        return self.removed(chosen) / self.total if self.total else 0.0


def _weight_members(group: ChannelGroup, kinds: Iterable[str] = ("producer", "consumer", "parameter")):
    for member in group.params():
        if member.kind in kinds:
            values = constant_values(member.node.inputs[member.input_index])
            if values is not None and np.asarray(values).ndim >= 2:
                yield member, np.asarray(values)


def _normalised_mean(columns: list[np.ndarray], size: int) -> np.ndarray:
    scaled = [c / c.mean() if c.mean() > 0 else c for c in columns]
    return np.mean(scaled, axis=0) if scaled else np.ones(size)


def magnitude_scores(group: ChannelGroup, order: int) -> np.ndarray:
    """L1/L2 norm of each unit's weight slices, normalised per weight and averaged."""
    columns = []
    for member, values in _weight_members(group):
        moved = np.moveaxis(values, member.axis, 0).reshape(values.shape[member.axis], -1).astype(np.float64)
        per_position = np.abs(moved).sum(1) if order == 1 else (moved ** 2).sum(1)
        unit = np.array([per_position[p].sum() for p in _unit_positions(member, group)])
        columns.append(unit if order == 1 else np.sqrt(unit))
    return _normalised_mean(columns, group.units)


def activation_scores(graph: gs.Graph, groups: list[ChannelGroup], data, batch_size: int = 32) -> dict[int, np.ndarray]:
    """Mean |activation| per unit over ``data``, from one streamed onnxruntime run."""
    from graphc.runtime import open_session

    wanted = {(m.tensor, m.axis) for g in groups for m in g.members if m.kind == "activation"}
    model = gs.export_onnx(graph, do_type_check=False)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in sorted({t for t, _ in wanted}) if t not in existing)
    session = open_session(model, what="the activation probe")
    names = [o.name for o in session.get_outputs()]
    sums: dict[tuple[str, int], np.ndarray] = {}
    count: dict[tuple[str, int], int] = {}
    for feeds, _ in data.batches(batch_size):
        values = dict(zip(names, session.run(None, feeds)))
        for tensor, axis in wanted:
            array = np.abs(values[tensor].astype(np.float64))
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            sums[(tensor, axis)] = sums.get((tensor, axis), 0) + moved.sum(1)
            count[(tensor, axis)] = count.get((tensor, axis), 0) + moved.shape[1]
    scores = {}
    for group in groups:
        columns = []
        for member in (m for m in group.members if m.kind == "activation"):
            mean = sums[(member.tensor, member.axis)] / count[(member.tensor, member.axis)]
            columns.append(np.array([mean[p].mean() if p.size else 0.0 for p in _unit_positions(member, group)]))
        scores[group.id] = _normalised_mean(columns, group.units)
    return scores


def taylor_scores(group: ChannelGroup, activation: np.ndarray) -> np.ndarray:
    """|a x g| with g approximated by the consumer weights' L2 norm per unit."""
    consumer = [(m, v) for m, v in _weight_members(group, ("consumer",))]
    if not consumer:
        return activation
    columns = []
    for member, values in consumer:
        moved = np.moveaxis(values, member.axis, 0).reshape(values.shape[member.axis], -1).astype(np.float64)
        per_position = (moved ** 2).sum(1)
        columns.append(np.sqrt(np.array([per_position[p].sum() for p in _unit_positions(member, group)])))
    return activation * _normalised_mean(columns, group.units)


def unit_importance(groups: list[ChannelGroup], graph: gs.Graph, by: str, data=None) -> dict[int, np.ndarray]:
    """Importance of every unit of every group, normalised per group (mean 1)."""
    if by in ("l1", "l2"):
        raw = {g.id: magnitude_scores(g, 1 if by == "l1" else 2) for g in groups}
    else:
        activation = activation_scores(graph, groups, data)
        raw = activation if by == "activation" else {g.id: taylor_scores(g, activation[g.id]) for g in groups}
    return {gid: s / s.mean() if s.mean() > 0 else s for gid, s in raw.items()}


def _measured(macs: CostModel, times: dict[str, float]) -> tuple[dict[tuple[int, int], float], float | None]:
    """Measured microseconds per weighted tensor of ``macs`` and the model's MACs per microsecond
    over the measured layers (None when nothing was measured)."""
    measured = {key: times[node.outputs[0].name] for key, node in macs.nodes.items()
                if times.get(node.outputs[0].name, 0) > 0}
    measured_macs = sum(macs.tensors[key][1] for key in measured)
    measured_time = sum(measured.values())
    return measured, (measured_macs / measured_time if measured_macs and measured_time else None)


def speed_factors(macs: CostModel, times: dict[str, float], bounds: tuple[float, float] = (0.5, 2.0)) -> dict[int, float]:
    """How fast each group's MACs run, relative to the model: MACs per microsecond saved by
    removing one of its units, divided by the MACs per microsecond of all measured layers.

    ``macs`` is a ``target="macs"`` cost model; ``times`` holds measured microseconds per
    weighted node, keyed by its output name (``graphc.node_times``). A layer's time falls in
    proportion to its MACs; an unmeasured layer runs at the model's average speed. Factors
    are clipped to ``bounds`` so one noisy measurement cannot empty or spare a group.
    """
    measured, speed = _measured(macs, times)
    if speed is None:
        return {gid: 1.0 for gid in macs.groups}
    factors = {}
    for gid in macs.groups:
        unit_macs = unit_time = 0.0
        for key, axis, positions in macs.members.get(gid, []):
            shape, cost = macs.tensors[key]
            share = positions[0].size / shape[axis]
            unit_macs += cost * share
            unit_time += measured.get(key, cost / speed) * share
        factors[gid] = float(np.clip(unit_macs / unit_time / speed, *bounds)) if unit_time else 1.0
    return factors


def timed_cost(macs: CostModel, times: dict[str, float]) -> CostModel:
    """``macs`` with every layer's cost replaced by its measured microseconds (``target=latency``).

    A layer's time falls in proportion to its MACs (the product of its kept fractions, as for
    MACs); an unmeasured layer costs its MACs at the model's MACs per microsecond; with no
    measurement at all the costs stay MACs (the same shares).
    """
    measured, speed = _measured(macs, times)
    result = copy.copy(macs)
    result.tensors = {key: (shape, measured.get(key, cost / speed if speed else cost))
                      for key, (shape, cost) in macs.tensors.items()}
    result.total = sum(cost for _, cost in result.tensors.values())
    return result


def select_units(groups: list[ChannelGroup], importance: dict[int, np.ndarray], cost: CostModel,
                 config: PruneConfig) -> dict[int, list[int]]:
    """Units to remove per group (least important first), honouring caps and rounding.

    Global scope takes the shortest prefix of the importance ranking whose exact removed
    share (``cost``) reaches ``ratio``; uniform scope takes ``ratio`` of every group.
    """
    caps = {g.id: min(g.units - 1, math.floor(config.max_layer_ratio * g.units + 1e-9)) for g in groups}
    by_id = {g.id: g for g in groups}

    def rounded(chosen: dict[int, list[int]]) -> dict[int, list[int]]:
        result = {}
        for gid, units in chosen.items():
            group = by_id[gid]
            if config.round_to > 1 and group.units == group.size and units:
                kept = min(group.size, -(-(group.size - len(units)) // config.round_to) * config.round_to)
                units = units[:group.size - kept]
            if units:
                result[gid] = sorted(int(u) for u in units)
        return result

    if config.scope == "uniform":
        return rounded({g.id: list(np.argsort(importance[g.id], kind="stable")[:min(
            caps[g.id], math.floor(config.ratio * g.units + 1e-9))]) for g in groups})

    ranked = sorted((float(importance[g.id][u]), g.id, u) for g in groups for u in range(g.units))

    def prefix(k: int) -> dict[int, list[int]]:
        chosen: dict[int, list[int]] = {}
        taken = 0
        for _, gid, unit in ranked:
            if taken == k:
                break
            if len(chosen.setdefault(gid, [])) < caps[gid]:
                chosen[gid].append(unit)
                taken += 1
        return rounded(chosen)

    lo, hi = 0, sum(caps.values())
    while lo < hi:  # smallest prefix whose removed share reaches the ratio
        mid = (lo + hi) // 2
        if cost.share(prefix(mid)) >= config.ratio:
            hi = mid
        else:
            lo = mid + 1
    return prefix(lo)
