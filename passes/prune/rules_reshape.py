"""Channel rules of Transpose and the reshaping ops, where hidden channels become heads.

Rules:

- Transpose permutes the annotated axes;
- Flatten / Reshape / Squeeze / Unsqueeze re-map an annotated axis by matching flat
  positions within the smallest aligned input/output axis ranges of equal product that
  contain it (a reshape that mixes the channel axis with other axes blocks). A channel may
  expand to a block of positions (Flatten into Gemm). When no output axis holds whole units,
  the group's unit is coarsened (contiguous blocks of channels, finest first) until every
  unit maps to whole indices of one output axis (hidden -> heads x head_dim: kind
  ``heads``); when none does, the group blocks;
- a Reshape's target-shape entry for that axis must be -1, a constant (recorded, and
  lowered by removal), or read at run time from ``Shape`` of its own input; an entry
  computed otherwise blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.prune.channel_groups import KIND_PRIORITY, ChannelGroup, Shape, join_labels

if TYPE_CHECKING:
    from graphc.passes.prune.channel_graph import ChannelGraph


def transpose(cg: ChannelGraph, node: gs.Node) -> None:
    shape = cg.shape(node.inputs[0])
    if shape is None:
        return cg.block_all(node, "unknown rank")
    perm = node.attrs.get("perm") or list(reversed(range(len(shape))))
    inverse = {p: i for i, p in enumerate(perm)}
    cg.carry(node.inputs[0].name, node.outputs[0].name, lambda a: inverse[a])


def reshape(cg: ChannelGraph, node: gs.Node) -> None:
    """Flatten / Reshape / Squeeze / Unsqueeze: re-map by matching flat positions."""
    in_shape, out_shape = cg.shape(node.inputs[0]), cg.shape(node.outputs[0])
    if in_shape is None or out_shape is None or 0 in in_shape:
        return cg.block_all(node, "unknown shapes")
    for axis, pairs in cg.annotations(node.inputs[0].name).items():
        for gid, index in pairs:
            remap_axis(cg, node, in_shape, out_shape, axis, gid, index)


def remap_axis(cg: ChannelGraph, node: gs.Node, in_shape: Shape, out_shape: Shape, axis: int, gid: int,
               index: np.ndarray) -> None:
    """Annotate the reshaped output axis that holds whole units of group ``gid`` (coarsening them if needed)."""
    gid, index = cg.resolve(gid, index)
    group = cg.groups[gid]
    segment = _segment(in_shape, out_shape, axis)
    if segment is None:
        return cg.block(gid, f"{node.op} {node.name} mixes the channel axis with others")
    (i0, i1), (o0, o1) = segment
    in_dims, out_dims = in_shape[i0:i1], out_shape[o0:o1]
    flat = np.arange(int(np.prod(in_dims))).reshape(in_dims)
    positions = [np.sort(np.take(flat, index[c][index[c] >= 0], axis=axis - i0).ravel())
                 for c in range(group.size)]
    for labels in _coarsenings(group):
        for j in range(len(out_dims)):
            mapped = _clean_map(positions, labels, out_dims, j)
            if mapped is None:
                continue
            if not np.array_equal(labels, group.unit_of):
                group.unit_of = labels
                if len(out_dims) > 1:
                    group.kind = max(group.kind, "heads", key=KIND_PRIORITY.index)
            if node.op == "Reshape":
                entry = _shape_entry(node, o0 + j)
                if entry == "dynamic":
                    return cg.block(gid, f"target shape of {node.name} is computed at run time")
                if entry == "constant":
                    group.reshapes.append((node, o0 + j))
            return cg.annotate(node.outputs[0].name, o0 + j, gid, mapped)
    cg.block(gid, f"{node.op} {node.name} splits channels across axes")


def _segment(in_shape: Shape, out_shape: Shape, axis: int):
    """The smallest aligned input/output axis ranges with equal products containing ``axis``."""
    i = o = 0
    while i < len(in_shape) or o < len(out_shape):
        start_i, start_o = i, o
        pi = po = 1
        if i < len(in_shape):
            pi, i = pi * in_shape[i], i + 1
        if o < len(out_shape):
            po, o = po * out_shape[o], o + 1
        while pi != po:
            if pi < po and i < len(in_shape):
                pi, i = pi * in_shape[i], i + 1
            elif po < pi and o < len(out_shape):
                po, o = po * out_shape[o], o + 1
            else:
                return None
        if start_i <= axis < i:
            return (start_i, i), (start_o, o)
    return None


def _coarsenings(group: ChannelGroup):
    """The group's partition, then joined with ever larger contiguous blocks (finest first)."""
    yield group.unit_of
    channels = np.arange(group.size)
    for block in range(2, group.size):
        if group.size % block == 0:
            labels = join_labels(group.unit_of, channels, channels - channels % block)
            if int(labels.max()) >= 1:
                yield labels


def _clean_map(positions: list[np.ndarray], labels: np.ndarray, out_dims: Shape, j: int) -> np.ndarray | None:
    """Per-channel indices on output axis ``j`` if every unit owns whole slices of it."""
    stride = int(np.prod(out_dims[j + 1:]))
    other = int(np.prod(out_dims)) // out_dims[j]
    rows: list[np.ndarray] = [np.array([-1])] * len(positions)
    for label in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        block = np.unique(np.concatenate([positions[c] for c in members]))
        if block.size == 0:
            continue
        coords = np.unique((block // stride) % out_dims[j])
        if block.size != coords.size * other:
            return None
        for c in members:
            own = np.unique((positions[c] // stride) % out_dims[j]) if members.size == 1 else coords
            rows[c] = own if positions[c].size else np.array([-1])
    width = max(len(r) for r in rows)
    return np.array([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows], dtype=np.int64)


def _shape_entry(node: gs.Node, position: int) -> str:
    """How a Reshape's target shape sets ``position``: 'minus_one', 'constant', 'follows'
    (read at run time from the Reshape's own input, so it tracks pruning) or 'dynamic'."""
    shape_input = node.inputs[1]
    values = constant_values(shape_input)
    if values is not None:
        return "minus_one" if int(np.ravel(values)[position]) == -1 else "constant"
    producer = shape_input.inputs[0] if len(shape_input.inputs) == 1 else None
    if producer is None or producer.op != "Concat":
        return "dynamic"
    offset = 0
    for piece in producer.inputs:
        piece_values = constant_values(piece)
        length = np.asarray(piece_values).size if piece_values is not None else 1
        if offset <= position < offset + length:
            if piece_values is None:
                return "follows" if _reads_shape_of(piece, node.inputs[0]) else "dynamic"
            return "minus_one" if int(np.ravel(piece_values)[position - offset]) == -1 else "constant"
        offset += length
    return "dynamic"


def _reads_shape_of(tensor: gs.Tensor, source: gs.Tensor, depth: int = 4) -> bool:
    """Whether ``tensor`` is a dim of ``Shape(source)`` (through Gather/Unsqueeze/Cast/Slice)."""
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None or depth == 0:
        return False
    if node.op == "Shape":
        return node.inputs[0] is source
    if node.op in ("Gather", "Unsqueeze", "Cast", "Slice", "Squeeze"):
        return _reads_shape_of(node.inputs[0], source, depth - 1)
    return False
