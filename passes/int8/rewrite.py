"""Rules 2-6, 9 and 10 applied to a planned graph: the one rewrite both the plain run and every
accuracy-budget candidate (rule 8) go through."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from graphc.graph import unique_namer
from graphc.passes.int8.activation_chains import CHAIN_OPS, drop_rescales, quantize_constant_inputs
from graphc.passes.int8.activations import QParams, absorb_activations, insert_qdq, uncount_ceil_pools
from graphc.passes.int8.dynamic import quantize_dynamic_node
from graphc.passes.int8.embeddings import quantize_embeddings
from graphc.passes.int8.plan import NodePlan
from graphc.passes.int8.weights import WeightCache, quantize_static_node

if TYPE_CHECKING:
    from graphc.passes.int8 import Int8Options


def name_maker(graph: gs.Graph) -> Callable[[str], str]:
    """``names(base)``: a tensor/node name for an inserted node, unique in ``graph``
    (``graphc.graph.unique_namer``: over the names the graph has when it is made)."""
    return unique_namer(graph)


def rewrite(graph: gs.Graph, plan: NodePlan, params: dict[str, QParams], opts: Int8Options, qmax: int) -> dict:
    """Rules 2-6 and 10 applied to the planned nodes with the given activation parameters."""
    stats = {}
    names = name_maker(graph)
    weights = WeightCache(names, qmax, opts.per_channel)
    for node in plan.static:
        quantize_static_node(node, params, weights, opts.target, names)
    graph.nodes.extend(weights.nodes)
    if opts.target == "ort":
        stats["activations_absorbed"] = absorb_activations(graph, params)
        stats["ceil_pools_uncounted"] = uncount_ceil_pools(graph, params)
    insert_qdq(graph, params, names, plan.static, CHAIN_OPS if opts.target == "ort" else ())
    if opts.target == "ort":
        stats["chain_constants_quantized"] = quantize_constant_inputs(graph, params, names)
        stats["rescales_dropped"] = drop_rescales(graph)
    dynamic_inputs: dict[int, list[gs.Variable]] = {}  # one DynamicQuantizeLinear per tensor
    for node in plan.dynamic:
        quantize_dynamic_node(graph, node, weights, names, dynamic_inputs)
    if opts.target == "ort" and opts.embeddings:
        stats["embeddings_quantized"] = quantize_embeddings(graph, names)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    stats["quantized_tensors"] = len(params)
    return stats
