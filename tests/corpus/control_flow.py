"""Corpus models with subgraphs, written here with onnx.helper: an If whose branches both read
one outer weight (and each hold a weight of their own), and a Loop whose body reads an outer
weight. Both use an outer ``Transpose`` pattern inside the body (what exporters write for a
Linear), which folding could copy into every body."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.corpus import corpus_model

FEATURES = 64
TRIPS = 3


def _weights(seed: int, *shape: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)


def _branch(name: str, activation: str, seed: int) -> onnx.GraphProto:
    """x @ W.T (W outer) @ own weight, then ``activation``."""
    own = numpy_helper.from_array(_weights(seed, FEATURES, FEATURES), f"{name}_own")
    nodes = [helper.make_node("Transpose", ["W"], [f"{name}_wt"], name=f"{name}/transpose"),
             helper.make_node("MatMul", ["x", f"{name}_wt"], [f"{name}_h"], name=f"{name}/matmul_shared"),
             helper.make_node("MatMul", [f"{name}_h", f"{name}_own"], [f"{name}_g"], name=f"{name}/matmul_own"),
             helper.make_node(activation, [f"{name}_g"], [f"{name}_out"], name=f"{name}/act")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT,
                                                                             ["batch", FEATURES])], [own])


@corpus_model("if-shared-weights", origin="written in tests/corpus/control_flow.py",
              tags=("subgraph", "if"))
def build_if(directory: pathlib.Path) -> pathlib.Path:
    """y = If(mean(x) > 0, relu(x W^T A), sigmoid(x W^T B)): W outer, A and B in the branches."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0, name="mean"),
             helper.make_node("Greater", ["m", "zero"], ["c"], name="positive"),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=_branch("then", "Relu", 1),
                              else_branch=_branch("else", "Sigmoid", 2))]
    graph = helper.make_graph(
        nodes, "if_shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", FEATURES])],
        [numpy_helper.from_array(_weights(0, FEATURES, FEATURES), "W"), numpy_helper.from_array(np.float32(0), "zero")])
    return _save(graph, directory / "if_shared_weights.onnx")


@corpus_model("loop-outer-weight", origin="written in tests/corpus/control_flow.py", tags=("subgraph", "loop"))
def build_loop(directory: pathlib.Path) -> pathlib.Path:
    """h <- tanh(h @ W^T + x @ W^T) for ``TRIPS`` iterations from h = x (W and x outer), y = h:
    shape inference knows the shapes of ``x @ W^T`` only (a Loop's carried ``h`` loses its
    shape)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Transpose", ["W"], ["wt"], name="body/transpose"),
         helper.make_node("MatMul", ["x", "wt"], ["xw"], name="body/matmul_x"),
         helper.make_node("MatMul", ["h_in", "wt"], ["hw0"], name="body/matmul_h"),
         helper.make_node("Add", ["hw0", "xw"], ["hw"], name="body/add"),
         helper.make_node("Tanh", ["hw"], ["h_out"], name="body/tanh")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None)],  # typed from the Loop's input, as
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),   # exporters write bodies
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)],
        "loop_outer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", FEATURES])],
        [numpy_helper.from_array(_weights(3, FEATURES, FEATURES), "W"),
         numpy_helper.from_array(np.array(TRIPS, np.int64), "trips")])
    return _save(graph, directory / "loop_outer_weight.onnx")


def _save(graph: onnx.GraphProto, path: pathlib.Path) -> pathlib.Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
