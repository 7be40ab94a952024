"""graphc.checks.check_model, the check after every pass: each of its three conditions
rejects a broken model with one line naming the pass, and a valid model passes (read from a
temporary file with external weights, so large models are checked without in-memory copies)."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphc.checks import BrokenModelError, check_model, run_checked

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


def _reshape_model(target=(3, 5)):
    """x [N, 8] -> Reshape to a constant ``target``: valid, opens, and fails at run time when
    the sizes differ (shape inference cannot tell with N symbolic)."""
    shape = onnx.numpy_helper.from_array(np.array(target, np.int64), "target")
    graph = oh.make_graph([oh.make_node("Reshape", ["x", "target"], ["y"], name="bad_reshape")], "g",
                          [oh.make_tensor_value_info("x", FLOAT, ["N", 8])],
                          [oh.make_tensor_value_info("y", FLOAT, ["A", "B"])], [shape])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_a_run_failure_after_a_pass_is_a_bug_naming_the_node():
    model = _reshape_model()
    session = check_model(model, after="pass prune")  # the three structural conditions hold
    feeds = {"x": np.ones((1, 8), np.float32)}
    with pytest.raises(BrokenModelError, match=r"^pass prune produced a model that fails at run time: "
                                               r"Reshape node 'bad_reshape': .*"):
        run_checked(session, feeds, "pass prune", model)
    assert run_checked(check_model(_reshape_model((2, 4)), after="pass prune"), feeds, "pass prune")[0].shape == (2, 4)


def test_a_run_failure_of_the_input_model_on_data_is_bad_input(tmp_path, capsys):
    """On the user's --data the input model must run (exit 2 otherwise); on synthetic inputs
    it may not (an integer Div by the zeros drawn): a note says the run check is off."""
    from graphc import cli

    path, data, out = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "o.onnx"
    onnx.save(_reshape_model(), str(path))
    np.savez(data, x=np.ones((2, 8), np.float32))
    assert cli.main(["optimize", str(path), "--passes", "fold", "--data", str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path} does not run on the first rows of {data}: Reshape node 'bad_reshape':" in err
    assert not out.exists()
    assert cli.main(["optimize", str(path), "--passes", "fold", "-o", str(out)]) == 0
    assert (f"note: models not run on sample inputs after each pass ({path} does not run on synthetic sample "
            f"inputs: Reshape node 'bad_reshape':") in capsys.readouterr().out


def test_a_checker_message_keeps_the_node_it_names():
    """onnx.checker names the node on its second line; the one-line message keeps it."""
    unsorted = _model([oh.make_node("Relu", ["h"], ["y"], name="second"),
                       oh.make_node("MatMul", ["x", "w"], ["h"], name="first")])
    with pytest.raises(BrokenModelError, match=r"topologically sorted.*name: second OpType: Relu") as info:
        check_model(unsorted, after="pass prune")
    assert "\n" not in str(info.value)


def test_the_pipeline_runs_every_pass_output_once(tmp_path, monkeypatch, capsys):
    """A pass whose model passes the checker, shape inference and opens, but cannot run,
    stops the pipeline with exit 1 naming the pass and the node; nothing is written."""
    from graphc import cli
    from graphc.pass_api import Pass, PassResult
    from graphc.passes import PASSES

    class BreakReshape(Pass):
        name = "break-reshape"
        summary = "test only"
        in_place = True

        def run(self, graph, ctx):
            graph.nodes[0].inputs[1].values = np.array([3, 5], np.int64)
            return PassResult(changed=True)

    monkeypatch.setitem(PASSES, "break-reshape", BreakReshape)
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_reshape_model((-1, 4)), str(path))
    assert cli.main(["optimize", str(path), "--passes", "break-reshape", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pass break-reshape produced a model that fails at run time: Reshape node 'bad_reshape':" in err
    assert not out.exists()
