"""fold's rewrite rules, one small graph each, checked against onnxruntime on the original."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphc.context import Context
from graphc.graph import to_graph, to_model
from graphc.passes.fold import FoldOptions, FoldPass
from graphc.runtime import open_session

rng = np.random.default_rng(0)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def bn_params(prefix, channels):
    return [const(f"{prefix}_{k}", v) for k, v in (
        ("scale", rng.uniform(0.5, 2, channels)), ("bias", rng.normal(size=channels)),
        ("mean", rng.normal(size=channels)), ("var", rng.uniform(0.5, 2, channels)))]


def bn_node(x, y, prefix):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
                            [y], epsilon=1e-3)


def out(name, rank):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)


def model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def fold(m, **options):
    graph = to_graph(m)
    result = FoldPass(FoldOptions(**options)).run(graph, Context.for_model(m))
    return to_model(result.graph, m), result


def assert_same_outputs(original, folded, feeds):
    want = open_session(original).run(None, feeds)
    got = open_session(folded).run(None, feeds)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))
    return want


def ops(m):
    return [n.op_type for n in m.graph.node]


def test_bn_folds_into_conv_transpose_with_groups():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])
    y = out("y", 4)
    w = const("w", rng.normal(size=(4, 3, 3, 3)))  # 2 groups x 3 = 6 output channels
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], group=2), bn_node("t", "y", "bn")]
    m = model(nodes, [x], [y], [w, *bn_params("bn", 6)])
    folded, result = fold(m)
    assert ops(folded) == ["ConvTranspose"] and result.stats["bn_folded"] == 1
    assert_same_outputs(m, folded, {"x": rng.normal(size=(2, 4, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize("trans_b, bias_shape", [(0, None), (1, [5]), (1, [1, 5])])
def test_bn_folds_into_gemm(trans_b, bias_shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7])
    y = out("y", 2)
    w = const("w", rng.normal(size=(5, 7) if trans_b else (7, 5)))
    inits = [w, *bn_params("bn", 5)]
    gemm_inputs = ["x", "w"]
    if bias_shape:
        inits.append(const("c", rng.normal(size=bias_shape)))
        gemm_inputs.append("c")
    nodes = [helper.make_node("Gemm", gemm_inputs, ["t"], transB=trans_b, alpha=0.7, beta=1.3),
             bn_node("t", "y", "bn")]
    m = model(nodes, [x], [y], inits)
    folded, _ = fold(m)
    assert ops(folded) == ["Gemm"]
    assert_same_outputs(m, folded, {"x": rng.normal(size=(3, 7)).astype(np.float32)})


def test_bn_folds_into_rank2_matmul_as_add_but_not_rank3():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = out("y", 2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), bn_node("t", "y", "bn")]
    m = model(nodes, [x], [y], [const("w", rng.normal(size=(6, 4))), *bn_params("bn", 4)])
    folded, _ = fold(m)
    assert ops(folded) == ["MatMul", "Add"]
    assert_same_outputs(m, folded, {"x": rng.normal(size=(3, 6)).astype(np.float32)})

    x3 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])
    m3 = model(nodes, [x3], [out("y", 3)], [const("w", rng.normal(size=(6, 4))), *bn_params("bn", 4)])
    folded3, result = fold(m3)  # BN's channel axis 1 is not the MatMul's output column
    assert "BatchNormalization" in ops(folded3) and result.stats["bn_folded"] == 0
    assert_same_outputs(m3, folded3, {"x": rng.normal(size=(2, 4, 6)).astype(np.float32)})


def test_shared_weight_is_copied_not_edited():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])
    outs = [out(n, 4) for n in ("y", "z")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"]), bn_node("t", "y", "bn"),
             helper.make_node("Conv", ["x", "w"], ["z"])]
    m = model(nodes, [x], outs, [const("w", rng.normal(size=(3, 2, 3, 3))), *bn_params("bn", 3)])
    folded, _ = fold(m)
    assert ops(folded) == ["Conv", "Conv"]
    assert_same_outputs(m, folded, {"x": rng.normal(size=(1, 2, 6, 6)).astype(np.float32)})


def test_bn_whose_input_is_also_read_elsewhere_stays():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])
    outs = [out(n, 4) for n in ("y", "t")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"]), bn_node("t", "y", "bn")]
    m = model(nodes, [x], outs, [const("w", rng.normal(size=(3, 2, 3, 3))), *bn_params("bn", 3)])
    folded, result = fold(m)
    assert result.stats["bn_folded"] == 0 and "BatchNormalization" in ops(folded)


def test_identity_dropout_constants_and_dead_nodes():
    """Constant-node weights, a Dropout, an Identity feeding a graph output, a dead branch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = out("y", 2)
    weight = helper.make_tensor("wv", TensorProto.FLOAT, [4, 4], rng.normal(size=16).astype(np.float32).tolist())
    nodes = [helper.make_node("Constant", [], ["w"], value=weight),
             helper.make_node("Constant", [], ["two"], value_float=2.0),
             helper.make_node("Mul", ["two", "two"], ["four"]),  # constant subgraph
             helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Dropout", ["a"], ["b"]),
             helper.make_node("Mul", ["b", "four"], ["c"]),
             helper.make_node("Neg", ["x"], ["dead"]),
             helper.make_node("Identity", ["c"], ["y"])]
    m = model(nodes, [x], [y], [])
    folded, result = fold(m)
    assert ops(folded) == ["MatMul", "Mul"]
    assert [o.name for o in folded.graph.output] == ["y"]
    assert result.stats["identity_dropout_removed"] == 2 and result.stats["constants_to_initializers"] == 2
    assert_same_outputs(m, folded, {"x": rng.normal(size=(3, 4)).astype(np.float32)})


def test_identity_from_graph_input_to_output_stays():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = out("y", 2)
    m = model([helper.make_node("Identity", ["x"], ["y"])], [x], [y], [])
    folded, result = fold(m)
    assert ops(folded) == ["Identity"] and not result.changed


def test_dropout_that_may_train_is_left_alone():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = out("y", 2)
    mode = helper.make_tensor_value_info("training", TensorProto.BOOL, [])
    m = model([helper.make_node("Dropout", ["x", "", "training"], ["y"])], [x, mode], [y], [])
    folded, _ = fold(m)
    assert ops(folded) == ["Dropout"]


def test_fold_options_turn_rules_off():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])
    y = out("y", 4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"]), bn_node("t", "y", "bn")]
    m = model(nodes, [x], [y], [const("w", rng.normal(size=(3, 2, 3, 3))), *bn_params("bn", 3)])
    folded, result = fold(m, bn=False)
    assert "BatchNormalization" in ops(folded) and result.stats["bn_folded"] == 0
