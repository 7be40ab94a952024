"""Symbolic tensor shapes for the ``fuse`` rules: which tensors provably have one shape.

ONNX shape inference names every dim it cannot compute ``unk__N`` afresh, so the two inputs of
a transformer's residual Add come out as ``[unk__4, unk__5, 64]`` and ``[unk__23, unk__24, 64]``:
equal at run time, unequal on paper. onnxruntime's symbolic shape inference
(``onnxruntime.tools.symbolic_shape_infer``, the one its transformer optimizer uses) follows
batch and sequence through Shape/Gather/Concat/Reshape as sympy expressions, so both read
``[batch, sequence, 64]``. Rules:

1. It runs on the graph's weight-free skeleton (``graphc.graph.skeleton``); every weight whose
   values the skeleton drops is declared a graph input of its dtype and dims instead (symbolic
   inference reads the values of every initializer it meets), and Constant nodes holding
   ``value_float(s)`` / ``value_int(s)`` become initializers (it reads only ``value``).
2. ``auto_merge``: two dims that an op needs equal are taken as one, as onnxruntime's optimizer
   takes them, but only where both are expressions of the graph inputs' dims with an input dim
   in common (the embeddings' Add of ``sequence`` and ``Min(64, sequence)``, equal whenever
   the model runs). Any other merge (two different input dims, a literal, a dim that
   inference invented for a value it could not compute) is an assumption about the inputs,
   not a deduction: then no shape is returned at all.
3. Inference that stops part-way (an op it cannot type: opset 20's ReduceL2 at the end of the
   MiniLM export) keeps what it inferred before; a tensor without an inferred shape is absent
   from the result, and a rule that needs it leaves the site alone.
4. It is driven step by step as ``SymbolicShapeInference.infer_shapes`` drives it, not through
   that function, which writes ``sym_shape_infer_temp.onnx`` and its weights into the working
   directory whenever inference is incomplete.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.graph import skeleton

Dims = tuple[int | str, ...]
DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _has_values(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or any(len(getattr(tensor, f)) for f in DATA_FIELDS)


def _weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rule 1: the skeleton's valueless initializers become typed graph inputs."""
    kept = []
    for tensor in model.graph.initializer:
        if _has_values(tensor) or 0 in tensor.dims:
            kept.append(tensor)
        else:
            model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


CONSTANT_ATTRS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rule 1: top-level Constant nodes with a numeric list or scalar attribute become initializers."""
    kept = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kind = next(iter(attrs), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(attrs) == 1 and kind in CONSTANT_ATTRS:
            values = np.asarray(attrs[kind], dtype=CONSTANT_ATTRS[kind])
            model.graph.initializer.append(onnx.numpy_helper.from_array(values, node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, Dims] | None:
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            return None  # a dim without a name: equal to nothing
    return tensor_type.elem_type, tuple(dims)


def _merges_deduced(inference) -> bool:
    """Rule 2: every dim merge inference made joins two expressions of the input dims that
    share an input dim."""
    inputs = set(getattr(inference, "input_symbols_", ()))
    dims = getattr(inference, "symbolic_dims_", {})
    for merged, kept in getattr(inference, "suggested_merge_", {}).items():
        if not isinstance(kept, str) or merged not in dims or kept not in dims:
            return False
        symbols = [{s.name for s in getattr(dims[d], "free_symbols", ())} for d in (merged, kept)]
        if not all(names and names <= inputs for names in symbols) or not symbols[0] & symbols[1]:
            return False
    return True


def symbolic_shapes(graph: gs.Graph) -> dict[str, tuple[int, Dims]]:
    """Tensor name -> (ONNX element type, dims: ints and symbol names) of every tensor of
    ``graph``'s top level that symbolic inference typed (rules 1-4); ``graph`` is unchanged."""
    from onnxruntime.tools import symbolic_shape_infer as ssi

    model = _weights_as_inputs(_constants_as_initializers(skeleton(graph)))
    inference = ssi.SymbolicShapeInference(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    with _quiet(ssi.__name__):
        try:
            inference._preprocess(model)
            while inference.run_:
                inference._infer_impl()
        except Exception:  # rule 3: an op it cannot type; symbolic inference raises bare Exceptions too
            pass
    if not _merges_deduced(inference):
        return {}
    known = getattr(inference, "known_vi_", {}) or {}
    shapes = {}
    for name, value_info in known.items():
        typed = _dims(value_info)
        if typed is not None:
            shapes[name] = typed
    return shapes
