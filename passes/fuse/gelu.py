"""``fuse``'s GELU rules: the erf GELU into ``BiasGelu`` / ``Gelu`` and the tanh GELU into
``FastGelu`` (``com.microsoft``), for the forms onnxruntime's own optimizer leaves alone (what it
fuses by itself: passes/fuse/norms.py). Rules (numbered after norms.py's 1):

2. ``erf_gelu``: ``x * 0.5 * (1 + erf(x / sqrt 2))``, ``x / sqrt 2`` a Div by sqrt 2 or a Mul
   by 1/sqrt 2 -> ``Gelu(x)``, or ``BiasGelu(v, bias)`` when x is ``Add(v, bias)`` (below).
3. ``tanh_gelu``: ``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (GPT-2's
   gelu_new, torch's ``gelu(approximate="tanh")``), the cube a Pow by 3 or ``x * (x * x)`` in
   either order -> ``FastGelu(x[, bias])``.

Both: the two Muls of ``x * 0.5 * (1 + ...)`` in any order (TorchScript writes
``(x * (1 + t)) * 0.5`` or ``(x * 0.5) * (1 + t)``, dynamo ``x * (0.5 * (1 + t))``); x float32
and not constant; every constant a scalar within ``norms.RTOL`` of its value (the exponent
may be an integer); every tensor between x and the output read only by the next node of the
pattern and no graph output. The bias is folded when x is ``Add(v, bias)`` of a constant 1-D
float32 bias whose length is v's last dim (symbolic shapes, ``passes.fuse.shapes``) and only
the pattern reads x; otherwise the Add stays and the op reads x. Then rule 4 of norms.py
(``com.microsoft`` imported, replaced nodes removed, graph sorted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import onnx_graphsurgeon as gs

from graphc.graph import constant_values, is_graph_output, producer, unique_name
from graphc.passes.fuse.norms import (DEFAULT_DOMAINS, FLOAT, MS_DOMAIN, RTOL, detach, finish, float_vector, is_scalar,
                                      only_reader, other_input, readers_within, taken_names)
from graphc.passes.fuse.shapes import symbolic_shapes

CUBIC = 0.044715
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _default(node: gs.Node | None, op: str, inputs: int = 2) -> bool:
    return node is not None and node.op == op and node.domain in DEFAULT_DOMAINS and len(node.inputs) == inputs \
        and len(node.outputs) == 1


def _sole_reader(graph: gs.Graph, tensor: gs.Tensor, op: str) -> gs.Node | None:
    """The one node reading ``tensor``, when it is a default-domain ``op`` and ``tensor`` is no graph output."""
    if len(tensor.outputs) != 1 or is_graph_output(graph, tensor):
        return None
    node = tensor.outputs[0]
    return node if _default(node, op, len(node.inputs)) else None


def _times(graph: gs.Graph, tensor: gs.Tensor, value: float, reader: gs.Node) -> tuple[gs.Node, gs.Tensor] | None:
    """(the Mul, its other input) when ``tensor`` is a Mul by the scalar ``value`` read only by ``reader``."""
    node = producer(tensor)
    if not _default(node, "Mul") or not only_reader(graph, tensor, reader):
        return None
    a, b = node.inputs
    if is_scalar(b, value):
        return node, a
    if is_scalar(a, value):
        return node, b
    return None


def _half_product(graph: gs.Graph, one_plus: gs.Tensor, x: gs.Tensor) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """(the output of ``x * 0.5 * one_plus``, its two Muls), any order of the Muls, or None."""
    first = _sole_reader(graph, one_plus, "Mul")
    other = other_input(first, one_plus) if first is not None else None
    if other is None:
        return None
    if other is x or is_scalar(other, 0.5):  # (one_plus * x) * 0.5, or (one_plus * 0.5) * x
        second = _sole_reader(graph, first.outputs[0], "Mul")
        rest = other_input(second, first.outputs[0]) if second is not None else None
        if rest is None or not (is_scalar(rest, 0.5) if other is x else rest is x):
            return None
        return second.outputs[0], [first, second]
    half = _times(graph, other, 0.5, first)  # (x * 0.5) * one_plus
    if half is None or half[1] is not x:
        return None
    return first.outputs[0], [half[0], first]


def _one_plus(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The Add of 1 that is the only reader of ``tensor``."""
    plus = _sole_reader(graph, tensor, "Add")
    one = other_input(plus, tensor) if plus is not None else None
    return plus if one is not None and is_scalar(one, 1.0) else None


def _is_float_variable(x: gs.Tensor, shapes: Mapping) -> bool:
    return constant_values(x) is None and shapes.get(x.name, (None,))[0] == FLOAT


def _site(graph: gs.Graph, x: gs.Tensor, inner: list[gs.Node], activation: gs.Node, shapes: Mapping) -> dict | None:
    """The rewrite from x through ``inner`` and the ``activation`` (Erf / Tanh) to
    ``x * 0.5 * (1 + activation)``, its bias folded where it can be."""
    if not _is_float_variable(x, shapes):
        return None
    plus = _one_plus(graph, activation.outputs[0])
    found = _half_product(graph, plus.outputs[0], x) if plus is not None else None
    if found is None:
        return None
    out, muls = found
    pattern = [*inner, activation, plus, *muls]
    site = {"out": out, "x": x, "nodes": pattern, "bias": None, "bias_add": None}
    bias_add = producer(x)
    if _default(bias_add, "Add") and readers_within(graph, x, pattern):
        for v, bias in ((bias_add.inputs[0], bias_add.inputs[1]), (bias_add.inputs[1], bias_add.inputs[0])):
            dims = shapes.get(v.name, (None, ()))[1]
            if (_is_float_variable(v, shapes) and dims and isinstance(dims[-1], int)
                    and float_vector(bias, dims[-1]) is not None):
                site.update(x=v, bias=bias, bias_add=bias_add)
                break
    return site


def _erf_site(graph: gs.Graph, erf: gs.Node, shapes: Mapping) -> dict | None:
    """Rule 2 around one Erf, or None."""
    if not _default(erf, "Erf", 1):
        return None
    scaled = erf.inputs[0]
    scale = producer(scaled)
    if not only_reader(graph, scaled, erf) or not (_default(scale, "Div") or _default(scale, "Mul")):
        return None
    if scale.op == "Div":
        x, c = scale.inputs
        if not is_scalar(c, math.sqrt(2)):
            return None
    else:
        found = _times(graph, scaled, math.sqrt(0.5), erf)
        if found is None:
            return None
        x = found[1]
    return _site(graph, x, [scale], erf, shapes)


def _is_exponent(tensor: gs.Tensor, value: float) -> bool:
    values = constant_values(tensor)
    return (values is not None and values.size == 1 and values.dtype.kind in "fiu"
            and math.isclose(float(values.reshape(())), value, rel_tol=RTOL))


def _cube(graph: gs.Graph, tensor: gs.Tensor, reader: gs.Node) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """(x, the nodes) when ``tensor``, read only by ``reader``, is ``Pow(x, 3)`` or ``x * (x * x)``."""
    node = producer(tensor)
    if not only_reader(graph, tensor, reader):
        return None
    if _default(node, "Pow"):
        return (node.inputs[0], [node]) if _is_exponent(node.inputs[1], 3.0) else None
    if not _default(node, "Mul"):
        return None
    for square, x in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        inner = producer(square)
        if (_default(inner, "Mul") and inner.inputs[0] is x and inner.inputs[1] is x
                and only_reader(graph, square, node)):
            return x, [inner, node]
    return None


def _tanh_site(graph: gs.Graph, tanh: gs.Node, shapes: Mapping) -> dict | None:
    """Rule 3 around one Tanh, or None."""
    if not _default(tanh, "Tanh", 1):
        return None
    scaled = _times(graph, tanh.inputs[0], SQRT_2_OVER_PI, tanh)
    if scaled is None:
        return None
    outer, inner_sum = scaled
    add = producer(inner_sum)
    if not _default(add, "Add") or not only_reader(graph, inner_sum, outer):
        return None
    for x, cubic_term in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        term = _times(graph, cubic_term, CUBIC, add)
        cube = _cube(graph, term[1], term[0]) if term is not None else None
        if cube is not None and cube[0] is x:
            return _site(graph, x, [*cube[1], term[0], add, outer], tanh, shapes)
    return None


def _rewrite(graph: gs.Graph, activation: str, find: Callable, ops: tuple[str, str], shapes: Mapping | None) -> int:
    """Every site ``find`` accepts around an ``activation`` node -> ``ops[0](v, bias)`` when its
    bias folds, else ``ops[1](x)``; returns the number of sites."""
    candidates = [n for n in graph.nodes if n.op == activation]
    if not candidates:
        return 0
    shapes = symbolic_shapes(graph) if shapes is None else shapes
    sites, claimed = [], set()
    for node in candidates:
        site = find(graph, node, shapes)
        if site is not None and not claimed & {id(n) for n in site["nodes"]}:
            claimed |= {id(n) for n in site["nodes"]}
            sites.append(site)
    taken = taken_names(graph)
    for site in sites:
        out, bias_add = site["out"], site["bias_add"]
        detach(*site["nodes"], *([bias_add] if bias_add is not None else []))
        op, inputs = (ops[0], [site["x"], site["bias"]]) if bias_add is not None else (ops[1], [site["x"]])
        graph.nodes.append(gs.Node(op, unique_name(f"{out.name}/{op}", taken), {}, inputs, [out], domain=MS_DOMAIN))
    return finish(graph, len(sites))


def erf_gelu(graph: gs.Graph, shapes: Mapping | None = None) -> int:
    """Rule 2: erf GELU -> BiasGelu (bias folded) or Gelu, in place; returns the number of sites.
    ``shapes``: ``passes.fuse.shapes.symbolic_shapes(graph)``, computed here when not given."""
    return _rewrite(graph, "Erf", _erf_site, ("BiasGelu", "Gelu"), shapes)


def tanh_gelu(graph: gs.Graph, shapes: Mapping | None = None) -> int:
    """Rule 3: tanh GELU -> FastGelu (bias folded as its second input, or none), in place;
    returns the number of sites. ``shapes`` as for ``erf_gelu``."""
    return _rewrite(graph, "Tanh", _tanh_site, ("FastGelu", "FastGelu"), shapes)

