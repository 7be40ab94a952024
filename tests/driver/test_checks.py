"""graphc.checks.check_model, the check after every pass: each of its three conditions
rejects a broken model with one line naming the pass, and a valid model passes (read from a
temporary file with external weights, so large models are checked without in-memory copies)."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphc.checks import BrokenModelError, check_model

FLOAT = onnx.TensorProto.FLOAT


def _model(nodes, weight_shape=(8, 4), y_shape=("N", 4)):
    weight = onnx.numpy_helper.from_array(np.ones(weight_shape, np.float32), "w")  # 4 KiB+: stored externally
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", FLOAT, ["N", 8])],
                          [oh.make_tensor_value_info("y", FLOAT, list(y_shape))], [weight])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_a_valid_model_with_external_weights_passes():
    check_model(_model([oh.make_node("MatMul", ["x", "w"], ["y"])], weight_shape=(8, 2048), y_shape=("N", 2048)),
                after="pass fold")


def test_checker_failure_is_one_line_naming_the_pass():
    broken = _model([oh.make_node("MatMul", ["x", "missing"], ["y"])])
    with pytest.raises(BrokenModelError, match=r"^pass prune produced an invalid model: .*missing"):
        check_model(broken, after="pass prune")


def test_strict_shape_inference_failure_is_caught():
    broken = _model([oh.make_node("MatMul", ["x", "w"], ["y"])], weight_shape=(5, 4))  # 8 vs 5: inner dims differ
    with pytest.raises(BrokenModelError, match=r"^pass int8 produced an invalid model: .*"):
        check_model(broken, after="pass int8")


def test_onnxruntime_refusal_is_caught():
    broken = _model([oh.make_node("MatMul", ["x", "w"], ["y"], domain="com.example.none")])
    broken.opset_import.append(oh.make_opsetid("com.example.none", 1))
    with pytest.raises(BrokenModelError, match=r"onnxruntime cannot run the model pass int8"):
        check_model(broken, after="pass int8")
