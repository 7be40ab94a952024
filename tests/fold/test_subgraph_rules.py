"""fold inside If/Loop bodies (graphc.graph.fold_constants, export_model): a body's own constant
work folds there, an outer weight is never folded into a body copy, and a constant read by
several graphs is written once."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from graphc.graph import export_model, fold_constants, to_graph

BIG = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096  # 16 KiB: a weight
SMALL = np.array([2.0], np.float32)  # 4 bytes: folds anywhere


def if_model(branch_nodes, outputs=("t_out", "e_out"), top_nodes=()):
    """y = If(c, then, else) over x [2, 64]; both branches built by ``branch_nodes(prefix)``."""
    def branch(prefix, out):
        return helper.make_graph(branch_nodes(prefix), prefix, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 64])])

    graph = helper.make_graph(
        [*top_nodes, helper.make_node("If", ["c"], ["y"], then_branch=branch("t", outputs[0]),
                                      else_branch=branch("e", outputs[1]))], "top",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(BIG, "W"), numpy_helper.from_array(SMALL, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ops(graph: gs.Graph, branch: str) -> list[str]:
    return [n.op for n in graph.nodes[-1].attrs[branch].nodes]


def test_an_outer_weight_is_not_folded_into_each_branch():
    model = if_model(lambda p: [helper.make_node("Transpose", ["W"], [f"{p}_wt"]),
                                helper.make_node("MatMul", ["x", f"{p}_wt"], [f"{p}_out"])])
    graph = fold_constants(to_graph(model))
    assert ops(graph, "then_branch") == ["Transpose", "MatMul"] and ops(graph, "else_branch") == ["Transpose", "MatMul"]


def test_small_outer_constants_and_a_branch_s_own_work_fold_inside_it():
    def nodes(p):
        local = helper.make_node("Constant", [], [f"{p}_k"], value=numpy_helper.from_array(np.float32([3.0])))
        return [local, helper.make_node("Mul", ["s", f"{p}_k"], [f"{p}_sk"]),  # small outer x own: folds
                helper.make_node("Mul", ["x", f"{p}_sk"], [f"{p}_out"])]

    graph = fold_constants(to_graph(if_model(nodes)))
    assert ops(graph, "then_branch") == ["Mul"] and ops(graph, "else_branch") == ["Mul"]
    folded = graph.nodes[-1].attrs["then_branch"].nodes[0].inputs[1]
    assert isinstance(folded, gs.Constant) and np.array_equal(folded.values, [6.0])


def homes(model: onnx.ModelProto, name: str) -> list[str]:
    found = [model.graph.name] if any(t.name == name for t in model.graph.initializer) else []
    for attr in model.graph.node[-1].attribute:
        found += [attr.g.name] if any(t.name == name for t in attr.g.initializer) else []
    return found


def test_a_weight_read_in_both_branches_is_written_once_in_the_enclosing_graph():
    model = if_model(lambda p: [helper.make_node("MatMul", ["x", "W"], [f"{p}_out"])])
    assert homes(export_model(to_graph(model)), "W") == ["top"]
    assert sorted(homes(gs.export_onnx(to_graph(model)), "W")) == ["e", "t"]  # graphsurgeon alone: one per branch


def test_a_weight_read_outside_and_in_a_branch_is_written_once_outside():
    model = if_model(lambda p: [helper.make_node("MatMul", ["x", "W"], [f"{p}_out"])],
                     top_nodes=[helper.make_node("MatMul", ["x", "W"], ["side"])])
    model.graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [2, 64]))
    assert homes(export_model(to_graph(model)), "W") == ["top"]
