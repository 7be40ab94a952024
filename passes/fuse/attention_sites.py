"""Rule 1 of ``fuse``: find the scaled dot-product attention cores exporters write out.

A site is found from its Softmax outwards (``find_sites``), for the layouts the torch
exporters (TorchScript and ``torch.export``) write for Hugging Face eager and SDPA attention:

- ``Softmax`` over the last axis of a rank-4 tensor, whose input is ``scores`` plus at most
  one additive term (the mask, ``bias``), and whose output reaches the second MatMul
  directly or through SDPA's ``Where(IsNaN(p), 0, p)``;
- ``scores`` is ``MatMul(q4, kt4)`` times or divided by scalar constants;
- ``q4`` (``[B, H, S, D]``), ``kt4`` (``[B, H, D, S]``) and the second MatMul's ``v4``
  (``[B, H, S, D]``) each come from a rank-3 ``[B, S, H*D]`` tensor (``q``, ``k``, ``v``: the
  projections' outputs) through layout nodes only (Reshape, Transpose) and scalar Mul/Div
  (SDPA scales both q and k by the square root of the scale);
- the context ``MatMul(p, v4)`` goes back to a rank-3 ``[B, S, H*D]`` tensor (``out``)
  through Transpose/Reshape nodes read by nothing else.

``D`` is read from the annotated shape of ``q4`` and must be static; ``H`` is q's static
width over ``D`` (exporters write the heads as -1), and k, v and out have q's width. The site's scale is the product of every scalar on
the three paths. Which way the layout nodes move the axes is not read from their
attributes: every site's fused form is run against the original on probe inputs before it
is kept (``checks``), and a site whose layout means something else is left as it was.

Left alone: Softmax over another axis, more than one additive term (relative position
biases plus a mask), a Where-style mask (``Where(mask, scores, -inf)``), attention
probabilities read by anything else (``output_attentions``), Q/K/V not reachable through
layout nodes (Paddle's fused ``[B, T, 3, H, D]`` Slice layout), non-static heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.graph import constant_values, producer

LAYOUT_OPS = ("Reshape", "Transpose")
SCALE_OPS = ("Mul", "Div")


@dataclass
class AttentionSite:
    """One attention core: its rank-3 inputs and output, heads, scale and additive mask."""

    softmax: gs.Node
    q: gs.Variable
    k: gs.Variable
    v: gs.Variable
    out: gs.Variable
    heads: int
    head_size: int
    scale: float
    bias: gs.Tensor | None = None  # the additive term before the Softmax
    nodes: list[gs.Node] = field(default_factory=list)  # the core's nodes, out's producer last

    @property
    def name(self) -> str:
        return self.softmax.name or self.softmax.outputs[0].name


def _scalar(tensor: gs.Tensor) -> float | None:
    values = constant_values(tensor)
    if values is None or np.asarray(values).size != 1 or np.asarray(values).dtype.kind != "f":
        return None
    return float(np.asarray(values).reshape(()))


def _scaled(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """``(x, factor)`` for ``Mul(x, c)``, ``Mul(c, x)`` or ``Div(x, c)`` with a scalar c."""
    if node.op not in SCALE_OPS or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if node.op == "Div":
        c = _scalar(b)
        return (a, 1.0 / c) if c not in (None, 0.0) else None
    for x, c in ((a, _scalar(b)), (b, _scalar(a))):
        if c is not None:
            return x, c
    return None


def _single_reader(tensor: gs.Tensor) -> bool:
    """Read by one node besides Shape nodes (exporters read shapes off the attention layout
    to build the output's Reshape target; those go dead with the site)."""
    return len(_readers(tensor)) == 1


def _readers(tensor: gs.Tensor) -> list[gs.Node]:
    return [n for n in tensor.outputs if n.op != "Shape"]


def _up_to_rank3(tensor: gs.Tensor, fits, nodes: list[gs.Node]) -> tuple[gs.Variable, float] | None:
    """Walk from a rank-4 operand back through layout nodes and scalar factors to the first
    rank-3 tensor whose static last dim ``fits``; returns it and the product of the factors.
    Every node walked through must be read only by the path (it is removed with the site)."""
    factor = 1.0
    seen = 0
    while True:
        if seen and tensor.shape is not None and len(tensor.shape) == 3 and _static_dim(tensor, 2) and fits(_static_dim(tensor, 2)):
            return tensor, factor
        node = producer(tensor)
        if node is None or not _single_reader(tensor) or seen > 8:
            return None
        scaled = _scaled(node)
        if scaled is not None:
            tensor, c = scaled
            factor *= c
        elif node.op in LAYOUT_OPS:
            tensor = node.inputs[0]
        else:
            return None
        nodes.append(node)
        seen += 1


def _down_to_rank3(tensor: gs.Tensor, nodes: list[gs.Node]) -> gs.Variable | None:
    """Walk from the context MatMul's output forward through Transpose/Reshape nodes, each
    the only reader, to the first rank-3 tensor."""
    for _ in range(4):
        if not _single_reader(tensor):
            return None
        node = _readers(tensor)[0]
        if node.op not in LAYOUT_OPS or node.inputs[0] is not tensor:
            return None
        nodes.append(node)
        tensor = node.outputs[0]
        if tensor.shape is not None and len(tensor.shape) == 3:
            return tensor
    return None


def _scores_and_bias(x: gs.Tensor) -> tuple[gs.Tensor, list[gs.Tensor], list[gs.Node]] | None:
    """Split the Softmax input into the scores chain and the additive terms before it."""
    terms, nodes = [], []
    while True:
        node = producer(x)
        if node is None or node.op != "Add" or not _single_reader(x):
            return x, terms, nodes
        a, b = node.inputs
        if _reaches_matmul(a):
            x, term = a, b
        elif _reaches_matmul(b):
            x, term = b, a
        else:
            return None
        terms.append(term)
        nodes.append(node)


def _reaches_matmul(tensor: gs.Tensor) -> bool:
    for _ in range(4):
        node = producer(tensor)
        if node is None:
            return False
        if node.op == "MatMul":
            return True
        scaled = _scaled(node)
        if scaled is None:
            return False
        tensor = scaled[0]
    return False


def _probabilities_reader(p: gs.Tensor, nodes: list[gs.Node]) -> gs.Node | None:
    """The context MatMul reading the probabilities, directly, through a Cast to their own
    float type (TorchScript's ``.to(v.dtype)``) or through SDPA's ``Where(IsNaN(p), 0, p)``."""
    readers = list(p.outputs)
    while len(readers) == 1 and readers[0].op == "Cast" and _identity_cast(readers[0], p):
        nodes.append(readers[0])
        p = readers[0].outputs[0]
        readers = list(p.outputs)
    if len(readers) == 1 and readers[0].op == "MatMul" and readers[0].inputs[0] is p:
        return readers[0]
    ops = sorted(r.op for r in readers)
    if ops != ["IsNaN", "Where"]:
        return None
    is_nan = next(r for r in readers if r.op == "IsNaN")
    where = next(r for r in readers if r.op == "Where")
    cond, zero, kept = where.inputs
    if cond is not is_nan.outputs[0] or kept is not p or _scalar(zero) != 0.0:
        return None
    if len(is_nan.outputs[0].outputs) != 1 or len(where.outputs[0].outputs) != 1:
        return None
    matmul = where.outputs[0].outputs[0]
    if matmul.op != "MatMul" or matmul.inputs[0] is not where.outputs[0]:
        return None
    nodes += [is_nan, where]
    return matmul


def _identity_cast(cast: gs.Node, tensor: gs.Tensor) -> bool:
    to = cast.attrs.get("to")
    return tensor.dtype is not None and to is not None and onnx.helper.tensor_dtype_to_np_dtype(to) == np.dtype(tensor.dtype)


def _static_dim(tensor: gs.Tensor, axis: int) -> int | None:
    if tensor.shape is None or len(tensor.shape) <= axis:
        return None
    dim = tensor.shape[axis]
    return dim if isinstance(dim, (int, np.integer)) and dim > 0 else None


def match_site(softmax: gs.Node) -> tuple[AttentionSite | None, str]:
    """The attention site around ``softmax``, or None and the reason it is not one."""
    x = softmax.inputs[0]
    if x.shape is None or len(x.shape) != 4:
        return None, "the Softmax input is not rank 4"
    if softmax.attrs.get("axis", -1) not in (-1, 3):
        return None, "the Softmax is not over the last axis"
    nodes: list[gs.Node] = []
    split = _scores_and_bias(x)
    if split is None:
        return None, "the Softmax input is not scores plus additive terms"
    scores, terms, add_nodes = split
    if len(terms) > 1:
        return None, f"{len(terms)} additive terms before the Softmax (one mask at most)"
    nodes += add_nodes
    factor = 1.0
    tensor = scores
    while (node := producer(tensor)) is not None and node.op != "MatMul":
        scaled = _scaled(node)
        if scaled is None or not _single_reader(tensor):
            return None, f"the scores come from {node.op}, not a scaled MatMul"
        tensor, c = scaled
        factor *= c
        nodes.append(node)
    if node is None or not _single_reader(tensor):
        return None, "the scores MatMul is read by other nodes"
    scores_matmul = node
    nodes.append(scores_matmul)
    q4, kt4 = scores_matmul.inputs
    head_size = _static_dim(q4, 3)
    if head_size is None:
        return None, "the head size is not static"
    q_path = _up_to_rank3(q4, lambda width: width % head_size == 0, nodes)
    if q_path is None:
        return None, "Q is not a rank-3 tensor behind layout nodes"
    width = _static_dim(q_path[0], 2)
    heads = width // head_size
    if _static_dim(q4, 1) not in (None, heads):
        return None, f"Q has {_static_dim(q4, 1)} heads, not its width / head size ({width} / {head_size})"
    k_path = _up_to_rank3(kt4, lambda w: w == width, nodes)
    if k_path is None:
        return None, "K is not a rank-3 tensor behind layout nodes"
    context = _probabilities_reader(softmax.outputs[0], nodes)
    if context is None:
        return None, "the probabilities are read by other nodes (attention weights output?)"
    v_path = _up_to_rank3(context.inputs[1], lambda w: w == width, nodes)
    if v_path is None:
        return None, "V is not a rank-3 tensor behind layout nodes"
    nodes += [softmax, context]
    out = _down_to_rank3(context.outputs[0], nodes)
    if out is None:
        return None, "the context is not laid back out to a rank-3 tensor"
    (q, fq), (k, fk), (v, fv) = q_path, k_path, v_path
    if _static_dim(out, 2) not in (None, width):
        return None, f"the output width is not heads x head size ({heads} x {head_size})"
    if fv != 1.0:
        return None, "V is scaled"
    site = AttentionSite(softmax, q, k, v, out, heads, head_size, factor * fq * fk,
                         terms[0] if terms else None, nodes)
    return site, ""


def data_inputs(tensor: gs.Tensor) -> set[str]:
    """The graph inputs ``tensor``'s value depends on, not counting reads of their shape."""
    found, stack, seen = set(), [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        node = producer(t)
        if node is None:
            if isinstance(t, gs.Variable):
                found.add(t.name)
            continue
        if node.op != "Shape":
            stack.extend(node.inputs)
    return found


def find_sites(graph: gs.Graph) -> tuple[list[AttentionSite], dict[str, str]]:
    """Every attention site of ``graph`` (top level) and, per Softmax left alone, why."""
    sites, skipped = [], {}
    outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if node.op != "Softmax":
            continue
        site, reason = match_site(node)
        if site is not None and any(id(t) in outputs for n in site.nodes for t in n.outputs if t is not site.out):
            site, reason = None, "an attention tensor inside it is a graph output (attention weights output?)"
        if site is None:
            skipped[node.name or node.outputs[0].name] = reason
        else:
            sites.append(site)
    return sites, skipped
