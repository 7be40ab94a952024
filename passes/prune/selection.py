"""Rule 3 of ``prune``: which units go, and what a removal costs.

``ratio`` is the share of the prunable cost removed, where the cost is the parameter count
of every tensor in a prunable group (``target=params``, default), their MACs
(``target=macs``), or the measured time of their weighted layers (``target=latency``: one
onnxruntime profile as for ``latency=true`` below, each layer's time falling in proportion
to its MACs; ``timed_cost``). ``scope=global`` removes the least important units across all
groups until the share is reached; ``scope=uniform`` removes ``ratio`` of the units of every
group. No group loses more than ``max_layer_ratio`` of its units or its last unit, and no
output of a Split it passes through loses all its channels (a zero-width tensor: the C2f
half that only feeds the final Concat would vanish, ``split_parts``); with
``round_to=k`` the kept channel count of a channel group is rounded up to a multiple of k
(``select_units``).

``latency=true`` (global scope) multiplies every unit's importance by its group's measured
speed (``speed_factors``): the MACs per microsecond its layers save per removed unit over
the model's MACs per microsecond (``layer_times`` profiles the model once in onnxruntime at
batch 1 with ``--threads``; factors clipped to [0.5, 2]), so at equal importance the
channels of layers that run slowly per MAC go first and the same MACs cost less time. The
choice then depends on the machine that profiled; ``profile=FILE`` keeps the measurement
(written on the first run, read on later ones) so a run can be repeated exactly, or use
times measured on the deployment machine.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.ops import WEIGHTED_OPS, node_macs
from graphc.passes.prune.channel_groups import ChannelGroup, unit_positions


@dataclass(frozen=True)
class PruneConfig:
    ratio: float
    scope: str = "global"
    max_layer_ratio: float = 0.9
    round_to: int = 1


def _node_macs(node: gs.Node, shapes: dict) -> float:
    """``graphc.ops.node_macs`` of a weighted layer (0: output shape or constant weight unknown)."""
    out = shapes.get(node.outputs[0].name)
    weight = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
    if out is None or weight is None:
        return 0.0

    def input_shape(i):
        if i == 1:
            return np.shape(weight)
        return shapes.get(node.inputs[i].name) if i < len(node.inputs) else None

    return float(node_macs(node.op, input_shape, out, node.attrs) or 0)


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
                self.members.setdefault(group.id, []).append((key, member.axis, unit_positions(member, group)))
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
    weighted node, keyed by its output name (``layer_times``). A layer's time falls in
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


def split_parts(group: ChannelGroup) -> list[set[int]]:
    """The units of each Split output the group passes through (one of each must stay)."""
    parts = []
    for node, k in group.splits:
        for member in group.members:
            if member.kind == "activation" and member.tensor == node.outputs[k].name:
                parts.append({u for u, p in enumerate(unit_positions(member, group)) if p.size})
                break
    return [p for p in parts if p]


def _allowed(units, cap: int, parts: list[set[int]]) -> list[int]:
    """``units`` in order, up to ``cap``, skipping any that would take a part's last unit."""
    left = [set(p) for p in parts]
    chosen = []
    for u in units:
        if len(chosen) == cap:
            break
        if any(u in p and len(p) == 1 for p in left):
            continue
        for p in left:
            p.discard(u)
        chosen.append(int(u))
    return chosen


def select_units(groups: list[ChannelGroup], importance: dict[int, np.ndarray], cost: CostModel,
                 config: PruneConfig) -> dict[int, list[int]]:
    """Units to remove per group (least important first), honouring caps and rounding.

    Global scope takes the shortest prefix of the importance ranking whose exact removed
    share (``cost``) reaches ``ratio``; uniform scope takes ``ratio`` of every group.
    """
    caps = {g.id: min(g.units - 1, math.floor(config.max_layer_ratio * g.units + 1e-9)) for g in groups}
    by_id = {g.id: g for g in groups}
    parts = {g.id: split_parts(g) for g in groups}

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
        return rounded({g.id: _allowed(np.argsort(importance[g.id], kind="stable"), min(
            caps[g.id], math.floor(config.ratio * g.units + 1e-9)), parts[g.id]) for g in groups})

    ranked = sorted((float(importance[g.id][u]), g.id, u) for g in groups for u in range(g.units))

    def prefix(k: int) -> dict[int, list[int]]:
        chosen: dict[int, list[int]] = {}
        left = {gid: [set(p) for p in group_parts] for gid, group_parts in parts.items()}
        taken = 0
        for _, gid, unit in ranked:
            if taken == k:
                break
            if len(chosen.setdefault(gid, [])) < caps[gid] and not any(unit in p and len(p) == 1
                                                                       for p in left[gid]):
                for p in left[gid]:
                    p.discard(unit)
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
