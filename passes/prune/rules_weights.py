"""Channel rules of the weighted ops: where groups start and where channels are consumed.

Rules:

- producers start a group: Conv / ConvTranspose (group 1) output channels, Gemm and MatMul
  with a constant 2-D weight (output columns; kind ``neurons`` for MatMul), Gather from a
  constant 2-D table along axis 0 (embedding columns; kind ``hidden``). Their weight (and
  bias) slices are ``producer`` members; a non-constant bias blocks;
- consumers: the input-channel slices of Conv (group 1), ConvTranspose, Gemm and
  constant-weight MatMul weights are ``consumer`` members: cutting them cuts exactly the
  removed channels' contribution. Another annotated input axis blocks, except the leading
  axes of a constant-weight MatMul, which carry through;
- depthwise Conv (group == in == out channels) passes channels through (its weight's axis 0
  and its bias are ``parameter`` members); other grouped Convs, a grouped ConvTranspose,
  non-constant weights and Gemm with ``transA`` block;
- MatMul of two activations (attention) couples batch axes like element-wise ops (Q, K and
  V heads; ``couple_axes``); an annotated contraction axis blocks; the row axis of the left
  operand and the column axis of the right one carry through. A constant left operand
  blocks;
- Gather from a non-constant table (or along another axis) carries the other axes through,
  shifted by the indices' rank; gathering along an annotated axis blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.prune.rules_elementwise import couple_axes

if TYPE_CHECKING:
    from graphc.passes.prune.channel_graph import ChannelGraph


def start_group(cg: ChannelGraph, node: gs.Node, weight_input: int, out_axis_in_weight: int, size: int,
                out_tensor: gs.Tensor, out_axis: int, bias_input: int | None = None, kind: str = "channels"):
    """A new group of the ``size`` output channels of ``node``: its weight (and bias) slices are
    producers, and the output's ``out_axis`` carries the channels."""
    group = cg.new_group(size, f"{node.op} {node.name}", kind)
    identity = np.arange(size, dtype=np.int64)[:, None]
    cg.param("producer", node, weight_input, out_axis_in_weight, group.id, identity)
    if bias_input is not None and len(node.inputs) > bias_input and node.inputs[bias_input].name:
        bias = constant_values(node.inputs[bias_input])
        if bias is None:
            cg.block(group.id, f"non-constant bias of {node.name}")
        elif np.asarray(bias).size > 1:
            cg.param("producer", node, bias_input, np.asarray(bias).ndim - 1, group.id, identity)
    cg.annotate(out_tensor.name, out_axis, group.id, identity)
    return group


def consume(cg: ChannelGraph, node: gs.Node, x: gs.Tensor, x_axis: int, weight_input: int, weight_axis: int,
            other_axes_ok: bool = False) -> None:
    """The channels on ``x_axis`` are cut by the weight's ``weight_axis`` slices."""
    for axis, pairs in cg.annotations(x.name).items():
        for gid, index in pairs:
            if axis == x_axis:
                cg.param("consumer", node, weight_input, weight_axis, gid, index)
            elif not other_axes_ok:
                cg.block(gid, f"annotated axis {axis} into {node.op} {node.name}")


def conv(cg: ChannelGraph, node: gs.Node) -> None:
    weight = constant_values(node.inputs[1])
    if weight is None:
        return cg.block_all(node, "non-constant weight")
    groups = int(node.attrs.get("group", 1))
    out_channels, per_group = weight.shape[0], weight.shape[1]
    x = node.inputs[0]
    if groups == 1:
        consume(cg, node, x, 1, 1, 1)
        start_group(cg, node, 1, 0, out_channels, node.outputs[0], 1, bias_input=2)
    elif per_group == 1 and groups == out_channels:  # depthwise: channel i -> channel i
        for axis, pairs in cg.annotations(x.name).items():
            for gid, index in pairs:
                if axis != 1:
                    cg.block(gid, f"annotated axis {axis} into {node.name}")
                    continue
                cg.param("parameter", node, 1, 0, gid, index)
                if len(node.inputs) > 2 and node.inputs[2].name:
                    cg.param("parameter", node, 2, 0, gid, index)
                cg.annotate(node.outputs[0].name, 1, gid, index)
    else:
        cg.block_all(node, "grouped convolution")


def conv_transpose(cg: ChannelGraph, node: gs.Node) -> None:
    weight = constant_values(node.inputs[1])
    if weight is None or int(node.attrs.get("group", 1)) != 1:
        return cg.block_all(node, "grouped or non-constant ConvTranspose")
    consume(cg, node, node.inputs[0], 1, 1, 0)
    start_group(cg, node, 1, 1, weight.shape[1], node.outputs[0], 1, bias_input=2)


def gemm(cg: ChannelGraph, node: gs.Node) -> None:
    weight = constant_values(node.inputs[1])
    if weight is None or node.attrs.get("transA", 0):
        return cg.block_all(node, "Gemm with non-constant weight or transA")
    trans_b = int(node.attrs.get("transB", 0))
    consume(cg, node, node.inputs[0], 1, 1, 1 if trans_b else 0)
    features = weight.shape[0 if trans_b else 1]
    start_group(cg, node, 1, 0 if trans_b else 1, features, node.outputs[0], 1, bias_input=2)


def matmul(cg: ChannelGraph, node: gs.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    weight = constant_values(b)
    a_shape = cg.shape(a)
    if weight is not None and np.asarray(weight).ndim == 2:
        if a_shape is None:
            return cg.block_all(node, "unknown input rank")
        rank = len(a_shape)
        consume(cg, node, a, rank - 1, 1, 0, other_axes_ok=True)
        cg.carry(a.name, node.outputs[0].name, skip=(rank - 1,))
        start_group(cg, node, 1, 1, weight.shape[1], node.outputs[0], rank - 1, kind="neurons")
        return
    if constant_values(a) is not None:
        return cg.block_all(node, "MatMul with a constant left operand")
    b_shape = cg.shape(b)
    if a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2:
        return cg.block_all(node, "MatMul of unknown or 1-D shapes")
    out = node.outputs[0].name
    rank = max(len(a_shape), len(b_shape))
    ann_a, ann_b = cg.annotations(a.name), cg.annotations(b.name)
    for pairs in (ann_a.get(len(a_shape) - 1, []), ann_b.get(len(b_shape) - 2, [])):
        for gid, _ in pairs:
            cg.block(gid, f"contracted by {node.name}")
    batch_a = {ax + rank - len(a_shape): v for ax, v in ann_a.items() if ax < len(a_shape) - 2}
    batch_b = {ax + rank - len(b_shape): v for ax, v in ann_b.items() if ax < len(b_shape) - 2}
    couple_axes(cg, [batch_a, batch_b], [a_shape, b_shape], rank, out, node, batch_only=rank - 2)
    for pairs in ann_a.get(len(a_shape) - 2, []):
        cg.annotate(out, rank - 2, *pairs)
    for pairs in ann_b.get(len(b_shape) - 1, []):
        cg.annotate(out, rank - 1, *pairs)


def gather(cg: ChannelGraph, node: gs.Node) -> None:
    table = constant_values(node.inputs[0])
    axis = int(node.attrs.get("axis", 0))
    if table is not None and np.asarray(table).ndim == 2 and axis == 0:
        out_shape = cg.shape(node.outputs[0])
        if out_shape is None:
            return
        start_group(cg, node, 0, 1, table.shape[1], node.outputs[0], len(out_shape) - 1, kind="hidden")
        return
    data_shape = cg.shape(node.inputs[0])
    idx_shape = cg.shape(node.inputs[1])
    if data_shape is None or idx_shape is None:
        return cg.block_all(node, "unknown shapes")
    axis %= len(data_shape)
    for ax, pairs in cg.annotations(node.inputs[0].name).items():
        for gid, index in pairs:
            if ax == axis:
                cg.block(gid, f"gathered along its channel axis by {node.name}")
            else:
                new = ax if ax < axis else ax - 1 + len(idx_shape)
                cg.annotate(node.outputs[0].name, new, gid, index)
