"""Channel rules of normalisations, Softmax and reductions: ops that mix values along an axis.

Rules:

- BatchNormalization (inference mode, constant parameters) and InstanceNormalization pass
  channel axis 1 through; their per-channel parameters are ``parameter`` members (sliced);
  another annotated axis blocks, as do training mode, used mean/var outputs and
  non-constant BatchNormalization parameters;
- LayerNormalization over an annotated axis blocks (it normalises the channels together),
  unless ``hidden=true`` allows it: its scale and bias are sliced (not exact); axes before
  its ``axis`` pass through;
- Softmax / LogSoftmax over an annotated axis blocks; its other axes pass through;
- reductions (``REDUCTIONS``, ArgMax, ArgMin) over an annotated axis block; the other axes
  pass through (renumbered with ``keepdims=0``); non-constant reduction axes block.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values

if TYPE_CHECKING:
    from graphc.passes.prune.channel_graph import ChannelGraph

REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd",
              "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin"}


def norm_params(cg: ChannelGraph, node: gs.Node, inputs: Iterable[int]) -> None:
    for axis, pairs in cg.annotations(node.inputs[0].name).items():
        for gid, index in pairs:
            if axis != 1:
                cg.block(gid, f"annotated axis {axis} into {node.op} {node.name}")
                continue
            for i in inputs:
                if i < len(node.inputs) and node.inputs[i].name:
                    cg.param("parameter", node, i, 0, gid, index)
            cg.annotate(node.outputs[0].name, 1, gid, index)


def batchnorm(cg: ChannelGraph, node: gs.Node) -> None:
    if node.attrs.get("training_mode", 0) or any(t.outputs for t in node.outputs[1:]):
        return cg.block_all(node, "BatchNormalization in training mode")
    if any(constant_values(t) is None for t in node.inputs[1:5]):
        return cg.block_all(node, "non-constant BatchNormalization parameters")
    norm_params(cg, node, (1, 2, 3, 4))


def instancenorm(cg: ChannelGraph, node: gs.Node) -> None:
    norm_params(cg, node, (1, 2))


def layernorm(cg: ChannelGraph, node: gs.Node) -> None:
    shape = cg.shape(node.inputs[0])
    if shape is None:
        return cg.block_all(node, "unknown rank")
    first = int(node.attrs.get("axis", -1)) % len(shape)
    for axis, pairs in cg.annotations(node.inputs[0].name).items():
        for gid, index in pairs:
            if axis >= first and not cg.allow_hidden_norm:
                cg.block(gid, f"normalized together by LayerNormalization {node.name}")
            elif axis >= first:
                for i in (1, 2):
                    if i < len(node.inputs) and node.inputs[i].name:
                        cg.param("parameter", node, i, axis - first, gid, index)
            cg.annotate(node.outputs[0].name, axis, gid, index)


def softmax(cg: ChannelGraph, node: gs.Node) -> None:
    shape = cg.shape(node.inputs[0])
    if shape is None:
        return cg.block_all(node, "unknown rank")
    axis = int(node.attrs.get("axis", -1)) % len(shape)
    cg.carry(node.inputs[0].name, node.outputs[0].name, lambda a: None if a == axis else a)


def reduction(cg: ChannelGraph, node: gs.Node) -> None:
    shape = cg.shape(node.inputs[0])
    if shape is None:
        return cg.block_all(node, "unknown rank")
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = constant_values(node.inputs[1])
        if axes is None:
            return cg.block_all(node, "non-constant reduction axes")
    if node.op in ("ArgMax", "ArgMin"):
        axes = [node.attrs.get("axis", 0)]
    rank = len(shape)
    axes = sorted(int(a) % rank for a in (range(rank) if axes is None or len(axes) == 0 else np.ravel(axes)))
    keep = int(node.attrs.get("keepdims", 1))

    def new_axis(a: int) -> int | None:
        if a in axes:
            return None
        return a if keep else a - sum(1 for r in axes if r < a)

    cg.carry(node.inputs[0].name, node.outputs[0].name, new_axis)
