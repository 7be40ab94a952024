"""Group bookkeeping of the channel dependency graph: groups, their members, and unions.

A ``ChannelGroup`` is a set of elementary channels that must be removed together (one
output column of the weight that produced them); its ``unit_of`` labels say which channels
form one removable unit (a whole attention head is ``head_dim`` channels). A ``Member`` is
one place the group's channels sit: an activation axis, or an axis of a constant input of
a node (``producer`` weight/bias slices, ``consumer`` input slices, per-channel
``parameter`` slices). ``index[c]`` lists the positions channel ``c`` occupies on that
axis (-1: absent; several when a channel expands to a block, as Flatten into Gemm does).

``GroupBook`` holds the groups and the annotated tensor axes of one sweep:

- merging two groups (``merge``: annotated inputs meeting on one axis) re-expresses the
  group whose channels are a subset of the other's in that group's channels: a union-find
  whose links carry the channel map, so an old annotation resolves to the live group
  (``resolve``); channels of one unit of the merged group join one unit of the other. A
  group meeting itself (a fused Q/K/V split into parts) joins its own units instead. The
  merged group keeps the lower id's origin, collects both groups' reshapes and splits,
  stays blocked if either was, and takes the higher kind of ``KIND_PRIORITY``;
- coupling channels that expanded to blocks, partially overlapping channel sets, or
  channels that meet themselves unevenly blocks the groups;
- ``block`` records the first reason a group cannot be pruned; later reasons are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

KIND_PRIORITY = ["channels", "neurons", "heads", "hidden"]  # a merged group takes the highest

Shape = tuple[int, ...]


@dataclass
class Member:
    """Where a group's channels sit: an activation, or a constant input of a node."""

    kind: str  # "activation" | "producer" | "consumer" | "parameter"
    tensor: str  # tensor name (activation) or the constant's name
    axis: int
    index: np.ndarray  # [channels, per], -1 = absent
    node: gs.Node | None = None  # for constants: the node that reads it, and which input
    input_index: int | None = None


@dataclass
class ChannelGroup:
    id: int
    size: int
    origin: str  # the node that produced the channels first
    kind: str = "channels"  # channels | heads | neurons | hidden
    unit_of: np.ndarray | None = None  # channel -> unit label (0..units-1), channels removed together
    members: list[Member] = field(default_factory=list)
    reshapes: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Reshape node, output axis)
    splits: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Split node, output index)
    blocked: str | None = None

    def __post_init__(self):
        if self.unit_of is None:
            self.unit_of = np.arange(self.size, dtype=np.int64)

    @property
    def units(self) -> int:
        return int(self.unit_of.max()) + 1 if self.size else 0

    @property
    def channels_per_unit(self) -> int:
        return self.size // self.units if self.units else 0

    def channels_of(self, units) -> np.ndarray:
        """The channels of the given unit labels."""
        return np.flatnonzero(np.isin(self.unit_of, np.asarray(list(units), dtype=np.int64)))

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        """Put channels ``a[i]`` and ``b[i]`` in the same unit (and their units with them)."""
        self.unit_of = join_labels(self.unit_of, self.unit_of[a], self.unit_of[b])

    def params(self) -> list[Member]:
        return [m for m in self.members if m.kind != "activation"]

    def describe(self) -> str:
        state = f"blocked: {self.blocked}" if self.blocked else "prunable"
        unit = f" of {self.channels_per_unit}" if self.units < self.size else ""
        return f"group {self.id} ({self.kind}, {self.units} units{unit}, from {self.origin}): {state}"


def unit_positions(member: Member, group: ChannelGroup) -> list[np.ndarray]:
    """Unique positions on the member's axis of each unit of the group."""
    result = []
    for u in range(group.units):
        index = member.index[group.channels_of([u])]
        result.append(np.unique(index[index >= 0]))
    return result


class GroupBook:
    """The groups of one sweep, their merges, and the (group, index) annotations per tensor axis."""

    def __init__(self):
        self.groups: dict[int, ChannelGroup] = {}
        self._parent: dict[int, tuple[int, np.ndarray]] = {}  # merged group -> (target, channel map)
        self._ann: dict[str, dict[int, list[tuple[int, np.ndarray]]]] = {}

    def new_group(self, size: int, origin: str, kind: str = "channels") -> ChannelGroup:
        group = ChannelGroup(len(self.groups) + len(self._parent), size, origin, kind)
        self.groups[group.id] = group
        return group

    def root(self, gid: int) -> int:
        while gid in self._parent:
            gid = self._parent[gid][0]
        return gid

    def resolve(self, gid: int, index: np.ndarray) -> tuple[int, np.ndarray]:
        """Follow merges: the live group and ``index`` re-expressed in its channels."""
        while gid in self._parent:
            target, channel_map = self._parent[gid]
            moved = np.full((self.groups[self.root(target)].size, index.shape[1]), -1, dtype=np.int64)
            valid = channel_map >= 0
            moved[channel_map[valid]] = index[valid]
            gid, index = target, moved
        return gid, index

    def annotations(self, tensor: str) -> dict[int, list[tuple[int, np.ndarray]]]:
        """Live (group, index) pairs per axis of a tensor."""
        result: dict[int, list[tuple[int, np.ndarray]]] = {}
        for axis, pairs in self._ann.get(tensor, {}).items():
            merged: dict[int, np.ndarray] = {}
            for gid, index in pairs:
                root, moved = self.resolve(gid, index)
                merged[root] = _overlay(merged[root], moved) if root in merged else moved
            result[axis] = list(merged.items())
        return result

    def annotate(self, tensor: str, axis: int, gid: int, index: np.ndarray) -> None:
        gid, index = self.resolve(gid, index)
        self._ann.setdefault(tensor, {}).setdefault(axis, []).append((gid, index))
        self.groups[gid].members.append(Member("activation", tensor, axis, index))

    def param(self, kind: str, node: gs.Node, input_index: int, axis: int, gid: int, index: np.ndarray) -> None:
        gid, index = self.resolve(gid, index)
        tensor = node.inputs[input_index]
        self.groups[gid].members.append(Member(kind, tensor.name, axis, index, node, input_index))

    def block(self, gid: int, reason: str) -> None:
        gid = self.root(gid)
        if self.groups[gid].blocked is None:
            self.groups[gid].blocked = reason

    def block_all(self, node: gs.Node, reason: str) -> None:
        for tensor in node.inputs:
            for pairs in self.annotations(tensor.name).values():
                for gid, _ in pairs:
                    self.block(gid, f"{reason} ({node.op} {node.name})")

    def merge(self, a: int, ia: np.ndarray, b: int, ib: np.ndarray, where: str) -> None:
        """Couple group ``a`` with ``b``: channels at the same position of one axis are one."""
        a, ia = self.resolve(a, ia)
        b, ib = self.resolve(b, ib)
        if a == b and np.array_equal(ia, ib):
            return
        if ia.shape[1] != 1 or ib.shape[1] != 1:
            self.block(a, f"coupling of expanded channels at {where}")
            self.block(b, f"coupling of expanded channels at {where}")
            return
        occ_a, occ_b = _occurrences(ia[:, 0]), _occurrences(ib[:, 0])
        if a == b:  # one group meeting itself (fused Q/K/V split into parts): join their units
            if set(occ_a) != set(occ_b):
                return self.block(a, f"channels meet themselves unevenly at {where}")
            keys = sorted(occ_a)
            self.groups[a].join(np.array([occ_a[k] for k in keys]), np.array([occ_b[k] for k in keys]))
            if self.groups[a].units < 2:
                self.block(a, f"all channels coupled into one unit at {where}")
            return
        if not set(occ_a) <= set(occ_b):
            if set(occ_b) <= set(occ_a):
                return self.merge(b, ib, a, ia, where)
            self.block(a, f"partially overlapping channels at {where}")
            self.block(b, f"partially overlapping channels at {where}")
            return
        channel_map = np.full(self.groups[a].size, -1, dtype=np.int64)
        for key, c in occ_a.items():
            channel_map[c] = occ_b[key]
        ga, gb = self.groups[a], self.groups[b]
        for member in ga.members:
            moved = np.full((gb.size, member.index.shape[1]), -1, dtype=np.int64)
            valid = channel_map >= 0
            moved[channel_map[valid]] = member.index[valid]
            gb.members.append(Member(member.kind, member.tensor, member.axis, moved, member.node, member.input_index))
        mapped = np.flatnonzero(channel_map >= 0)  # a's units carry over: channels of one a-unit join
        for label in np.unique(ga.unit_of[mapped]):
            targets = channel_map[mapped[ga.unit_of[mapped] == label]]
            gb.join(targets[:1].repeat(len(targets)), targets)
        if ga.id < gb.id:
            gb.origin = ga.origin
        gb.reshapes += ga.reshapes
        gb.splits += ga.splits
        gb.blocked = gb.blocked or ga.blocked
        gb.kind = max(ga.kind, gb.kind, key=KIND_PRIORITY.index)
        del self.groups[a]
        self._parent[a] = (b, channel_map)

    def carry(self, source: str, target: str, axis_map: Callable[[int], int | None] = lambda a: a,
              skip: tuple[int, ...] = ()) -> None:
        """Carry annotations to ``target``; an axis mapped to None blocks, one in ``skip`` ends."""
        for axis, pairs in self.annotations(source).items():
            if axis in skip:
                continue
            new_axis = axis_map(axis)
            for gid, index in pairs:
                if new_axis is None:
                    self.block(gid, f"axis dropped between {source!r} and {target!r}")
                else:
                    self.annotate(target, new_axis, gid, index)


def _occurrences(positions: np.ndarray) -> dict[tuple[int, int], int]:
    """(position, k) -> the channel that is the k-th to sit at that position. Channels of one
    head share a position; pairing them by rank couples head with head."""
    seen: dict[int, int] = {}
    result = {}
    for c, p in enumerate(positions.tolist()):
        if p >= 0:
            result[(p, seen.get(p, 0))] = c
            seen[p] = seen.get(p, 0) + 1
    return result


def _overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two annotations of one group on one axis as one: every channel at the union of its
    positions in both (-1 padded). A channel at two positions is a repeated copy (a Concat of
    the same tensor twice, or of pooled copies of it), and each copy must go with it."""
    both = np.concatenate([a, b], axis=1)
    rows = [np.unique(row[row >= 0]) for row in both]
    width = max(1, max(len(r) for r in rows))
    return np.array([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows], dtype=np.int64)


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def join_labels(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union of the labels ``a[i]`` and ``b[i]`` (union-find over labels)."""
    parent = np.arange(int(labels.max()) + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in zip(a.tolist(), b.tolist()):
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return _canonical(np.array([find(x) for x in labels.tolist()]))
