"""The reference a pruned model must equal: the original with exactly the removed channels'
consumer weights zeroed (``mask_pruned_channels``), and a helper that builds both."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.graph import constant_values, swap_tensor, to_graph, to_model
from graphc.passes.prune import PruneOptions, apply_pruning, plan_pruning


def mask_pruned_channels(plan) -> None:
    """Zero, instead of removing, the consumer slices of the planned units (in ``plan.graph``):
    the reference the pruned model must equal (cuts exactly the removed channels' contribution)."""
    for group in plan.groups:
        channels = plan.removed_channels(group)
        for member in (m for m in group.params() if m.kind == "consumer" and channels):
            tensor = member.node.inputs[member.input_index]
            values = np.array(constant_values(tensor), copy=True)
            index = member.index[channels]
            positions = np.unique(index[index >= 0])
            slicer = [slice(None)] * values.ndim
            slicer[member.axis] = positions
            values[tuple(slicer)] = 0
            swap_tensor(member.node.inputs, tensor, gs.Constant(f"{tensor.name}_masked{group.id}", values))


def pruned_and_masked(model: onnx.ModelProto, options: PruneOptions):
    """The plan, the pruned model, and the masked reference of the same plan."""
    plan = plan_pruning(to_graph(model), options)
    apply_pruning(plan)
    reference = plan_pruning(to_graph(model), options)
    mask_pruned_channels(reference)
    return plan, to_model(plan.graph, model), to_model(reference.graph, model)
