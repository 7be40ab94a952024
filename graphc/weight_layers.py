"""The layers whose weights sparsity applies to, found in a graph (``sparsify`` and distill's
gradual sparsity both read them; the patterns and the selection are ``graphc.sparsity``).

Rules:

1. A layer weight is a float initializer read as the weight of MatMul (input 1, rank 2),
   Gemm (input 1; ``transB`` gives its layout) or Conv (input 1) in the main graph. Its
   layout is ``graphc.sparsity`` rule 1; its activation input and that input's channel axis
   (MatMul: the last; Gemm: 1, or 0 with ``transA=1``; Conv: 1) are what wanda measures.
2. A weight left dense, with the reason: read by any other node or input slot than such
   weights of the same layout (a tied embedding table, a weight shared between a Gemm and
   a MatMul), or a graph output; a MatMul weight of rank other than 2; a weight read through
   DequantizeLinear (already quantized) is not a float initializer and is not listed.
3. ``exclude`` globs match the initializer name or the name of any node reading it;
   ``min_size``: weights with fewer elements stay dense; a weight whose view does not divide
   into the pattern's groups or blocks stays dense (``pattern_layers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.sparsity import Layout, to_view

FLOAT_KINDS = (np.float32, np.float16, np.float64)
LAYERS_IN_NOTE = 4


@dataclass
class WeightLayer:
    """One layer weight (rule 1) and, when it stays dense, why (``skip``)."""

    name: str
    tensor: gs.Constant
    layout: Layout
    nodes: list[gs.Node]
    inputs: list[tuple[gs.Tensor, int]] = field(default_factory=list)  # (activation, channel axis) per node
    skip: str | None = None

    @property
    def op(self) -> str:
        return self.nodes[0].op

    @property
    def size(self) -> int:
        return int(np.prod(self.tensor.shape, dtype=np.int64))


def _reading(node: gs.Node, tensor: gs.Tensor) -> tuple[Layout, tuple[gs.Tensor, int]] | None:
    """The layout and the activation input of ``node`` reading ``tensor`` as its weight, or None."""
    if len(node.inputs) < 2 or node.inputs[1] is not tensor or any(t is tensor for t in [node.inputs[0],
                                                                                          *node.inputs[2:]]):
        return None
    if node.op == "MatMul":
        if len(tensor.shape) != 2:
            return None
        return Layout("kn"), (node.inputs[0], -1)
    if node.op == "Gemm":
        attrs = node.attrs
        layout = Layout("nk" if attrs.get("transB", 0) else "kn")
        return layout, (node.inputs[0], 0 if attrs.get("transA", 0) else 1)
    if node.op == "Conv" and len(tensor.shape) >= 3:
        return Layout("conv", int(node.attrs.get("group", 1))), (node.inputs[0], 1)
    return None


def weight_layers(graph: gs.Graph) -> list[WeightLayer]:
    """Every layer weight of the main graph (rules 1-2), in node order."""
    outputs = {id(t) for t in graph.outputs}
    found: dict[int, WeightLayer] = {}
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm", "Conv") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant) or id(weight) in found:
            continue
        if weight.dtype is None or np.dtype(weight.dtype).type not in FLOAT_KINDS:
            continue
        if node.op == "MatMul" and len(weight.shape) != 2:
            found[id(weight)] = WeightLayer(weight.name, weight, Layout("kn"), [node],
                                            skip=f"a rank-{len(weight.shape)} MatMul weight")
            continue
        readings = [(reader, _reading(reader, weight)) for reader in weight.outputs]
        layouts = {r[0] for _, r in readings if r is not None}
        first = _reading(node, weight)
        if first is None:
            continue
        layer = WeightLayer(weight.name, weight, first[0], [r for r, x in readings if x is not None],
                            [x[1] for _, x in readings if x is not None])
        others = [reader.op for reader, r in readings if r is None]
        if others:
            layer.skip = f"shared with {', '.join(sorted(set(others)))}"
        elif len(layouts) > 1:
            layer.skip = "read in two layouts"
        elif id(weight) in outputs:
            layer.skip = "a graph output"
        found[id(weight)] = layer
    return list(found.values())


def selected_layers(graph: gs.Graph, exclude, min_size: int) -> tuple[list[WeightLayer], list[WeightLayer]]:
    """(chosen, left dense) under rules 2-3; every left-dense layer has ``skip`` set."""
    chosen, dense = [], []
    for layer in weight_layers(graph):
        if layer.skip is None and exclude and exclude.matches(layer.name, *(n.name for n in layer.nodes)):
            layer.skip = "excluded"
        if layer.skip is None and layer.size < min_size:
            layer.skip = f"{layer.size} weights < min_size {min_size}"
        (dense if layer.skip else chosen).append(layer)
    return chosen, dense


def pattern_layers(graph: gs.Graph, pattern, exclude, min_size: int,
                   dtypes: tuple = FLOAT_KINDS) -> tuple[list[WeightLayer], list[np.ndarray], list[WeightLayer]]:
    """(layers, their ``[P, N, K]`` views, left dense) for sparsifying with ``pattern``
    (a ``graphc.sparsity.Pattern``): ``selected_layers``, less those whose view does not divide
    into the pattern's groups or blocks, or whose dtype is not in ``dtypes``, each with why."""
    chosen, dense = selected_layers(graph, exclude, min_size)
    fitting, views = [], []
    for layer in chosen:
        values = np.asarray(layer.tensor.values)
        view = to_view(values, layer.layout)
        misfit = pattern.misfit(view.shape)
        if values.dtype.type not in dtypes:
            layer.skip = f"{values.dtype} weights"
        elif misfit is not None:
            layer.skip = f"{pattern}: {misfit}"
        else:
            fitting.append(layer)
            views.append(view)
            continue
        dense.append(layer)
    return fitting, views, dense


def channel_norms(graph: gs.Graph, layers: list[WeightLayer], data, threads: int | None = None,
                  batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per layer, the L2 norm of each input channel of its activation over every row and
    position of ``data`` (``graphc.sparsity`` rule 3), from one streamed run of the tensor tap
    (``graphc.runtime.tap``: memory holds per-channel sums of squares only). A weight read
    by several nodes sums the squares of all their inputs."""
    from graphc.runtime import tap_graph

    wanted: dict[str, set[int]] = {}
    for layer in layers:
        for tensor, axis in layer.inputs:
            wanted.setdefault(tensor.name, set()).add(axis)
    squares: dict[tuple[str, int], np.ndarray] = {}

    def reduce(name: str, values: np.ndarray, piece) -> None:
        array = values.astype(np.float64)
        for axis in wanted[name]:
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            squares[(name, axis)] = squares.get((name, axis), 0) + np.einsum("ij,ij->i", moved, moved)

    tap_graph(graph, sorted(wanted), data, reduce, batch_size, threads, what="the wanda activation probe")
    return {layer.name: np.sqrt(sum(squares[(t.name, a)] for t, a in layer.inputs)) for layer in layers}


def computed_weights(graph: gs.Graph) -> int:
    """MatMul/Gemm/Conv weights computed from constants by a node (an export without constant
    folding: ``Transpose(initializer)``): ``fold`` turns them into initializers."""
    count = 0
    for node in graph.nodes:
        if node.op in ("MatMul", "Gemm", "Conv") and len(node.inputs) > 1:
            weight = node.inputs[1]
            source = weight.inputs[0] if isinstance(weight, gs.Variable) and len(weight.inputs) == 1 else None
            if source is not None and source.inputs and all(isinstance(t, gs.Constant) for t in source.inputs):
                count += 1
    return count


def dense_summary(dense: list[WeightLayer]) -> str:
    """The first few layers left dense and why, for a one-line note."""
    shown = "; ".join(f"{d.name}: {d.skip}" for d in dense[:LAYERS_IN_NOTE])
    return shown + (f"; {len(dense) - LAYERS_IN_NOTE} more in the report" if len(dense) > LAYERS_IN_NOTE else "")
