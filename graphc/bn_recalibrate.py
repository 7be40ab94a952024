"""``recalibrate=true`` of ``prune`` (its rule 5) and ``sparsify`` (with ``--data``):
re-estimate BatchNormalization running statistics on data, after the pass.

Pruning removes input channels of the layers before a BatchNorm, and sparsifying zeroes most
of their weights, so the statistics it was trained with no longer describe its input. One streamed pass of the tensor tap over the data
exposes every BatchNorm input and accumulates per-channel sums and sums of squares
(float64); mean and population variance replace the node's ``input_mean`` / ``input_var``.
Memory stays at two vectors per BatchNorm whatever the number of samples.

Level by level: a BatchNorm's input depends on the statistics of the BatchNorms before it, so
the BatchNorms are measured in passes, each over the model with every earlier level already
updated (level = how many BatchNorms lie on the longest path before its input). A model with
L levels costs L streamed passes; measuring all in one pass over the old statistics left the
later ones describing inputs the recalibrated model never produces (on a residual CNN: means
off by up to 2.4 standard deviations, variances 100x too small).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.data import Dataset
from graphc.graph import swap_tensor
from graphc.runtime import tap_graph


def _depths(graph: gs.Graph, norms: list[gs.Node]) -> list[int]:
    """Per BatchNorm in ``norms``: how many of them lie on the longest path before its input."""
    counted = {id(n) for n in norms}
    level: dict[str, int] = {}
    graph.toposort()
    for node in graph.nodes:
        base = max((level.get(t.name, 0) for t in node.inputs), default=0)
        for tensor in node.outputs:
            level[tensor.name] = base + (id(node) in counted)
    return [level.get(n.inputs[0].name, 0) for n in norms]


def recalibrate_batchnorm(graph: gs.Graph, data: Dataset, batch_size: int = 64, threads: int | None = None) -> int:
    """Update the statistics of every inference BatchNorm in ``graph``, level by level;
    returns how many."""
    norms = [n for n in graph.nodes if n.op == "BatchNormalization" and not n.attrs.get("training_mode", 0)]
    if not norms:
        return 0
    depths = _depths(graph, norms)
    for depth in sorted(set(depths)):
        _recalibrate(graph, [n for n, d in zip(norms, depths) if d == depth], data, batch_size, threads)
    graph.cleanup(remove_unused_graph_inputs=False)
    return len(norms)


def _recalibrate(graph: gs.Graph, norms: list[gs.Node], data: Dataset, batch_size: int, threads: int | None) -> None:
    """One streamed pass measuring the inputs of ``norms`` (no one of them before another)."""
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
