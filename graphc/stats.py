"""Model statistics: parameters, op histogram, size and MACs.

MACs (multiply-accumulates) are counted for one batch at concrete input shapes (dynamic
dims resolved like synthetic data: first axis 1, integer sequence axes 64, or ``--shape``).
Shapes come from ONNX shape inference with data propagation on the weight-free view
(``graphc.graph.skeleton``); tensors it cannot resolve are measured by one onnxruntime run
that exposes them. The counted ops and the formula are ``graphc.ops.node_macs``. Parameters are the elements of
float and 8-bit constant tensors (initializers and Constant nodes) of 2+ elements, except
the scale/zero-point inputs of Q/DQ nodes.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphc.data import resolve_shape, model_signature, synthetic_dataset
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

    def as_dict(self) -> dict:
        return {"nodes": self.nodes, "params": self.params, "size_bytes": self.size_bytes,
                "macs": self.macs, "macs_by_op": self.macs_by_op, "ops": self.ops,
                "uncounted_nodes": self.uncounted}


def _constant_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    yield onnx.TensorProto(name=node.output[0], dims=attr.t.dims, data_type=attr.t.data_type)


def count_params(model: onnx.ModelProto) -> int:
    qdq_params = {name for node in model.graph.node if node.op_type in QDQ_OPS for name in node.input[1:]}
    total = 0
    for tensor in _constant_tensors(model):
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type in PARAM_TYPES and numel > 1 and tensor.name not in qdq_params:
            total += numel
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
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = fixed
    known: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in inferred.graph.initializer}
    for value_info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shape = _known_shape(value_info)
        if shape is not None:
            known[value_info.name] = shape
    for tensor in _constant_tensors(model):
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


def model_stats(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None,
                size_bytes: int | None = None) -> ModelStats:
    compute = [n for n in model.graph.node if n.op_type in MAC_OPS]
    wanted = {name for n in compute for name in [*n.input, *n.output] if name}
    try:
        shape = tensor_shapes(model, shapes, wanted) if compute else {}
    except Exception:  # an input signature we cannot resolve: MACs unknown, rest still useful
        shape = {}
    macs_by_op: dict[str, int] = collections.Counter()
    uncounted = []
    for node in compute:
        macs = _node_macs(node, shape)
        if macs is None:
            uncounted.append(node.name or node.op_type)
        else:
            macs_by_op[node.op_type] += macs
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return ModelStats(
        nodes=len(model.graph.node), ops=dict(ops.most_common()), params=count_params(model),
        size_bytes=size_bytes if size_bytes is not None else proto_bytes(model),
        macs=sum(macs_by_op.values()), macs_by_op=dict(macs_by_op), uncounted=uncounted)


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
