"""Rule 7: smoothing (``smooth=<alpha>`` in (0, 1]; 0 = off), SmoothQuant-style: per-channel
activation outliers migrate into the weights of the MatMul/Gemm nodes that read them. Exact in
FP32 (only float rounding differs).

Before calibration, per-channel activation outliers of every quantized MatMul/Gemm whose input
comes from a LayerNormalization (cloned when its output also feeds other nodes) or from a
MatMul/Gemm (+ bias Add) move into its weight: ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``,
the producer's output channel ``j`` divided by ``s_j``, the weight's input row ``j`` multiplied
by it (``smooth_activations``; the rules are below). Channel maxima come from one streamed run
over the same rows as calibration. ``smoothed_matmuls`` in the stats counts the nodes smoothed.

Sites (where a per-channel scale ``s`` can be folded exactly):

- A *site* is a float tensor ``X`` read as data input (input 0) by one or more *targets*:
  nodes in the given target set (the ones int8 quantizes) that are MatMul with a rank-2
  constant weight ``W [K, N]`` or Gemm (``transA=0``) with a constant 2-D weight. ``X``'s
  channels are its last axis (``K``).
- ``X`` must be made by a producer that can absorb ``1/s`` on its output channels:

  - ``LayerNormalization`` with a 1-D constant scale (gamma) and an optional 1-D constant bias
    (beta): ``gamma / s``, ``beta / s``. When ``X`` has readers other than the targets and
    ``Shape``/``Size`` nodes (a post-LN transformer's residual Add, a graph output) or the
    LayerNormalization has more outputs, the LayerNormalization is *cloned*: the clone (with
    ``gamma / s``, ``beta / s``) feeds the targets, the original keeps feeding the rest.
    Otherwise it is edited in place.
  - MatMul (rank-2 constant weight) or Gemm (``transA=0``, constant weight, bias of shape
    ``(N,)``, ``(1, N)``, scalar or none), optionally followed by an ``Add`` of a constant
    ``(N,)`` bias whose other input is that node's output and that node's only reader: output
    column ``j`` (and the biases) ``/ s_j``. Here every reader of ``X`` but Shape/Size must be
    a target (no cloning).

  Anything else (activations, residual Adds, Reshape/Transpose in between) is skipped.
- ``s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)``, ``max|X_j|`` from the streamed
  calibration run (``graphc.passes.int8.calibration.collect(channel_names=...)``), ``max|W_j|`` over
  input row ``j`` of every target's weight (all targets of a site share one ``s``); ``s_j = 1``
  where either maximum is 0 or ``s_j`` is not finite; ``s`` is clipped to ``[1e-5, 1e5]``.
- Every target's weight gets input row ``j`` multiplied by ``s_j``. Scaled weights, gammas
  and biases are new constants: a tensor shared with other nodes is never edited in place.

Sites are applied one after the other, each reading the constants as the earlier ones left
them; since every rewrite keeps the site's downstream values, the calibrated maxima (taken
on the graph before smoothing) stay valid for every site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values, is_graph_output, producer, swap_tensor, unique_name
from graphc.passes.int8.calibration import calibration_data, collect

if TYPE_CHECKING:
    from graphc.context import Context
    from graphc.passes.int8 import Int8Options
    from graphc.passes.int8.plan import NodePlan

SHAPE_READERS = ("Shape", "Size")  # read only the shape: unaffected by a channel scale
S_MIN, S_MAX = 1e-5, 1e5


@dataclass
class Site:
    """One smoothable tensor: its producer kind and the targets that read it."""

    tensor: gs.Variable
    producer: gs.Node
    targets: list[gs.Node]
    clone: bool = False  # LayerNormalization cloned for the targets
    bias_add: gs.Node | None = None  # the MatMul producer's bias Add (X is its output)


def _target_weight(node: gs.Node) -> np.ndarray | None:
    if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return None
    weight = constant_values(node.inputs[1])
    if weight is None or np.asarray(weight).dtype != np.float32 or np.asarray(weight).ndim != 2:
        return None
    return np.asarray(weight)


def _input_rows(node: gs.Node, weight: np.ndarray) -> np.ndarray:
    """The weight as [K input channels, N outputs]."""
    return weight.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else weight


def _layernorm_ok(node: gs.Node) -> bool:
    gamma = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
    if gamma is None or np.asarray(gamma).ndim != 1:
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        beta = constant_values(node.inputs[2])
        if beta is None or np.asarray(beta).shape != np.asarray(gamma).shape:
            return False
    return True


def _gemm_bias_ok(node: gs.Node, channels: int) -> bool:
    if node.op != "Gemm" or len(node.inputs) < 3 or not node.inputs[2].name:
        return True
    bias = constant_values(node.inputs[2])
    if bias is None:
        return False
    bias = np.asarray(bias)
    return bias.size in (1, channels) and (bias.ndim < 2 or (bias.ndim == 2 and bias.shape[0] == 1))


def _matmul_source(graph: gs.Graph, tensor: gs.Variable) -> tuple[gs.Node, gs.Node | None] | None:
    """(MatMul/Gemm producer, its bias Add or None) whose output columns are ``tensor``'s channels."""
    node, add = producer(tensor), None
    if node is None:
        return None
    if node.op == "Add":
        add = node
        sources = [t for t in node.inputs if constant_values(t) is None]
        if len(sources) != 1 or producer(sources[0]) is None:
            return None
        bias = constant_values(next(t for t in node.inputs if t is not sources[0]))
        inner = sources[0]
        node = producer(inner)
        if node is None or len(inner.outputs) != 1 or is_graph_output(graph, inner):
            return None
        weight = _target_weight(node)
        if weight is None or np.asarray(bias).ndim != 1 or np.asarray(bias).size != _input_rows(node, weight).shape[1]:
            return None
    weight = _target_weight(node)
    if weight is None or not _gemm_bias_ok(node, _input_rows(node, weight).shape[1]):
        return None
    return node, add


def find_sites(graph: gs.Graph, targets: list[gs.Node]) -> list[Site]:
    """The smoothable sites among ``targets``' data inputs (see the module rules)."""
    target_ids = {id(n) for n in targets if _target_weight(n) is not None}
    sites, seen = [], set()
    for node in targets:
        if id(node) not in target_ids or id(node.inputs[0]) in seen:
            continue
        tensor = node.inputs[0]
        seen.add(id(tensor))
        source = producer(tensor)
        if not isinstance(tensor, gs.Variable) or source is None:
            continue
        readers = [r for r in tensor.outputs if id(r) in target_ids and r.inputs[0] is tensor]
        others = [r for r in tensor.outputs if all(r is not t for t in readers) and r.op not in SHAPE_READERS]
        exclusive = not others and not is_graph_output(graph, tensor)
        if source.op == "LayerNormalization" and _layernorm_ok(source):
            clone = not exclusive or len([o for o in source.outputs if o.outputs or is_graph_output(graph, o)]) > 1
            sites.append(Site(tensor, source, readers, clone=clone))
        elif exclusive:
            found = _matmul_source(graph, tensor)
            if found is not None:
                sites.append(Site(tensor, found[0], readers, bias_add=found[1]))
    return sites


def smoothing_scales(channel_max: np.ndarray, weight_rows: list[np.ndarray], alpha: float) -> np.ndarray:
    """``s_j = max|X_j|**alpha / max|W_j|**(1-alpha)`` (1 where undefined), clipped."""
    x = np.asarray(channel_max, dtype=np.float64)
    w = np.max([np.abs(rows).max(axis=1) for rows in weight_rows], axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = x ** alpha / w ** (1.0 - alpha)
    s = np.where((x > 0) & (w > 0) & np.isfinite(s), s, 1.0)
    return np.clip(s, S_MIN, S_MAX)


def _new_constant(name: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(values.astype(np.float32)))


def _scale_columns(node: gs.Node, factor: np.ndarray, unique) -> None:
    """Output column ``j`` of a MatMul/Gemm (and a Gemm bias) times ``factor[j]``."""
    weight = np.asarray(constant_values(node.inputs[1]), dtype=np.float64)
    scaled = weight * factor[:, None] if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else weight * factor
    swap_tensor(node.inputs, node.inputs[1], _new_constant(unique(f"{node.inputs[1].name}_smoothed"), scaled))
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        bias = np.asarray(constant_values(node.inputs[2]), dtype=np.float64)
        bias = np.broadcast_to(bias.reshape(-1), factor.shape) * factor
        swap_tensor(node.inputs, node.inputs[2], _new_constant(unique(f"{node.inputs[2].name}_smoothed"), bias))


def apply_site(graph: gs.Graph, site: Site, channel_max: np.ndarray, alpha: float, unique) -> np.ndarray:
    """Fold ``1/s`` into the producer and ``s`` into the targets' weights; returns ``s``."""
    rows = [_input_rows(n, np.asarray(constant_values(n.inputs[1]))) for n in site.targets]
    s = smoothing_scales(channel_max, rows, alpha)
    inverse = 1.0 / s
    if site.producer.op == "LayerNormalization":
        ln = site.producer
        inputs = [ln.inputs[0], _new_constant(unique(f"{ln.inputs[1].name}_smoothed"),
                                              np.asarray(constant_values(ln.inputs[1]), np.float64) * inverse)]
        if len(ln.inputs) > 2 and ln.inputs[2].name:
            inputs.append(_new_constant(unique(f"{ln.inputs[2].name}_smoothed"),
                                        np.asarray(constant_values(ln.inputs[2]), np.float64) * inverse))
        if site.clone:
            out = gs.Variable(unique(f"{site.tensor.name}_smoothed"), dtype=site.tensor.dtype, shape=site.tensor.shape)
            graph.nodes.append(gs.Node("LayerNormalization", unique(f"{ln.name or 'LayerNormalization'}_smoothed"),
                                       dict(ln.attrs), inputs, [out]))
            for target in site.targets:
                swap_tensor(target.inputs, site.tensor, out)
        else:
            for i, tensor in enumerate(inputs[1:], start=1):
                ln.inputs[i] = tensor
    else:
        _scale_columns(site.producer, inverse, unique)
        if site.bias_add is not None:
            add = site.bias_add
            index = next(i for i, t in enumerate(add.inputs) if constant_values(t) is not None)
            bias = np.asarray(constant_values(add.inputs[index]), np.float64) * inverse
            add.inputs[index] = _new_constant(unique(f"{add.inputs[index].name or 'bias'}_smoothed"), bias)
    for target in site.targets:
        weight = np.asarray(constant_values(target.inputs[1]), dtype=np.float64)
        transposed = target.op == "Gemm" and int(target.attrs.get("transB", 0))
        scaled = weight * s[None, :] if transposed else weight * s[:, None]
        target.inputs[1] = _new_constant(unique(f"{target.inputs[1].name}_smoothed"), scaled)
    return s


def smooth(graph: gs.Graph, sites: list[Site], channel_max: dict[str, np.ndarray], alpha: float) -> dict:
    """Apply every site whose tensor has calibrated maxima of the right size; statistics."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}

    def unique(base: str) -> str:
        return unique_name(base, taken)

    smoothed, cloned, sites_done = 0, 0, 0
    for site in sites:
        peak = channel_max.get(site.tensor.name)
        rows = _input_rows(site.targets[0], np.asarray(constant_values(site.targets[0].inputs[1])))
        if peak is None or peak.size != rows.shape[0]:
            continue
        apply_site(graph, site, peak, alpha, unique)
        smoothed += len(site.targets)
        cloned += int(site.clone)
        sites_done += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return {"smoothed_matmuls": smoothed, "smoothed_sites": sites_done, "cloned_layernorms": cloned}


def smooth_activations(graph: gs.Graph, ctx: Context, plan: NodePlan, opts: Int8Options) -> dict:
    """Rule 7: SmoothQuant on the planned MatMul/Gemm nodes, in place; statistics."""
    sites = find_sites(graph, [n for n in [*plan.static, *plan.dynamic] if n.op in ("MatMul", "Gemm")])
    if not sites:
        return {"smoothed_matmuls": 0}
    data, _ = calibration_data(ctx, opts)
    result = collect(graph, [], data, opts.samples, opts.calib_batch, ctx.threads,
                     channel_names=[site.tensor.name for site in sites])
    return smooth(graph, sites, result.channel_max, opts.smooth)
