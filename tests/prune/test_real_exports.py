"""Prune rules that real exports exposed (issue 13), each on the smallest graph that shows it,
and the corpus blocks written for them checked against the masked-original oracle (the
original with exactly the removed channels' consumer weights zeroed, run in onnxruntime).

- a Slice that cuts the axis holding a fused Q/K/V tensor's three parts blocks that group
  and stops there (PP-OCRv4's recognizer crashed in ``_remap_axis`` at the Squeeze after it);
- C2f / SPPF (YOLOv8): one split-sizes initializer shared by two Splits; a Concat of four
  pooled copies of one group, and of one tensor with itself;
- subgraphs: an If with a constant condition flattened with all its outputs; channels an If
  branch reads from the outer graph block their group;
- selection: no Split output loses all its channels; scores: a member that holds only some
  of a group's units does not score the others as zero.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs
import pytest

from graphc.graph import fold_constants, to_graph, to_model
from graphc.passes.prune import PruneOptions
from graphc.passes.prune.channel_groups import ChannelGroup, Member
from graphc.passes.prune.plan import analyse
from graphc.passes.prune.scores import magnitude_scores
from graphc.passes.prune.selection import PruneConfig, select_units
from graphc.runtime import open_session
from tests.corpus.attention_blocks import _fused_qkv_model
from tests.corpus.yolo_blocks import build as build_yolo
from tests.prune.oracle import pruned_and_masked

FLOAT = onnx.TensorProto.FLOAT


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return open_session(model).run(None, feeds)


@pytest.fixture(scope="module")
def yolo(tmp_path_factory) -> onnx.ModelProto:
    return onnx.load(str(build_yolo(tmp_path_factory.mktemp("yolo"))))


def test_fused_qkv_slice_blocks_its_group_and_the_ffn_prunes_exactly():
    model = _fused_qkv_model()
    groups = sorted(analyse(to_graph(model)).groups.values(), key=lambda g: g.id)
    qkv = next(g for g in groups if g.origin == "MatMul qkv.MatMul")
    assert qkv.blocked == "sliced along its channel axis by q.Slice"
    ffn = next(g for g in groups if g.origin == "MatMul ffn1.MatMul")
    assert ffn.blocked is None and ffn.units == 64
    plan, pruned, masked = pruned_and_masked(model, PruneOptions(ratio=0.3))
    assert plan.removed.get(ffn.id)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 8, 32)).astype(np.float32)}
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(masked, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [PruneOptions(ratio=0.3), PruneOptions(ratio=0.6, round_to=1)],
                         ids=["0.3", "0.6-round1"])
def test_c2f_sppf_prunes_exactly(yolo, options):
    """Both C2f Splits read one sizes initializer and lose different counts; the SPPF Concat
    holds one group four times and the head Concat one tensor twice: every copy goes."""
    plan, pruned, masked = pruned_and_masked(yolo, options)
    sizes = [n.inputs[1].values.tolist() for n in plan.graph.nodes if n.op == "Split"]
    assert sizes[0] != sizes[1] and min(min(s) for s in sizes) > 0
    sppf = next(g for g in plan.groups if g.origin == "Conv /backbone/backbone.5/cv1/conv/Conv")
    assert plan.removed.get(sppf.id)
    feeds = {"images": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(masked, feeds)[0], rtol=1e-3, atol=1e-4)


def _if_graph(cond, then_nodes, else_nodes, branch_outputs, outer_nodes, inputs, outputs, initializers=()):
    then_g = oh.make_graph(then_nodes, "then", [], branch_outputs[0])
    else_g = oh.make_graph(else_nodes, "else", [], branch_outputs[1])
    if_node = oh.make_node("If", [cond], ["a", "b"], then_branch=then_g, else_branch=else_g, name="the_if")
    return oh.make_model(oh.make_graph([if_node, *outer_nodes], "g", inputs, outputs, list(initializers)),
                         opset_imports=[oh.make_opsetid("", 17)])


def test_a_constant_if_is_flattened_with_every_output():
    """One Split in the taken branch makes both outputs of the If (graphsurgeon 0.6.1's own
    flattening drops the second: the Mul would read a tensor nothing produces)."""
    info = oh.make_tensor_value_info
    cond = onnx.numpy_helper.from_array(np.array(True), "cond")
    halves = onnx.numpy_helper.from_array(np.array([4, 4], np.int64), "halves")
    model = _if_graph(
        "cond",
        [oh.make_node("Split", ["x", "halves"], ["ta", "tb"], axis=1)],
        [oh.make_node("Identity", ["x"], ["ea"]), oh.make_node("Identity", ["x"], ["eb"])],
        ([info("ta", FLOAT, None), info("tb", FLOAT, None)], [info("ea", FLOAT, None), info("eb", FLOAT, None)]),
        [oh.make_node("Mul", ["a", "b"], ["y"])],
        [info("x", FLOAT, [1, 8])], [info("y", FLOAT, [1, 4])], [cond, halves])
    feeds = {"x": np.arange(8, dtype=np.float32)[None]}
    expected = _run(model, feeds)[0]
    graph = to_graph(model)
    fold_constants(graph, flatten_subgraphs=True)
    assert [n.op for n in graph.nodes] == ["Split", "Mul"]
    flat = to_model(graph, model)
    onnx.checker.check_model(flat, full_check=True)
    np.testing.assert_array_equal(_run(flat, feeds)[0], expected)


def _conv_into_if_model() -> onnx.ModelProto:
    """Conv (8 channels) -> Relu -> an If whose branches read that tensor from the outer
    graph (the condition is a model input) -> Conv: the first Conv's channels go into a subgraph."""
    info = oh.make_tensor_value_info
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    then_g = oh.make_graph([oh.make_node("Sigmoid", ["r"], ["t"])], "then", [], [info("t", FLOAT, None)])
    else_g = oh.make_graph([oh.make_node("Tanh", ["r"], ["e"])], "else", [], [info("e", FLOAT, None)])
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c"], ["r"]),
             oh.make_node("If", ["flag"], ["g"], then_branch=then_g, else_branch=else_g, name="branch"),
             oh.make_node("Conv", ["g", "w2"], ["y"], name="conv2")]
    graph = oh.make_graph(nodes, "g", [info("x", FLOAT, [1, 3, 8, 8]), info("flag", onnx.TensorProto.BOOL, [])],
                          [info("y", FLOAT, [1, 4, 8, 8])], [w1, w2])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_channels_read_inside_a_subgraph_block_their_group(tmp_path, capsys):
    from graphc import cli

    model = _conv_into_if_model()
    group = next(g for g in analyse(to_graph(model)).groups.values() if g.origin == "Conv conv1")
    assert group.blocked == "read inside a subgraph of If branch (prune does not follow channels into subgraphs)"
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, str(path))
    assert cli.main(["optimize", str(path), "--passes", "prune:0.5", "-o", str(out), "--quiet"]) == 0
    note = next(line for line in capsys.readouterr().out.splitlines() if "nothing prunable" in line)
    assert "read inside a subgraph of If branch" in note
    assert "does not look inside the subgraphs of 1 node(s): If" in note
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "flag": np.array(False)}
    np.testing.assert_array_equal(_run(onnx.load(str(out)), feeds)[0], _run(model, feeds)[0])


def _split_group() -> ChannelGroup:
    """8 channels split into two outputs of 4 (channels 0-3 in ``t0``, 4-7 in ``t1``)."""
    node = gs.Node("Split", inputs=[gs.Variable("x")], outputs=[gs.Variable("t0"), gs.Variable("t1")])
    group = ChannelGroup(0, 8, "test")
    first = np.array([0, 1, 2, 3, -1, -1, -1, -1])[:, None]
    second = np.array([-1, -1, -1, -1, 0, 1, 2, 3])[:, None]
    group.members += [Member("activation", "t0", 1, first), Member("activation", "t1", 1, second)]
    group.splits += [(node, 0), (node, 1)]
    return group


def test_no_split_output_loses_all_its_channels():
    group = _split_group()
    importance = {0: np.array([0.1, 0.2, 0.3, 0.4, 1.0, 1.1, 1.2, 1.3])}  # t0's channels come first
    chosen = select_units([group], importance, None, PruneConfig(ratio=0.5, scope="uniform"))
    assert chosen == {0: [0, 1, 2, 4]}  # three of t0, then the least important of t1


def test_a_member_that_holds_some_units_scores_only_those():
    """Channels 0-1 reach one weight, 2-3 two: all weights are ones, so all four tie (the
    channels a consumer does not read are not scored as zero there)."""
    producer = gs.Node("Conv", inputs=[gs.Variable("x"), gs.Constant("w", np.ones((4, 2, 1, 1), np.float32))])
    consumer = gs.Node("Conv", inputs=[gs.Variable("h"), gs.Constant("v", np.ones((5, 2, 1, 1), np.float32))])
    group = ChannelGroup(0, 4, "test")
    group.members += [Member("producer", "w", 0, np.arange(4)[:, None], producer, 1),
                      Member("consumer", "v", 1, np.array([-1, -1, 0, 1])[:, None], consumer, 1)]
    np.testing.assert_allclose(magnitude_scores(group, 2), np.ones(4))
