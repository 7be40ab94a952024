"""Model statistics: parameters, op histogram, size and MACs.

MACs (multiply-accumulates) are counted for one batch at concrete input shapes (dynamic
dims resolved like synthetic data: first axis 1, integer sequence axes 64, or ``--shape``).
Shapes come from ONNX shape inference with data propagation on the weight-free view
(``graphc.graph.skeleton``); tensors it cannot resolve are measured by one onnxruntime run
that exposes them. The counted ops and the formula are ``graphc.ops.node_macs``. Parameters are the elements of
float and 8-bit constant tensors (initializers and Constant nodes) of 2+ elements, except
the scale/zero-point inputs of Q/DQ nodes.

Subgraphs (If branches, Loop and Scan bodies) are counted too: their parameters all (every
branch is stored in the file; a tensor is counted once by name), their MACs as one call runs
them: the larger branch of each If (one runs per call), a Loop body times its trip count when
that is a constant (else once, with a note), a Scan body times its scan length when known
(else once, with a note). Shapes inside bodies come from the same shape inference; where it
leaves a body's compute node unknown (a Loop's carried values lose their shapes), one profiled
onnxruntime run on synthetic inputs gives that node's data-input and output shapes (the branch
an If does not take stays unknown, and uncounted). ``macs_unknown`` says why MACs are unknown when the input shapes could not be
resolved (a dynamic dim without ``--shape``).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphc.data import resolve_shape, model_signature, synthetic_dataset
from graphc.errors import GraphcError
from graphc.graph import set_input_shapes, skeleton
from graphc.ops import MAC_OPS, QDQ_OPS, node_macs
from graphc.model_io import proto_bytes

PARAM_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
               onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass
class ModelStats:
    nodes: int
    ops: dict[str, int]
    params: int
    size_bytes: int
    macs: int
    macs_by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)  # compute nodes whose MACs are unknown
    macs_notes: list[str] = field(default_factory=list)  # how subgraphs were counted
    macs_unknown: str | None = None  # why the input shapes could not be resolved (then MACs are uncounted)

    def as_dict(self) -> dict:
        return {"nodes": self.nodes, "params": self.params, "size_bytes": self.size_bytes,
                "macs": self.macs, "macs_by_op": self.macs_by_op, "ops": self.ops,
                "uncounted_nodes": self.uncounted, "macs_notes": self.macs_notes, "macs_unknown": self.macs_unknown}


def graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in its nodes' attributes, recursively."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from graphs(sub)


def _constant_tensors(model: onnx.ModelProto, subgraphs: bool = False):
    """Initializers and Constant-node values (name, type and dims) of the top-level graph, or
    of every graph with ``subgraphs``."""
    for graph in graphs(model.graph) if subgraphs else [model.graph]:
        yield from graph.initializer
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        yield onnx.TensorProto(name=node.output[0], dims=attr.t.dims, data_type=attr.t.data_type)


def count_params(model: onnx.ModelProto) -> int:
    """Parameters of every graph, subgraphs included; a name is counted once."""
    qdq_params = {name for graph in graphs(model.graph) for node in graph.node if node.op_type in QDQ_OPS
                  for name in node.input[1:]}
    total, seen = 0, set()
    for tensor in _constant_tensors(model, subgraphs=True):
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type in PARAM_TYPES and numel > 1 and tensor.name not in qdq_params | seen:
            total += numel
        seen.add(tensor.name)
    return total


def _resolved_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the graph inputs (dynamic dims resolved as in synthetic data)."""
    return {spec.name: resolve_shape(spec, shapes) for spec in model_signature(model)}


def _known_shape(value_info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def tensor_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None,
                  wanted: set[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the model's tensors at the resolved input shapes."""
    shapes = dict(shapes or {})
    fixed = skeleton(model, _resolved_inputs(model, shapes))
    for graph in list(graphs(fixed.graph))[1:]:  # a body's symbolic value infos would win over the concrete dims
        del graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = fixed
    known: dict[str, tuple[int, ...]] = {}
    for graph in graphs(inferred.graph):  # subgraphs' value infos too (names are unique model-wide)
        known.update((t.name, tuple(t.dims)) for t in graph.initializer)
        for value_info in [*graph.input, *graph.value_info, *graph.output]:
            shape = _known_shape(value_info)
            if shape is not None:
                known[value_info.name] = shape
    for tensor in _constant_tensors(model, subgraphs=True):
        known[tensor.name] = tuple(tensor.dims)
    missing = sorted((wanted or set()) - set(known))
    if missing:
        known.update(_measure_shapes(model, missing, shapes))
    return known


def _measure_shapes(model: onnx.ModelProto, names: list[str], shapes) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from one tensor-tap run of ``model`` on a synthetic batch at the
    resolved input shapes (the input dims are set only while it runs: no copy of the model)."""
    from graphc.runtime import tap

    old_inputs = [onnx.ValueInfoProto() for _ in model.graph.input]
    for saved, value_info in zip(old_inputs, model.graph.input):
        saved.CopyFrom(value_info)
    measured: dict[str, tuple[int, ...]] = {}
    try:
        data = synthetic_dataset(model, shapes=shapes)  # one batch at the resolved shapes, run whole
        set_input_shapes(model, _resolved_inputs(model, shapes))
        tap(model, names, data, lambda name, values, piece: measured.setdefault(name, tuple(values.shape)),
            batch_size=len(data), what="the shape probe", optimized=False)
    except Exception:  # shapes stay unknown; the MACs of those nodes are reported as uncounted
        return {}
    finally:
        for value_info, saved in zip(model.graph.input, old_inputs):
            value_info.CopyFrom(saved)
    return measured


def _node_macs(node: onnx.NodeProto, shape: Mapping[str, tuple[int, ...]]) -> int | None:
    """MACs of one node given a name -> shape lookup (None: unknown shape)."""
    def input_shape(i):
        return shape.get(node.input[i]) if i < len(node.input) and node.input[i] else None

    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    return node_macs(node.op_type, input_shape, shape.get(node.output[0]) if node.output else None, attrs)


@dataclass
class _Macs:
    by_op: collections.Counter = field(default_factory=collections.Counter)
    uncounted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, other: _Macs, times: int = 1) -> None:
        for op, macs in other.by_op.items():
            self.by_op[op] += macs * times
        self.uncounted += other.uncounted
        self.notes += other.notes


def _subgraph(node: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == name and a.type == onnx.AttributeProto.GRAPH), None)


def _constant_int(name: str, constants: Mapping[str, onnx.TensorProto]) -> int | None:
    tensor = constants.get(name)
    if tensor is None or tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    values = onnx.numpy_helper.to_array(tensor).reshape(-1)
    return int(values[0]) if values.size == 1 else None


def _graph_macs(graph: onnx.GraphProto, shape: Mapping[str, tuple[int, ...]],
                constants: Mapping[str, onnx.TensorProto]) -> _Macs:
    """MACs of one run of ``graph`` (subgraph rules in the module docstring)."""
    total = _Macs()
    for node in graph.node:
        label = node.name or node.op_type
        if node.op_type in MAC_OPS:
            macs = _node_macs(node, shape)
            if macs is None:
                total.uncounted.append(label)
            else:
                total.by_op[node.op_type] += macs
        elif node.op_type == "If":
            branches = [_graph_macs(g, shape, constants) for g in
                        (_subgraph(node, "then_branch"), _subgraph(node, "else_branch")) if g is not None]
            if any(b.by_op or b.uncounted for b in branches):
                total.notes.append("If: the larger branch counted (one branch runs per call)")
                larger = max(branches, key=lambda b: sum(b.by_op.values()))
                total.add(larger)
                total.uncounted += [u for b in branches if b is not larger for u in b.uncounted]
        elif node.op_type in ("Loop", "Scan"):
            body = _subgraph(node, "body")
            if body is None:
                continue
            inner = _graph_macs(body, shape, constants)
            if not inner.by_op and not inner.uncounted:
                continue
            times = _loop_trips(node, shape, constants)
            if times is None:
                times = 1
                inner.notes.append(f"{node.op_type} {label}: body counted once (trip count unknown)")
            total.add(inner, times)
    return total


def _loop_trips(node: onnx.NodeProto, shape: Mapping[str, tuple[int, ...]],
                constants: Mapping[str, onnx.TensorProto]) -> int | None:
    """A Loop's constant trip count ``M``, or a Scan's scan length from its first scan input."""
    if node.op_type == "Loop":
        return _constant_int(node.input[0], constants) if node.input and node.input[0] else None
    attrs = {a.name: a for a in node.attribute}
    scan_inputs = int(attrs["num_scan_inputs"].i) if "num_scan_inputs" in attrs else 0
    if scan_inputs == 0:
        return None
    first = node.input[len(node.input) - scan_inputs]
    axis = int(attrs["scan_input_axes"].ints[0]) if "scan_input_axes" in attrs and attrs["scan_input_axes"].ints else 0
    dims = shape.get(first)
    return int(dims[axis]) if dims is not None and -len(dims) <= axis < len(dims) else None


def model_stats(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None,
                size_bytes: int | None = None) -> ModelStats:
    compute = [n for g in graphs(model.graph) for n in g.node if n.op_type in MAC_OPS]
    top = {id(n) for n in model.graph.node}
    wanted = {name for n in compute if id(n) in top for name in [*n.input, *n.output] if name}  # measurable
    unknown = None
    try:
        shape = tensor_shapes(model, shapes, wanted) if compute else {}
    except GraphcError as exc:  # a dynamic dim without --shape: MACs unknown, say why
        shape, unknown = {}, str(exc)
    except Exception:  # an input signature we cannot resolve: MACs unknown, rest still useful
        shape = {}
    constants = {t.name: t for t in _int_constants(model)}
    macs = _graph_macs(model.graph, shape, constants)
    if unknown is None and set(macs.uncounted) - {n.name for n in model.graph.node}:
        profiled = _profiled_shapes(model, shapes or {}, [n for n in compute if id(n) not in top], shape)
        if profiled:
            macs = _graph_macs(model.graph, {**profiled, **shape}, constants)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return ModelStats(
        nodes=len(model.graph.node), ops=dict(ops.most_common()), params=count_params(model),
        size_bytes=size_bytes if size_bytes is not None else proto_bytes(model),
        macs=sum(macs.by_op.values()), macs_by_op=dict(macs.by_op), uncounted=macs.uncounted,
        macs_notes=list(dict.fromkeys(macs.notes)), macs_unknown=unknown if macs.uncounted else None)


def _profiled_shapes(model: onnx.ModelProto, shapes, nodes: list[onnx.NodeProto],
                     known: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Output and data-input shapes of ``nodes`` (inside bodies) from one profiled onnxruntime
    run on a synthetic batch (empty when it cannot run). onnxruntime's node events list the
    shapes of inputs that are not initializers, so only input 0 is read, where it is not known."""
    import json
    import pathlib
    import tempfile

    from graphc.runtime import open_session

    names = {n.name: n for n in nodes if n.name and n.output}
    if not names:
        return {}
    try:
        feeds, _ = next(synthetic_dataset(model, shapes=shapes).batches(1 << 30))
        with tempfile.TemporaryDirectory() as tmp:
            session = open_session(model, what="the shape probe", profile_prefix=str(pathlib.Path(tmp) / "shapes"))
            session.run(None, feeds)
            events = json.loads(pathlib.Path(session.end_profiling()).read_text())
    except Exception:  # no synthetic inputs, or the model does not run on them: shapes stay unknown
        return {}
    found: dict[str, tuple[int, ...]] = {}
    for event in events:
        node = names.get(str(event.get("name", "")).removesuffix("_kernel_time"))
        args = event.get("args") or {}
        if node is None or event.get("cat") != "Node" or "output_type_shape" not in args:
            continue
        for name, listed in ((node.output[0], args["output_type_shape"]), (node.input[0], args.get("input_type_shape"))):
            if name and name not in known and listed:
                found.setdefault(name, tuple(next(iter(listed[0].values()))))
    return found


def _int_constants(model: onnx.ModelProto):
    """Small integer constants (with values) of every graph: trip counts and shapes."""
    for graph in graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and len(tensor.dims) <= 1:
                yield tensor
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                        tensor = onnx.TensorProto()
                        tensor.CopyFrom(attr.t)
                        tensor.name = node.output[0]
                        yield tensor


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}" if isinstance(n, int) or float(n).is_integer() else f"{n:.2f}{unit}"


def human_bytes(n: int) -> str:
    for threshold, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= threshold:
            return f"{n / threshold:.2f} {suffix}"
    return f"{n} B"
