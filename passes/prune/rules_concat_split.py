"""Channel rules of Concat, Split, Slice and Pad: ops that join or cut along an axis.

Rules:

- Concat along an annotated axis offsets each input's channels by the sizes of the inputs
  before it; its other axes couple like element-wise inputs (``couple_axes``);
- Split partitions an annotated axis: each output holds the channels that fall inside it,
  renumbered, and the group records (Split, output index) so removal lowers that output's
  size; split sizes must be constant; the other axes carry through to every output;
- Concat of one group's channels several times (the same tensor twice, or pooled copies of
  it as in an SPPF block) puts each channel at several positions of the output axis: a
  removed channel is removed from every copy;
- Slice along an annotated axis that changes its size blocks that group, and the axis is not
  carried: the output's positions are no longer the group's channels (a fused Q/K/V tensor
  sliced into Q, K and V along the axis that holds the three parts), so downstream it is an
  untracked axis of fixed size (which blocks whatever group meets it); otherwise annotations
  carry through; non-constant slices block;
- Pad along an annotated axis blocks likewise and does not carry that axis; non-constant
  pads or axes block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.prune.rules_elementwise import couple_axes

if TYPE_CHECKING:
    from graphc.passes.prune.channel_graph import ChannelGraph


def concat(cg: ChannelGraph, node: gs.Node) -> None:
    out_shape = cg.shape(node.outputs[0])
    if out_shape is None:
        return cg.block_all(node, "unknown shapes")
    rank = len(out_shape)
    axis = int(node.attrs["axis"]) % rank
    offset = 0
    per_input, shapes = [], []
    for tensor in node.inputs:
        shape = cg.shape(tensor)
        if shape is None:
            return cg.block_all(node, "unknown input shape")
        shapes.append(shape)
        for ax, pairs in cg.annotations(tensor.name).items():
            if ax == axis:
                for gid, index in pairs:
                    cg.annotate(node.outputs[0].name, axis, gid, np.where(index >= 0, index + offset, -1))
        per_input.append({ax: v for ax, v in cg.annotations(tensor.name).items() if ax != axis})
        offset += shape[axis]
    couple_axes(cg, per_input, [tuple(1 if j == axis else d for j, d in enumerate(s)) for s in shapes],
                      rank, node.outputs[0].name, node)


def split(cg: ChannelGraph, node: gs.Node) -> None:
    shape = cg.shape(node.inputs[0])
    if shape is None:
        return cg.block_all(node, "unknown shape")
    if len(node.inputs) > 1 and node.inputs[1].name and constant_values(node.inputs[1]) is None:
        return cg.block_all(node, "non-constant split sizes")
    axis = int(node.attrs.get("axis", 0)) % len(shape)
    sizes = [cg.shape(t) for t in node.outputs]
    if any(s is None for s in sizes):
        return cg.block_all(node, "unknown output shapes")
    start = 0
    for out, out_shape in zip(node.outputs, sizes):
        stop = start + out_shape[axis]
        for ax, pairs in cg.annotations(node.inputs[0].name).items():
            for gid, index in pairs:
                if ax != axis:
                    cg.annotate(out.name, ax, gid, index)
                    continue
                inside = (index >= start) & (index < stop)
                if inside.any():
                    cg.annotate(out.name, ax, gid, np.where(inside, index - start, -1))
                    cg.groups[cg.root(gid)].splits.append((node, node.outputs.index(out)))
        start = stop


def slice_op(cg: ChannelGraph, node: gs.Node) -> None:
    shape = cg.shape(node.inputs[0])
    if shape is None or len(node.inputs) < 3:
        return cg.block_all(node, "unknown slice")
    starts = constant_values(node.inputs[1])
    axes = constant_values(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if axes is None:
        if starts is None:
            return cg.block_all(node, "non-constant slice")
        axes = range(len(np.ravel(starts)))
    sliced = {int(a) % len(shape) for a in np.ravel(axes)}
    out_shape = cg.shape(node.outputs[0])
    cut = []
    for axis, pairs in cg.annotations(node.inputs[0].name).items():
        if axis in sliced and (out_shape is None or out_shape[axis] != shape[axis]):
            cut.append(axis)
            for gid, _ in pairs:
                cg.block(gid, f"sliced along its channel axis by {node.name}")
    cg.carry(node.inputs[0].name, node.outputs[0].name, skip=tuple(cut))


def pad(cg: ChannelGraph, node: gs.Node) -> None:
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        pads = constant_values(node.inputs[1])
    shape = cg.shape(node.inputs[0])
    if pads is None or shape is None or (len(node.inputs) > 3 and node.inputs[3].name):
        return cg.block_all(node, "non-constant pads or axes")
    pads = np.ravel(pads)
    rank = len(shape)
    cut = []
    for axis, pairs in cg.annotations(node.inputs[0].name).items():
        if pads[axis] or pads[axis + rank]:
            cut.append(axis)
            for gid, _ in pairs:
                cg.block(gid, f"padded along its channel axis by {node.name}")
    cg.carry(node.inputs[0].name, node.outputs[0].name, skip=tuple(cut))
