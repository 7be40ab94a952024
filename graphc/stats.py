"""Model statistics: parameters, op histogram, size and MACs.

MACs (multiply-accumulates) are counted for one batch at concrete input shapes (dynamic
dims resolved like synthetic data: first axis 1, integer sequence axes 64, or ``--shape``).
Shapes come from ONNX shape inference with data propagation; tensors it cannot resolve are
measured by one onnxruntime run that exposes them. Counted ops and their rules:

- Conv / ConvInteger / QLinearConv: output elements x (input channels / group) x kernel size;
- ConvTranspose: input elements x (output channels / group) x kernel size;
- Gemm: M x N x K; MatMul / MatMulInteger / QLinearMatMul / MatMulIntegerToFloat /
  FusedMatMul: output elements x K (the reduced dim).

Other ops are cheap element-wise work and are not counted. Parameters are the elements of
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

CONV_LIKE = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_LIKE = {"MatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "FusedMatMul"}
PARAM_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
               onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
SHAPE_DATA_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}  # may be shapes: kept for data propagation
SMALL_TENSOR_BYTES = 4096


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


def _with_concrete_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A weight-free copy of ``model`` (large initializers keep name, type and dims, not their
    values) with the graph inputs at their resolved shapes: what ONNX shape inference needs,
    without a second copy of the weights (BERT-base: 440 MB)."""
    from graphc.runtime import copy_fields

    fixed = onnx.ModelProto()
    copy_fields(model, fixed, skip="graph")
    copy_fields(model.graph, fixed.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.data_type in SHAPE_DATA_TYPES or tensor.ByteSize() <= SMALL_TENSOR_BYTES:
            fixed.graph.initializer.append(tensor)  # shape data (Reshape targets...) keeps its values
        else:
            fixed.graph.initializer.append(onnx.TensorProto(name=tensor.name, dims=tensor.dims,
                                                            data_type=tensor.data_type))
    _set_input_shapes(fixed, model, shapes)
    return fixed


def _set_input_shapes(target: onnx.ModelProto, model: onnx.ModelProto, shapes) -> list:
    """Set ``target``'s graph inputs to their resolved shapes; returns the old input protos."""
    old = [onnx.ValueInfoProto() for _ in target.graph.input]
    for saved, value_info in zip(old, target.graph.input):
        saved.CopyFrom(value_info)
        spec = next((s for s in model_signature(model) if s.name == value_info.name), None)
        if spec is None or not value_info.type.tensor_type.HasField("shape"):
            continue
        for dim, size in zip(value_info.type.tensor_type.shape.dim, resolve_shape(spec, shapes)):
            dim.Clear()
            dim.dim_value = size
    return old


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
    fixed = _with_concrete_inputs(model, shapes)
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
    """Shapes of ``names`` from one onnxruntime run of ``model`` at the resolved input shapes."""
    from graphc.runtime import open_session

    existing = {o.name for o in model.graph.output}
    count = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    old_inputs = _set_input_shapes(model, model, shapes)
    try:  # outputs and input shapes change only while the session opens: no copy of the model
        session = open_session(model, what="the shape probe")
    except Exception:  # shapes stay unknown; the MACs of those nodes are reported as uncounted
        return {}
    finally:
        del model.graph.output[count:]
        for value_info, saved in zip(model.graph.input, old_inputs):
            value_info.CopyFrom(saved)
    try:
        feeds, _ = next(synthetic_dataset(model, shapes=shapes).batches())
        outputs = session.run(None, feeds)
    except Exception:
        return {}
    return {o.name: tuple(v.shape) for o, v in zip(session.get_outputs(), outputs)}


def _node_macs(node: onnx.NodeProto, shape) -> int | None:
    """MACs of one node given a name -> shape lookup (None: unknown shape)."""
    def get(i):
        return shape.get(node.input[i]) if i < len(node.input) else None

    out = shape.get(node.output[0]) if node.output else None
    if node.op_type in CONV_LIKE:
        weight = get(CONV_LIKE[node.op_type])
        if weight is None or out is None:
            return None
        return int(np.prod(out)) * int(np.prod(weight[1:]))
    if node.op_type == "ConvTranspose":
        x, weight = get(0), get(1)
        if x is None or weight is None:
            return None
        return int(np.prod(x)) * int(np.prod(weight[1:]))
    if node.op_type == "Gemm":
        a = get(0)
        if a is None or out is None:
            return None
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return int(np.prod(out)) * a[0 if trans_a else -1]
    if node.op_type in MATMUL_LIKE:
        a = get(3 if node.op_type == "QLinearMatMul" else 0)
        if a is None or out is None:
            return None
        return int(np.prod(out)) * a[-1]
    return 0


def model_stats(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None,
                size_bytes: int | None = None) -> ModelStats:
    compute = [n for n in model.graph.node
               if n.op_type in CONV_LIKE or n.op_type in MATMUL_LIKE or n.op_type in ("Gemm", "ConvTranspose")]
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
        size_bytes=size_bytes if size_bytes is not None else model.ByteSize(),
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
