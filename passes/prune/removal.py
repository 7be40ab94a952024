"""Rule 4 of ``prune``: removal of the planned units.

Every weight slice of a removed unit is deleted (producer outputs, consumer inputs,
BatchNorm/bias/depthwise parameters, Reshape target-shape constants, Split sizes, a
depthwise Conv's ``group``); shapes are re-inferred by the pass. Input and output shapes of
the model never change.

A constant is never edited: the node whose input changes gets a new constant under a name
no other tensor has (``graphc.graph.unique_name``), so a constant other nodes share (one
split-sizes initializer read by two Splits of equal width, one target shape read by the Q,
K and V Reshapes) stays as it was for them, and two rewritten copies never meet under one
name (an ONNX file holds one initializer per name: the second would silently replace the
first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.errors import GraphcError
from graphc.graph import clear_intermediate_shapes, constant_values, swap_tensor, unique_name
from graphc.passes.prune.channel_groups import ChannelGroup

if TYPE_CHECKING:
    from graphc.passes.prune.plan import PrunePlan


def apply_pruning(plan: PrunePlan) -> None:
    """Delete the planned units' slices from every member of their groups (in ``plan.graph``)."""
    graph = plan.graph
    taken = set(graph.tensors())
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
            _shrink_reshape(graph, node, axis, _removed_on_axis(group, channels, node.outputs[0].name, axis), taken)
        for node, k in group.splits:
            _shrink_split(node, k, _removed_on_axis(group, channels, node.outputs[k].name,
                                                    int(node.attrs.get("axis", 0)), any_axis=True), taken)

    shared: dict[tuple[int, str], gs.Constant] = {}
    for node, input_index, axes in removals.values():
        tensor = node.inputs[input_index]
        values = np.asarray(constant_values(tensor))
        key = (id(tensor), repr(sorted((a, sorted(p)) for a, p in axes.items())))
        if key not in shared:
            for axis, positions in sorted(axes.items()):
                values = np.delete(values, sorted(positions), axis=axis)
            shared[key] = gs.Constant(unique_name(f"{tensor.name}_pruned", taken), values)
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


def _shrink_split(node: gs.Node, k: int, removed: int, taken: set[str]) -> None:
    """Lower the size of Split output ``k`` by ``removed`` (split sizes input or attribute)."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        sizes = np.array(constant_values(node.inputs[1]), copy=True)
        sizes[k] -= removed
        new = gs.Constant(unique_name(f"{node.inputs[1].name}_pruned", taken), sizes)
        swap_tensor(node.inputs, node.inputs[1], new)
    elif "split" in node.attrs:
        sizes = list(node.attrs["split"])
        sizes[k] -= removed
        node.attrs["split"] = sizes
    else:
        raise GraphcError(f"cannot prune through Split {node.name}: equal split sizes cannot shrink one output")


def _shrink_reshape(graph: gs.Graph, node: gs.Node, axis: int, removed: int, taken: set[str]) -> None:
    """Lower the Reshape target-shape entry of ``axis`` by ``removed`` (a constant there)."""
    shape_input = node.inputs[1]
    values = constant_values(shape_input)
    if values is not None:
        new = np.array(values, copy=True)
        new[axis] -= removed
        swap_tensor(node.inputs, shape_input, gs.Constant(unique_name(f"{shape_input.name}_pruned", taken), new))
        return
    concat = shape_input.inputs[0]
    if len(shape_input.outputs) > 1:  # a target shape other Reshapes read too: this one gets its own
        own = gs.Variable(unique_name(f"{shape_input.name}_pruned", taken), shape_input.dtype, shape_input.shape)
        concat = concat.copy(inputs=list(concat.inputs), outputs=[own])
        concat.name = f"{concat.name}_pruned"
        graph.nodes.append(concat)
        swap_tensor(node.inputs, shape_input, own)
    offset = 0
    for piece in list(concat.inputs):
        piece_values = np.asarray(constant_values(piece)) if constant_values(piece) is not None else None
        length = piece_values.size if piece_values is not None else 1
        if offset <= axis < offset + length:
            new = np.array(piece_values, copy=True).reshape(piece_values.shape)
            new.flat[axis - offset] -= removed
            swap_tensor(concat.inputs, piece, gs.Constant(unique_name(f"{piece.name or 'shape'}_pruned", taken), new))
            return
        offset += length
