"""A bound on the tensors that are computed ahead of time, checked when a model is loaded.

Constant folding (graphc's ``fold``, onnxruntime's own at session creation) and ONNX shape
inference with data propagation materialise every tensor that depends only on constants. A
model of a few hundred bytes can make them allocate without limit (40 Concats that each
double a constant: 2^40 values, 8 TiB). ``onnx.shape_inference`` has no size limit to set and
graphsurgeon's ``size_threshold`` applies only after a value was computed, so graphc checks
first, from static shapes alone (no data propagation, nothing materialised):

1. a tensor is *constant-computed* when the node that makes it reads only initializers,
   ``Constant`` outputs and other constant-computed tensors (graph inputs and subgraph
   bodies are not followed);
2. the static shape ONNX shape inference gives it (on the weight-free skeleton) is its size;
   a tensor whose shape inference cannot tell is not bounded here;
3. any constant-computed tensor over ``MAX_TENSOR_BYTES`` makes the model bad input: refused
   in one line naming the node, the tensor and its size, before any session opens.
"""

from __future__ import annotations

import math

import onnx

from graphc.errors import GraphcError
from graphc.graph import skeleton
from graphc.model_io import item_bytes

MAX_TENSOR_BYTES = 2 * 2**30  # the largest tensor graphc lets be computed ahead of time (rule 3)


def _static_bytes(value_info: onnx.ValueInfoProto) -> int | None:
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if any(d is None for d in dims):
        return None
    return math.prod(dims) * (item_bytes(tensor_type.elem_type) or 8)  # unknown types: a pointer each, at least


def check_constant_tensor_sizes(model: onnx.ModelProto, what: str, limit: int = MAX_TENSOR_BYTES) -> None:
    """Refuse ``model`` (GraphcError, exit 2) when a constant-computed tensor would exceed
    ``limit`` bytes (rules 1-3)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=False)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return  # inference itself fails: the structural check reports it
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    constant = {t.name for t in model.graph.initializer} - {i.name for i in model.graph.input}
    constant.add("")  # an omitted optional input
    for node in inferred.graph.node:
        if not all(name in constant for name in node.input):
            continue
        for name in node.output:
            constant.add(name)
            size = _static_bytes(infos[name]) if name in infos else None
            if size is not None and size > limit:
                raise GraphcError(f"{what}: node {node.name or node.op_type!r} ({node.op_type}) would compute the "
                                  f"constant tensor {name!r} of {size:,} bytes ahead of time, over graphc's limit of "
                                  f"{limit:,} bytes; refused")
