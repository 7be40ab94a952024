"""``recalibrate=true`` of ``prune`` (its rule 5) and ``sparsify`` (with ``--data``):
re-estimate BatchNormalization running statistics on data, after the pass.

Pruning removes input channels of the layers before a BatchNorm, and sparsifying zeroes most
of their weights, so the statistics it was trained with no longer describe its input. One streamed pass of the tensor tap over the data
exposes every BatchNorm input and accumulates per-channel sums and sums of squares
(float64); mean and population variance replace the node's ``input_mean`` / ``input_var``.
Memory stays at two vectors per BatchNorm whatever the number of samples.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.data import Dataset
from graphc.graph import swap_tensor
from graphc.runtime import tap_graph


def recalibrate_batchnorm(graph: gs.Graph, data: Dataset, batch_size: int = 64, threads: int | None = None) -> int:
    """Update the statistics of every inference BatchNorm in ``graph``; returns how many."""
    norms = [n for n in graph.nodes if n.op == "BatchNormalization" and not n.attrs.get("training_mode", 0)]
    if not norms:
        return 0
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def reduce(name: str, values: np.ndarray, piece) -> None:
        x = np.moveaxis(values.astype(np.float64), 1, 0).reshape(values.shape[1], -1)
        sums[name] = sums.get(name, 0) + x.sum(1)
        squares[name] = squares.get(name, 0) + (x * x).sum(1)
        counts[name] = counts.get(name, 0) + x.shape[1]

    tap_graph(graph, [n.inputs[0].name for n in norms], data, reduce, batch_size, threads,
              what="the BatchNorm statistics probe")
    for node in norms:
        name = node.inputs[0].name
        mean = sums[name] / counts[name]
        var = np.maximum(squares[name] / counts[name] - mean * mean, 0.0)
        dtype = node.inputs[3].values.dtype if isinstance(node.inputs[3], gs.Constant) else np.float32
        swap_tensor(node.inputs, node.inputs[3], gs.Constant(f"{node.name}_recalibrated_mean", mean.astype(dtype)))
        swap_tensor(node.inputs, node.inputs[4], gs.Constant(f"{node.name}_recalibrated_var", var.astype(dtype)))
    graph.cleanup(remove_unused_graph_inputs=False)
    return len(norms)
