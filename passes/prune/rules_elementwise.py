"""Channel rules of element-wise ops: pass-through, and broadcasting (residuals, scales).

Rules:

- pass-through with the same axes (``UNARY``: activations, Cast, Identity, Dropout, Clip,
  ...; ``POOLING``; Resize and Upsample): the first input's annotations carry to the output;
  an annotated second input (a Clip bound, a Resize scale) blocks; pooling or resizing with
  an annotated spatial axis (or axis 0) blocks;
- element-wise ops (``ELEMENTWISE``: Add/Sub/Mul/Div/Max/Min/Where/PRelu/..., and Expand on
  its first input) broadcast: two annotated inputs on one output axis are coupled
  (residuals, squeeze-excitation scales); a constant of full size on an annotated axis is a
  per-channel ``parameter`` member (sliced); an unannotated variable of full size on that
  axis blocks; unknown shapes block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.prune.channel_groups import Shape

if TYPE_CHECKING:
    from graphc.passes.prune.channel_graph import ChannelGraph

UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus",
         "Softsign", "Gelu", "Erf", "Clip", "Identity", "Dropout", "Cast", "CastLike", "Neg", "Abs", "Sqrt", "Exp",
         "Log", "Reciprocal", "Mish", "ThresholdedRelu", "Round", "Floor", "Ceil", "Sign", "Not", "IsNaN", "Sin",
         "Cos", "QuickGelu", "FastGelu", "BiasGelu", "Swish"}
POOLING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "PRelu", "Equal",
               "Greater", "Less", "And", "Or"}


def passthrough(cg: ChannelGraph, node: gs.Node) -> None:
    for tensor in node.inputs[1:]:
        for pairs in cg.annotations(tensor.name).values():
            for gid, _ in pairs:
                cg.block(gid, f"used as a parameter of {node.op} {node.name}")
    cg.carry(node.inputs[0].name, node.outputs[0].name)
    if node.op in POOLING or node.op in ("Resize", "Upsample"):
        for axis, pairs in cg.annotations(node.inputs[0].name).items():
            if axis >= 2 or axis == 0:
                for gid, _ in pairs:
                    cg.block(gid, f"{node.op} on an annotated spatial axis ({node.name})")


def couple_axes(cg: ChannelGraph, per_input: list[dict], shapes: list[Shape], rank: int, out: str, node: gs.Node,
                batch_only: int | None = None) -> None:
    """Broadcast rule: couple annotated inputs per output axis; block on untracked ones."""
    for out_axis in range(rank if batch_only is None else batch_only):
        pairs = [(i, p) for i, ann in enumerate(per_input) for p in ann.get(out_axis, [])]
        if not pairs:
            continue
        annotated_inputs = {i for i, _ in pairs}
        for i, shape in enumerate(shapes):
            if i in annotated_inputs or shape is None:
                continue
            k = out_axis - (rank - len(shape))
            if k >= 0 and shape[k] != 1:
                for _, (gid, _) in pairs:
                    cg.block(gid, f"meets an untracked tensor on axis {out_axis} at {node.op} {node.name}")
        first_gid, first_index = pairs[0][1]
        for _, (gid, index) in pairs[1:]:
            cg.merge(gid, index, first_gid, first_index, f"{node.op} {node.name}")
        cg.annotate(out, out_axis, first_gid, first_index)


def elementwise(cg: ChannelGraph, node: gs.Node) -> None:
    shapes = [cg.shape(t) if t.name else None for t in node.inputs]
    out_shape = cg.shape(node.outputs[0])
    if out_shape is None or any(s is None for s, t in zip(shapes, node.inputs) if t.name):
        return cg.block_all(node, "unknown shapes")
    rank = len(out_shape)
    per_input = []
    for i, tensor in enumerate(node.inputs):
        ann = cg.annotations(tensor.name) if tensor.name else {}
        per_input.append({ax + rank - len(shapes[i]): v for ax, v in ann.items()})
    if node.op == "Expand":
        per_input, shapes = per_input[:1], shapes[:1]
    for i, tensor in enumerate(node.inputs[: len(per_input)]):  # per-channel constants are sliced
        values = constant_values(tensor)
        if values is None:
            continue
        for out_axis in {ax for ann in per_input for ax in ann}:
            k = out_axis - (rank - len(shapes[i]))
            if k >= 0 and shapes[i][k] != 1:
                for ann in per_input:
                    for gid, index in ann.get(out_axis, []):
                        cg.param("parameter", node, i, k, gid, index)
                shapes[i] = tuple(1 if j == k else d for j, d in enumerate(shapes[i]))  # handled
    couple_axes(cg, per_input, shapes, rank, node.outputs[0].name, node)
