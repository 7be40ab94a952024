"""``fuse``'s norm and activation rules: residual Add + LayerNormalization into
``SkipLayerNormalization`` (here), the erf and tanh GELUs into ``BiasGelu`` / ``Gelu`` /
``FastGelu`` (``com.microsoft``; passes/fuse/gelu.py), and the choice between rewritten and
unrewritten models by measured time (here).

What onnxruntime 1.32's own session optimizer (ORT_ENABLE_ALL, CPU EP) already fuses on our
exports (the bert / gpt / vit fixtures of tests/topologies.py and MiniLM, op types counted in
the graph it saves to ``optimized_model_filepath``; as exported, after ``fold``, after
``fold,int8``), so that these rules do only what it does not:

- Add + LayerNormalization -> SkipLayerNormalization: TorchScript exports never (it cannot
  tell the residual Add's two input shapes equal); dynamo exports as written, yes (bert 4 of
  4 residual LayerNorms, MiniLM 12 of 12, pre-norm gpt and vit 1 of 4), from the exporter's
  value_info; after ``fold``, which drops that value_info, none with either exporter: rule 1.
- MatMul + bias + erf GELU -> BiasGelu: TorchScript exports yes (after ``fold,int8`` Gelu, the
  bias going into MatMulIntegerToFloat); dynamo at opset 20 (MiniLM: an ONNX ``Gelu``) yes;
  dynamo at opset 18 (bert, vit fixtures: ``x * (0.5 * (1 + erf(x / sqrt 2)))``) no: rule 2.
- tanh GELU (GPT-2's gelu_new) -> FastGelu: after GPT-2's Conv1D (Gemm, Reshape) yes, both
  exporters, as exported, after ``fold`` and after ``fold,int8`` (gpt: 2 of 2); after a 3-D
  Linear (MatMul + bias Add: gelu_new or torch's ``gelu(approximate="tanh")``) no, with
  either exporter: rule 3.

``onnxruntime_fusions`` counts what the installed onnxruntime fuses in a given model, so a
pass can check these findings on the machine it runs on. Rules (each rewrite function edits
``graph`` in place, returns how many sites it rewrote, and leaves anything else alone):

1. ``skip_layer_norm``: ``LayerNormalization(Add(a, b), gamma[, beta])`` with axis -1 (or the
   last axis), ``stash_type`` 1, no Mean / InvStdDev output read, constant 1-D float32 gamma
   (and beta) over C, and a, b, the sum all float32 of one symbolic shape [B, S, C]
   (``passes.fuse.shapes``; an unknown shape is not the same shape), neither constant, the sum
   not a graph output -> ``SkipLayerNormalization(input, skip, gamma, beta[, bias], epsilon)``.
   When a or b is ``Add(v, bias)`` with a constant 1-D float32 bias of C values, read only by
   the residual Add and not a graph output, and v of the same shape, that Add goes into the
   ``bias`` input (a is tried before b). When nodes other than the LayerNormalization read the
   sum, it stays, as the op's fourth output ``input_skip_bias_sum``; else the op writes none.
2. ``gelu.erf_gelu``: erf GELU -> ``Gelu`` / ``BiasGelu`` (gelu.py states the pattern).
3. ``gelu.tanh_gelu``: tanh GELU -> ``FastGelu`` (gelu.py states the pattern).
4. Each rule that adds a node imports ``com.microsoft`` at version 1 into ``graph``
   (``graph.import_domains``, which graphsurgeon exports as the model's opset list), then
   removes the nodes it replaced (``cleanup``) and sorts the graph.
5. ``faster_variant``: the models are timed side by side with ``graphc.profiling.time_models``
   (non-spinning sessions, round-robin, median wall time per run); the first model is the
   reference, and another is chosen only when its median is more than ``margin`` (a fraction)
   below the reference's, the fastest of those; returns its name and every model's time. A
   rewrite is kept where it is measured faster on this machine, never by rule: earlier
   measurements here found SkipLayerNormalization slower in some shapes.
"""

from __future__ import annotations

import collections
import math
import pathlib
import tempfile
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc import profiling
from graphc.graph import constant_values, is_graph_output, producer, unique_name
from graphc.passes.fuse.shapes import symbolic_shapes

MS_DOMAIN = "com.microsoft"
MS_VERSION = 1
RTOL = 1e-5  # constants of a pattern: float32 rounding of the exact value passes, a wrong coefficient does not
FLOAT = onnx.TensorProto.FLOAT
DEFAULT_DOMAINS = (None, "", "ai.onnx")  # graphsurgeon reads the default domain as None


# ---------------------------------------------------------------------------- shared
def import_microsoft_domain(graph: gs.Graph) -> None:
    """Rule 4: ``com.microsoft`` version 1 in ``graph.import_domains`` (kept if there)."""
    if graph.import_domains is None:
        graph.import_domains = [onnx.helper.make_opsetid("", graph.opset)]
    if not any(d.domain == MS_DOMAIN for d in graph.import_domains):
        graph.import_domains.append(onnx.helper.make_opsetid(MS_DOMAIN, MS_VERSION))


def finish(graph: gs.Graph, count: int) -> int:
    if count:
        import_microsoft_domain(graph)
        graph.cleanup().toposort()
    return count


def only_reader(graph: gs.Graph, tensor: gs.Tensor, node: gs.Node) -> bool:
    """``node`` is the one node that reads ``tensor``, and ``tensor`` is no graph output."""
    return len(tensor.outputs) == 1 and tensor.outputs[0] is node and not is_graph_output(graph, tensor)


def readers_within(graph: gs.Graph, tensor: gs.Tensor, nodes: list[gs.Node]) -> bool:
    """Only nodes of ``nodes`` read ``tensor`` (each as often as it lists it), and it is no graph output."""
    return not is_graph_output(graph, tensor) and all(any(r is n for n in nodes) for r in tensor.outputs)


def is_scalar(tensor: gs.Tensor, value: float) -> bool:
    values = constant_values(tensor)
    return (values is not None and values.size == 1 and values.dtype == np.float32
            and math.isclose(float(values.reshape(())), value, rel_tol=RTOL))


def float_vector(tensor: gs.Tensor, length: int | None = None) -> np.ndarray | None:
    """The values of a constant 1-D float32 tensor (of ``length`` values, if given), else None."""
    values = constant_values(tensor)
    if values is None or values.dtype != np.float32 or values.ndim != 1 or (length is not None and values.size != length):
        return None
    return values


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """The other input of a two-input node that reads ``tensor`` once."""
    ins = node.inputs
    if len(ins) != 2 or (ins[0] is tensor) == (ins[1] is tensor):
        return None
    return ins[1] if ins[0] is tensor else ins[0]


def taken_names(graph: gs.Graph) -> set[str]:
    return {n.name for n in graph.nodes if n.name}


def detach(*nodes: gs.Node) -> None:
    for node in nodes:
        node.outputs.clear()


# --------------------------------------------------------------------------- rule 1
def _layer_norm_site(graph: gs.Graph, ln: gs.Node, shapes) -> dict | None:
    """The rewrite of one LayerNormalization (rule 1), or None when anything does not hold."""
    if ln.op != "LayerNormalization" or ln.domain not in DEFAULT_DOMAINS or len(ln.inputs) < 2:
        return None
    if ln.attrs.get("axis", -1) not in (-1, 2) or ln.attrs.get("stash_type", 1) != 1:
        return None
    if any(t.outputs or is_graph_output(graph, t) for t in ln.outputs[1:]):
        return None
    total = ln.inputs[0]
    add = producer(total)
    if add is None or add.op != "Add" or add.domain not in DEFAULT_DOMAINS or len(add.inputs) != 2 or is_graph_output(graph, total):
        return None
    typed = shapes.get(total.name)
    if typed is None or typed[0] != FLOAT or len(typed[1]) != 3 or not isinstance(typed[1][2], int):
        return None
    channels = typed[1][2]
    gamma = ln.inputs[1]
    beta = ln.inputs[2] if len(ln.inputs) > 2 and ln.inputs[2].name else None
    if float_vector(gamma, channels) is None or (beta is not None and float_vector(beta, channels) is None):
        return None
    a, b = add.inputs
    if any(constant_values(t) is not None or shapes.get(t.name) != typed for t in (a, b)):
        return None
    site = {"ln": ln, "add": add, "input": a, "skip": b, "bias": None, "bias_add": None,
            "gamma": gamma, "beta": beta, "keep_sum": any(r is not ln for r in total.outputs)}
    for summand, skip in ((a, b), (b, a)):
        bias_add = producer(summand)
        if bias_add is None or bias_add.op != "Add" or bias_add.domain not in DEFAULT_DOMAINS or len(bias_add.inputs) != 2:
            continue
        if not only_reader(graph, summand, add):
            continue
        for v, c in ((bias_add.inputs[0], bias_add.inputs[1]), (bias_add.inputs[1], bias_add.inputs[0])):
            if float_vector(c, channels) is not None and constant_values(v) is None and shapes.get(v.name) == typed:
                site.update(input=v, skip=skip, bias=c, bias_add=bias_add)
                return site
    return site


def skip_layer_norm(graph: gs.Graph, shapes: Mapping | None = None) -> int:
    """Rule 1 (and 4): residual Add + LayerNormalization -> SkipLayerNormalization; returns
    the number of sites. ``shapes``: ``passes.fuse.shapes.symbolic_shapes(graph)``, computed
    here when not given."""
    lns = [n for n in graph.nodes if n.op == "LayerNormalization"]
    if not lns:
        return 0
    shapes = symbolic_shapes(graph) if shapes is None else shapes
    sites = [s for s in (_layer_norm_site(graph, ln, shapes) for ln in lns) if s is not None]
    taken = taken_names(graph)
    for site in sites:
        ln, add, bias_add = site["ln"], site["add"], site["bias_add"]
        out, total = ln.outputs[0], ln.inputs[0]
        empty = gs.Variable.empty
        inputs = [site["input"], site["skip"], site["gamma"], site["beta"] or empty(), site["bias"] or empty()]
        while not inputs[-1].name:
            inputs.pop()
        outputs = [out, empty(), empty(), total] if site["keep_sum"] else [out]
        detach(ln, add, *([bias_add] if bias_add is not None else []))
        graph.nodes.append(gs.Node("SkipLayerNormalization", unique_name(f"{ln.name or out.name}/skip", taken),
                                   {"epsilon": float(ln.attrs.get("epsilon", 1e-5))}, inputs, outputs,
                                   domain=MS_DOMAIN))
    return finish(graph, len(sites))


# ---------------------------------------------------------------------- measurement
def onnxruntime_fusions(model: onnx.ModelProto, threads: int | None = 1) -> collections.Counter:
    """Op types (``domain:op``, the default domain bare) of the graph onnxruntime executes for
    ``model`` (CPU, all optimizations on; the graph it saves to ``optimized_model_filepath``)."""
    import onnxruntime as ort

    from graphc.model_io import write_with_external_weights
    from graphc.runtime import session_options

    with tempfile.TemporaryDirectory(prefix="graphc-fusions-") as tmp:
        directory = pathlib.Path(tmp)
        path = write_with_external_weights(model, directory)
        options = session_options(threads, spinning=False)
        options.optimized_model_filepath = str(directory / "executed.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "executed.data")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        executed = onnx.load(str(directory / "executed.onnx"), load_external_data=False)
    return collections.Counter(f"{n.domain}:{n.op_type}" if n.domain not in DEFAULT_DOMAINS else n.op_type
                               for n in executed.graph.node)


def faster_variant(models: Mapping[str, onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int | None = None,
                   margin: float = 0.0, **timing) -> tuple[str, dict[str, float]]:
    """Rule 5: (the name of the model to keep, median wall microseconds per run of each).
    ``timing`` goes to ``graphc.profiling.time_models`` (``seconds``, ``rounds``, ``warmup``)."""
    if not models:
        raise ValueError("faster_variant needs at least one model")
    names = list(models)
    times = dict(zip(names, profiling.time_models([models[n] for n in names], feeds, threads, **timing)))
    reference = names[0]
    faster = [n for n in names[1:] if times[n] < times[reference] * (1 - margin)]
    return (min(faster, key=times.__getitem__) if faster else reference), times
