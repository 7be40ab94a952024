"""Rule 5 of ``fuse`` (``unpad``): the layers between the embeddings and the head run on the
tokens only, not on the padding.

After rule 3 every padding-masked site reads only its rows' tokens as keys, but every other
layer (the projections, the FFN, the norms) still runs on every position, padding included:
at 23 tokens in 128 that is more than 80% of the work. Between the first attention site's
input and the tensors the model's head reads, each position's row is computed from its own
row only, except through the fused attention's keys, which padding never reaches. So:

1. The token region (``token_region``): from ``entry``, the tensor the first site's Q, K and
   V projections read (``[B, S, C]``, ``S`` the mask's length), every node in graph order
   whose data inputs are region tensors or constants that broadcast over the last axis only
   (``TOKENWISE_OPS``: MatMul by a constant matrix, element-wise arithmetic and activations,
   LayerNormalization over the last axis, a Split of the last axis, onnxruntime's
   SkipLayerNormalization / BiasGelu / FastGelu), the sites' GroupQueryAttention nodes and
   their key/value gathers. A region tensor read by any other node, or a graph output, is an
   exit.
2. The rewrite (``unpad``): the entry is gathered once to ``[B, L, C]``, each row's tokens
   first (``L``: the longest row's token count); the region runs on that; the per-layer
   key/value gathers go (the tokens are already first) and each GroupQueryAttention's total
   length becomes ``L``. Each exit is scattered back to ``[B, S, C']`` once, padding rows 0;
   a Shape of a region tensor reads ``[B, S]`` from the entry.
3. The check: the model's outputs are compared with the unpadded-less fused model's on the
   probe inputs (rule 4's, padded every way); when the head reads padded rows (a model
   whose output is every position's hidden state), an output moves and the padding is kept,
   with a note naming the output. Models whose head pools with the mask (sentence
   embeddings) or reads one token (a classifier's first token) keep their outputs.

Not applied when the sites are not all padding-masked by one input, the entry is not
``[B, S, C]``, or some site is outside the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.fuse.attention_rewrite import NodeMaker, PaddingPlan

ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Relu", "Sigmoid", "Sqrt", "Gelu",
                             "Cast", "Neg", "Abs", "Exp", "Log", "Softplus", "HardSigmoid", "HardSwish", "Identity",
                             "Reciprocal", "Clip", "LeakyRelu", "Where", "Max", "Min"})
MS_TOKENWISE_OPS = frozenset({"SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu"})
TOKENWISE_OPS = ELEMENTWISE_OPS | MS_TOKENWISE_OPS | {"MatMul", "LayerNormalization", "Split"}


@dataclass
class TokenRegion:
    entry: gs.Variable
    nodes: list[gs.Node] = field(default_factory=list)
    tensors: set[int] = field(default_factory=set)  # ids of region tensors
    exits: list[gs.Variable] = field(default_factory=list)
    gathers: list[gs.Node] = field(default_factory=list)  # the sites' key/value GatherNDs
    attention: list[gs.Node] = field(default_factory=list)


def projection_input(tensor: gs.Tensor) -> gs.Tensor | None:
    """The tensor a projection output (``MatMul(x, W)`` plus a bias, or a Split of one) reads."""
    for _ in range(4):
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None:
            return None
        if node.op == "MatMul" and constant_values(node.inputs[1]) is not None:
            return node.inputs[0]
        if node.op == "Add":
            variables = [t for t in node.inputs if constant_values(t) is None]
            if len(variables) != 1:
                return None
            tensor = variables[0]
        elif node.op == "Split":
            tensor = node.inputs[0]
        else:
            return None
    return None


def _broadcasts_over_last_axis(tensor: gs.Tensor) -> bool:
    values = constant_values(tensor)
    if values is None:
        return False
    shape = np.shape(values)
    return len(shape) <= 1 or all(d == 1 for d in shape[:-1])


def _tokenwise(node: gs.Node, inside) -> bool:
    """Rule 1's test for one node whose data inputs include a region tensor."""
    data = [t for t in node.inputs if t.name]
    if node.op == "MatMul":
        b = constant_values(node.inputs[1])
        return inside(node.inputs[0]) and b is not None and np.ndim(b) == 2
    if node.op == "LayerNormalization":
        return inside(node.inputs[0]) and node.attrs.get("axis", -1) == -1 and all(
            _broadcasts_over_last_axis(t) for t in data[1:])
    if node.op == "Split":
        rank = len(node.inputs[0].shape or ())
        return inside(node.inputs[0]) and node.attrs.get("axis", 0) in (-1, rank - 1) and rank == 3 and all(
            constant_values(t) is not None for t in data[1:])
    if node.op in ELEMENTWISE_OPS or node.op in MS_TOKENWISE_OPS:
        return all(inside(t) or _broadcasts_over_last_axis(t) for t in data)
    return False


def token_region(graph: gs.Graph, entry: gs.Variable, plan: PaddingPlan) -> TokenRegion:
    """Rule 1: the region reached from ``entry`` in graph order (the graph is sorted)."""
    region = TokenRegion(entry, tensors={id(entry)})
    inside = lambda t: id(t) in region.tensors  # noqa: E731
    for node in graph.nodes:
        if not any(inside(t) for t in node.inputs):
            continue
        if node.op == "GatherND" and plan.order is not None and node.inputs[1] is plan.order:
            region.gathers.append(node)
        elif node.op == "GroupQueryAttention" and node.inputs[5] is plan.seqlens_k:
            if not all(inside(t) for t in node.inputs[:3]):
                continue
            region.attention.append(node)
            region.tensors.add(id(node.outputs[0]))
            region.nodes.append(node)
            continue
        elif not _tokenwise(node, inside):
            continue
        region.nodes.append(node)
        region.tensors.update(id(t) for t in node.outputs)
    outputs = {id(t) for t in graph.outputs}
    node_ids = {id(n) for n in region.nodes}
    for node in region.nodes:
        for tensor in node.outputs:
            if id(tensor) in region.tensors and (id(tensor) in outputs
                                                  or any(id(r) not in node_ids for r in tensor.outputs)):
                region.exits.append(tensor)
    return region  # the entry itself stays computed in full for the readers outside


def unpad(graph: gs.Graph, make: NodeMaker, region: TokenRegion, plan: PaddingPlan, mask: gs.Variable) -> None:
    """Rule 2: the region runs on each row's tokens, gathered first, ``L`` rows long."""
    base = mask.name + "/fuse/unpad"
    node_ids = {id(n) for n in region.nodes}
    longest = make.node("ReduceMax", [plan.lengths], f"{base}/longest", dtype=np.int32, keepdims=1)[0]
    longest64 = make.node("Cast", [longest], f"{base}/longest_i64", dtype=np.int64, to=7)[0]
    longest_scalar = make.node("Squeeze", [longest], f"{base}/longest_scalar", dtype=np.int32)[0]
    order = plan.order
    if order is None:  # right padding: the tokens are already first
        shape = make.node("Shape", [mask], f"{base}/mask_shape", dtype=np.int64)[0]
        rows = make.node("Gather", [shape, make.const(f"{base}/axis0", np.array([0], np.int64))], f"{base}/rows",
                         dtype=np.int64, axis=0)[0]
        positions = make.node("Range", [make.const(f"{base}/zero", np.array(0, np.int64)),
                                        make.node("Squeeze", [longest64], f"{base}/longest64_scalar",
                                                  dtype=np.int64)[0],
                                        make.const(f"{base}/step", np.array(1, np.int64))],
                              f"{base}/positions", dtype=np.int64)[0]
        first = make.node("Expand", [make.node("Unsqueeze", [positions, make.const(f"{base}/ax01", np.array([0, 2], np.int64))],
                                               f"{base}/positions3", dtype=np.int64)[0],
                                     make.node("Concat", [rows, longest64, make.const(f"{base}/one1", np.array([1], np.int64))],
                                               f"{base}/first_shape", dtype=np.int64, axis=0)[0]],
                          f"{base}/first", dtype=np.int64)[0]
    else:
        first = make.node("Slice", [order, make.const(f"{base}/s0", np.array([0], np.int64)), longest64,
                                    make.const(f"{base}/a1", np.array([1], np.int64))], f"{base}/first",
                          dtype=np.int64)[0]
    tokens = make.node("GatherND", [region.entry, first], f"{base}/tokens", dtype=region.entry.dtype,
                       batch_dims=1)[0]
    for node in region.nodes:
        for i, tensor in enumerate(node.inputs):
            if tensor is region.entry:
                node.inputs[i] = tokens
    for gather in region.gathers:
        source, out = gather.inputs[0], gather.outputs[0]
        for reader in list(out.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is out:
                    reader.inputs[i] = source
    for node in region.attention:
        node.inputs[6] = longest_scalar
    positions_back = _scatter_index(make, base, first, mask, longest64)
    entry_shape = make.node("Shape", [region.entry], f"{base}/entry_shape", dtype=np.int64)[0]
    rows_and_length = make.node("Slice", [entry_shape, make.const(f"{base}/b0", np.array([0], np.int64)),
                                          make.const(f"{base}/b2", np.array([2], np.int64))],
                                f"{base}/rows_and_length", dtype=np.int64)[0]
    outputs = {id(t): i for i, t in enumerate(graph.outputs)}
    for tensor in region.exits:
        readers = [r for r in tensor.outputs if id(r) not in node_ids]
        full = _scatter_back(make, base, tensor, positions_back)
        for reader in readers:
            if reader.op == "Shape" and not reader.attrs:
                width = make.node("Shape", [tensor], f"{base}/{tensor.name}/width_shape", dtype=np.int64)[0]
                tail = make.node("Slice", [width, make.const(f"{base}/t2", np.array([2], np.int64)),
                                           make.const(f"{base}/t3", np.array([3], np.int64))],
                                 f"{base}/{tensor.name}/width", dtype=np.int64)[0]
                reader.op = "Concat"
                reader.inputs.clear()
                reader.inputs.extend([rows_and_length, tail])
                reader.attrs["axis"] = 0
                continue
            for i, t in enumerate(reader.inputs):
                if t is tensor:
                    reader.inputs[i] = full
        if id(tensor) in outputs:
            name = tensor.name
            tensor.name = make.name(name + "/tokens")
            full.name = name
            graph.outputs[outputs[id(tensor)]] = full
    for node in region.nodes:
        for tensor in node.outputs:
            tensor.shape = None


def _scatter_index(make: NodeMaker, base: str, first: gs.Variable, mask: gs.Variable,
                   longest64: gs.Variable) -> gs.Variable:
    """int64 [B, S, 1]: for each original position, its row in the gathered tokens, or ``L``
    (a zero row appended after them) for padding."""
    shape = make.node("Shape", [mask], f"{base}/mask_shape2", dtype=np.int64)[0]
    first2 = make.node("Squeeze", [first, make.const(f"{base}/ax2", np.array([2], np.int64))], f"{base}/first2",
                       dtype=np.int64)[0]
    ranks = make.node("Range", [make.const(f"{base}/r0", np.array(0, np.int64)),
                                make.node("Squeeze", [longest64], f"{base}/longest_s", dtype=np.int64)[0],
                                make.const(f"{base}/r1", np.array(1, np.int64))], f"{base}/ranks", dtype=np.int64)[0]
    ranks2 = make.node("Expand", [ranks, make.node("Shape", [first2], f"{base}/first_shape2", dtype=np.int64)[0]],
                       f"{base}/ranks2", dtype=np.int64)[0]
    filler = make.node("Expand", [longest64, shape], f"{base}/padding_rows", dtype=np.int64)[0]
    back = make.node("ScatterElements", [filler, first2, ranks2], f"{base}/back", dtype=np.int64, axis=1)[0]
    # a row's positions past its own tokens (but within L) were gathered from its padding:
    # they, too, read the zero row
    valid = make.node("Cast", [make.node("Cast", [mask], f"{base}/valid_b", dtype=np.bool_, to=9)[0]],
                      f"{base}/valid_b2", dtype=np.bool_, to=9)[0]
    back = make.node("Where", [valid, back, filler], f"{base}/back_tokens", dtype=np.int64)[0]
    return make.node("Unsqueeze", [back, make.const(f"{base}/ax2b", np.array([2], np.int64))], f"{base}/back3",
                     dtype=np.int64)[0]


def _scatter_back(make: NodeMaker, base: str, tensor: gs.Variable, back: gs.Variable) -> gs.Variable:
    padded = make.node("Pad", [tensor, make.const(f"{base}/pads", np.array([0, 0, 0, 0, 1, 0], np.int64))],
                       f"{base}/{tensor.name}/with_zero_row", dtype=tensor.dtype)[0]
    return make.node("GatherND", [padded, back], f"{base}/{tensor.name}/full", dtype=tensor.dtype, batch_dims=1)[0]
