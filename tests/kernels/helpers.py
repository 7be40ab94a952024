"""One-node models of graphc's kernel ops, their sessions, and the int64 references."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphc.kernels import DOMAIN
from graphc.kernels.layout import BlockColumns, pack
from graphc.runtime import open_session


def weight_inputs(columns: BlockColumns) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(columns.col_ptr, "col_ptr"), numpy_helper.from_array(columns.block_k, "block_k"),
            numpy_helper.from_array(columns.values, "values")]


def integer_model(columns: BlockColumns) -> onnx.ModelProto:
    """``Y = (A - zp) x W`` as one ``SparseMatMulInteger``; A is ``[batch, rows, K]``."""
    node = helper.make_node("SparseMatMulInteger", ["A", "zp", "col_ptr", "block_k", "values"], ["Y"],
                            domain=DOMAIN, K=columns.k)
    graph = helper.make_graph(
        [node], "sparse_integer",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["batch", "rows", columns.k]),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["batch", "rows", columns.n])], weight_inputs(columns))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def dynamic_model(columns: BlockColumns, scale: np.ndarray, bias: np.ndarray | None) -> onnx.ModelProto:
    inputs = ["A", "col_ptr", "block_k", "values", "b_scale"] + (["bias"] if bias is not None else [])
    node = helper.make_node("SparseDynamicQuantizeMatMul", inputs, ["Y"], domain=DOMAIN, K=columns.k)
    initializers = weight_inputs(columns) + [numpy_helper.from_array(scale.astype(np.float32), "b_scale")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), "bias"))
    graph = helper.make_graph(
        [node], "sparse_dynamic", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["rows", columns.k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", columns.n])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def integer_product(a: np.ndarray, zero_point: int, weight: np.ndarray) -> np.ndarray:
    """The int64 reference: ``(A - zp) @ W``."""
    return (a.astype(np.int64) - zero_point) @ weight.astype(np.int64)


def run_integer(weight: np.ndarray, a: np.ndarray, zero_point: int, threads: int = 2) -> np.ndarray:
    session = open_session(integer_model(pack(weight)), threads=threads)
    return session.run(None, {"A": a, "zp": np.array(zero_point, np.uint8)})[0]


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """ONNX DynamicQuantizeLinear in numpy: uint8 values, scale, zero point."""
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32(1.0 if high == low else (np.float32(high) - np.float32(low)) / np.float32(255))
    zero_point = int(np.clip(np.rint(-np.float32(low) / scale), 0, 255))
    values = np.clip(np.rint(x.astype(np.float32) / scale) + zero_point, 0, 255).astype(np.uint8)
    return values, scale, zero_point


def to_float_model(columns: BlockColumns, scale: np.ndarray, bias: np.ndarray | None) -> onnx.ModelProto:
    """``SparseMatMulIntegerToFloat(A, a_scale, a_zp, W, b_scale[, bias])``, A ``[rows, K]``."""
    inputs = ["A", "a_scale", "zp", "col_ptr", "block_k", "values", "b_scale"] + (["bias"] if bias is not None else [])
    node = helper.make_node("SparseMatMulIntegerToFloat", inputs, ["Y"], domain=DOMAIN, K=columns.k)
    initializers = weight_inputs(columns) + [numpy_helper.from_array(scale.astype(np.float32), "b_scale")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), "bias"))
    graph = helper.make_graph(
        [node], "sparse_to_float",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["rows", columns.k]),
         helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", columns.n])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def dense_integer_chain(weight: np.ndarray, scale: np.ndarray, bias: np.ndarray | None) -> onnx.ModelProto:
    """What graphc's int8 writes for a dynamic layer after its DynamicQuantizeLinear:
    ``MatMulInteger -> Cast -> Mul(Mul(a_scale, b_scale)) (-> Add bias)``."""
    nodes = [helper.make_node("MatMulInteger", ["A", "W", "zp"], ["product"]),
             helper.make_node("Cast", ["product"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["a_scale", "b_scale"], ["scales"]),
             helper.make_node("Mul", ["as_float", "scales"], ["Y" if bias is None else "scaled"])]
    initializers = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(scale.astype(np.float32), "b_scale")]
    if bias is not None:
        nodes.append(helper.make_node("Add", ["scaled", "bias"], ["Y"]))
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), "bias"))
    graph = helper.make_graph(
        nodes, "dense_chain",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["rows", weight.shape[0]]),
         helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", weight.shape[1]])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
