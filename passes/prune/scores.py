"""Rule 2 of ``prune``: the importance of every unit (one channel, or one attention head of
``head_dim`` channels).

- ``by=l1|l2``: the L1/L2 norm of the unit's slices of every weight in the group (weights
  of rank >= 2: producers, consumers, depthwise), each weight's scores divided by their
  mean, averaged over weights (data-free);
- ``by=activation``: mean |activation| of the unit's channels over ``--data``;
- ``by=taylor``: first-order estimate of the loss change |a x g| with the gradient
  approximated by the consumer weights' column norms (activation x consumer weight norm),
  since an ONNX graph has no gradient path.

A weight or activation that holds only some of a group's units (the part of a split tensor
one branch reads) scores only those: each unit's score averages the members that hold it,
each member normalised by its mean over the units it holds (a unit absent from a member is
not a unit of zero weight). Scores are normalised per group (divided by the group mean).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.prune.channel_groups import ChannelGroup, unit_positions
from graphc.runtime import tap_graph


def _weight_members(group: ChannelGroup, kinds: Iterable[str] = ("producer", "consumer", "parameter")):
    for member in group.params():
        if member.kind in kinds:
            values = constant_values(member.node.inputs[member.input_index])
            if values is not None and np.asarray(values).ndim >= 2:
                yield member, np.asarray(values)


def _normalised_mean(columns: list[tuple[np.ndarray, np.ndarray]], size: int) -> np.ndarray:
    """Per unit, the mean over the members that hold it of that member's score divided by its
    mean over the units it holds; ``columns`` holds (scores, held) per member."""
    if not columns:
        return np.ones(size)
    total, count = np.zeros(size), np.zeros(size)
    for scores, held in columns:
        mean = scores[held].mean() if held.any() else 0.0
        total += np.where(held, scores / mean if mean > 0 else scores, 0.0)
        count += held
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _held(member, group: ChannelGroup) -> tuple[list[np.ndarray], np.ndarray]:
    """Positions of each unit on the member's axis, and which units the member holds."""
    positions = unit_positions(member, group)
    return positions, np.array([p.size > 0 for p in positions])


def magnitude_scores(group: ChannelGroup, order: int) -> np.ndarray:
    """L1/L2 norm of each unit's weight slices, normalised per weight and averaged."""
    columns = []
    for member, values in _weight_members(group):
        moved = np.moveaxis(values, member.axis, 0).reshape(values.shape[member.axis], -1).astype(np.float64)
        per_position = np.abs(moved).sum(1) if order == 1 else (moved ** 2).sum(1)
        positions, held = _held(member, group)
        unit = np.array([per_position[p].sum() for p in positions])
        columns.append((unit if order == 1 else np.sqrt(unit), held))
    return _normalised_mean(columns, group.units)


def activation_scores(graph: gs.Graph, groups: list[ChannelGroup], data, batch_size: int = 32,
                      threads: int | None = None) -> dict[int, np.ndarray]:
    """Mean |activation| per unit over ``data``, from one streamed run of the tensor tap
    (bounded pieces: memory holds per-channel sums, not the activations)."""
    axes: dict[str, set[int]] = {}
    for group in groups:
        for member in group.members:
            if member.kind == "activation":
                axes.setdefault(member.tensor, set()).add(member.axis)
    sums: dict[tuple[str, int], np.ndarray] = {}
    count: dict[tuple[str, int], int] = {}

    def reduce(name: str, values: np.ndarray, piece) -> None:
        array = np.abs(values.astype(np.float64))
        for axis in axes[name]:
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            sums[(name, axis)] = sums.get((name, axis), 0) + moved.sum(1)
            count[(name, axis)] = count.get((name, axis), 0) + moved.shape[1]

    tap_graph(graph, axes, data, reduce, batch_size, threads, what="the activation probe")
    scores = {}
    for group in groups:
        columns = []
        for member in (m for m in group.members if m.kind == "activation"):
            mean = sums[(member.tensor, member.axis)] / count[(member.tensor, member.axis)]
            positions, held = _held(member, group)
            columns.append((np.array([mean[p].mean() if p.size else 0.0 for p in positions]), held))
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
        positions, held = _held(member, group)
        columns.append((np.sqrt(np.array([per_position[p].sum() for p in positions])), held))
    return activation * _normalised_mean(columns, group.units)


def unit_importance(groups: list[ChannelGroup], graph: gs.Graph, by: str, data=None,
                    threads: int | None = None) -> dict[int, np.ndarray]:
    """Importance of every unit of every group, normalised per group (mean 1)."""
    if by in ("l1", "l2"):
        raw = {g.id: magnitude_scores(g, 1 if by == "l1" else 2) for g in groups}
    else:
        activation = activation_scores(graph, groups, data, threads=threads)
        raw = activation if by == "activation" else {g.id: taylor_scores(g, activation[g.id]) for g in groups}
    return {gid: s / s.mean() if s.mean() > 0 else s for gid, s in raw.items()}
