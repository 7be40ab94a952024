"""distill's preconditions: every refusal, with its one-line message (no training needed).

The graph rules run through ``DistillPass.check`` with a training environment that only
*looks* ready (a marker with the exact pins): ``check`` reads the marker and never starts
the worker, so these tests stay fast and need no onnxruntime-training.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphc import training_env
from graphc.data import Dataset
from graphc.errors import GraphcError
from graphc.passes.distill import DistillOptions, DistillPass

ROOT = pathlib.Path(__file__).resolve().parents[2]
CNN = ROOT / "models" / "fashion_cnn.onnx"


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """GRAPHC_HOME whose training venv passes ``training_env.ready`` (marker + python file)."""
    monkeypatch.setenv("GRAPHC_HOME", str(tmp_path / "home"))
    venv = training_env.env_dir()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / training_env.MARKER).write_text(json.dumps({"pins": list(training_env.PINS), "versions": {}}))
    return venv


def mlp(opset=17, op=None, qdq=False, out_rank=2, out_type=TensorProto.FLOAT, last_dim=4):
    """x[N,8] -> Gemm(W[4,8], b) -> [op] -> y; optional Q/DQ on x; optional rank-3 output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    nodes, x = [], "x"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
    nodes.append(helper.make_node("Gemm", [x, "W", "b"], ["h"], transB=1, name="fc"))
    last = "h"
    if op:
        nodes.append(helper.make_node(op, ["h"], ["h2"], name="nograd"))
        last = "h2"
    if out_rank == 3:
        inits.append(numpy_helper.from_array(np.array([0, 1, 4], np.int64), "shape3"))
        nodes.append(helper.make_node("Reshape", [last, "shape3"], ["h3"]))
        last = "h3"
    if out_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [last], ["hc"], to=out_type))
        last = "hc"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    dims = ["N", 4] if out_rank == 2 else ["N", 1, 4]
    if last_dim is None:
        dims = dims[:-1] + ["C"]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", out_type, dims)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture
def context(make_context):
    """Factory ``context(model, rows=64, labels=True, eval_labels=True, train=True)``: a pass
    context with ``rows`` rows of train and eval data for ``mlp`` models."""
    def build(model, rows=64, labels=True, eval_labels=True, train=True):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((rows, 8)).astype(np.float32)
        y = rng.integers(0, 4, rows)
        train_data = Dataset({"x": x}, y if labels else None, "train.npz") if train else None
        eval_data = Dataset({"x": x}, y if eval_labels else None, "eval.npz")
        return make_context(model, train_data=train_data, eval_data=eval_data, metric=None)

    return build


@pytest.fixture
def check(context):
    """Factory ``check(model, ctx=None, **options)``: ``DistillPass.check`` on ``context(model)``."""
    def run(model, ctx=None, **options):
        DistillPass(DistillOptions(**options)).check(ctx or context(model))

    return run


def test_a_trainable_model_passes_every_check(fake_env, check):
    check(mlp())
    check(mlp(opset=13))
    check(mlp(opset=20), alpha=0.5)


def test_missing_training_environment_says_what_to_run(tmp_path, monkeypatch, check):
    monkeypatch.setenv("GRAPHC_HOME", str(tmp_path / "empty"))
    with pytest.raises(GraphcError, match=r"training environment .* create it with: graphc setup training$"):
        check(mlp())


def test_outdated_training_environment_is_missing_too(fake_env, check):
    marker = fake_env / training_env.MARKER
    marker.write_text(json.dumps({"pins": ["onnxruntime-training-cpu==1.18.0"]}))
    with pytest.raises(GraphcError, match="missing or outdated .* graphc setup training"):
        check(mlp())


def test_missing_train_data(fake_env, check, context):
    with pytest.raises(GraphcError, match=r"^distill needs --train-data \(inputs of the model"):
        check(mlp(), context(mlp(), train=False))


def test_hard_labels_need_labels(fake_env, check, context):
    with pytest.raises(GraphcError, match=r"alpha=0.5 weighs cross-entropy on labels by 0.5; --train-data train.npz "
                                          r"has no integer 'labels'"):
        check(mlp(), context(mlp(), labels=False), alpha=0.5)
    with pytest.raises(GraphcError, match="--eval-data eval.npz has no integer 'labels'"):
        check(mlp(), context(mlp(), eval_labels=False), alpha=0.5)
    check(mlp(), context(mlp(), labels=False, eval_labels=False), alpha=1.0)  # unlabelled is fine with alpha=1


def test_quantized_graph_is_refused_with_the_order_advice(fake_env, check):
    with pytest.raises(GraphcError, match=r"is quantized \(DequantizeLinear, QuantizeLinear have no gradient\); "
                                          r"put int8 after distill"):
        check(mlp(qdq=True))


def test_int8_before_distill_is_refused_before_anything_runs(fake_env, check):
    from graphc.pass_api import check_order
    from graphc.passes import build_passes
    from graphc.spec import parse_spec

    with pytest.raises(GraphcError, match=r"cannot train through the Q/DQ nodes int8 inserts .* "
                                          r"put int8 after distill, e.g. --passes prune,distill,int8"):
        check_order(build_passes(parse_spec("prune,int8,distill")))
    check_order(build_passes(parse_spec("prune,distill,int8")))
    check(mlp())


@pytest.mark.parametrize("opset", [12, 21, 22])
def test_opset_outside_13_to_20(fake_env, opset, check):
    with pytest.raises(GraphcError, match=rf"has opset {opset}; onnxruntime-training 1.19.2 trains opsets 13-20"):
        check(mlp(opset=opset))


@pytest.mark.parametrize("op", ["HardSigmoid", "HardSwish", "Floor", "CumSum"])
def test_ops_without_gradient_between_weights_and_output(fake_env, op, check):
    model = mlp(op=op)
    if op == "CumSum":  # CumSum takes an axis input
        model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "axis"))
        model.graph.node[1].input.append("axis")
    with pytest.raises(GraphcError, match=rf"ops without a gradient .* between its weights and its output: {op} "
                                          r"\(nograd\)"):
        check(model)


def test_op_without_gradient_off_the_weight_path_is_accepted(fake_env, check):
    model = mlp()
    model.graph.node.insert(0, helper.make_node("Floor", ["x"], ["x_floor"]))  # reads only the input
    model.graph.node.insert(1, helper.make_node("Identity", ["x_floor"], ["unused"]))
    check(model)


def test_first_output_must_be_float_with_a_class_axis(fake_env, check):
    with pytest.raises(GraphcError, match=r"^distill: the first output 'y' of the input model must be float32; the "
                                          r"loss compares it with the teacher's$"):
        check(mlp(out_type=TensorProto.INT64))
    with pytest.raises(GraphcError, match=r"must be float32 with a fixed last \(class\) axis for loss=kl \(for "
                                          r"embeddings or features use loss=cosine or loss=mse\)$"):
        check(mlp(last_dim=None))
    check(mlp(last_dim=None), loss="cosine")  # feature losses need no class axis
    check(mlp(last_dim=None), loss="mse")


def test_feature_losses_refuse_labels_and_unknown_names():
    from graphc.passes import build_passes
    from graphc.spec import parse_spec

    with pytest.raises(GraphcError, match=r"^distill:loss: 'cos' is not one of kl, cosine, mse$"):
        build_passes(parse_spec("distill:loss=cos"))
    with pytest.raises(GraphcError, match=r"^pass 'distill': loss=cosine has no cross-entropy term; alpha=0.5 < 1 "
                                          r"\(labels\) needs loss=kl$"):
        build_passes(parse_spec("distill:loss=cosine:alpha=0.5"))
    with pytest.raises(GraphcError, match=r"loss=mse has no cross-entropy term; alpha=0 < 1"):
        build_passes(parse_spec("distill:loss=mse:alpha=0"))
    assert build_passes(parse_spec("distill:loss=cosine"))[0].options.loss == "cosine"
    assert build_passes(parse_spec("distill"))[0].options.loss == "kl"


def test_freeze_globs_must_match_and_leave_something_to_train(fake_env, context):
    from graphc.graph import to_graph
    from graphc.passes import build_passes
    from graphc.spec import parse_spec

    with pytest.raises(GraphcError, match=r"^pass 'distill': freeze='W\+' has an empty pattern \(join patterns "
                                          r"with '\+'\)$"):
        build_passes(parse_spec("distill:freeze=W+"))
    model = mlp()
    ctx = context(model)
    with pytest.raises(GraphcError, match=r"^distill:freeze: 'emb\*' matches no trainable initializer of the graph "
                                          r"distill receives \(e.g. W, b\)$"):
        DistillPass(DistillOptions(freeze="W+emb*")).run(to_graph(model), ctx)
    with pytest.raises(GraphcError, match=r"^distill:freeze=W\+b leaves nothing to train$"):
        DistillPass(DistillOptions(freeze="W+b")).run(to_graph(model), ctx)


def test_cosine_loss_needs_a_batch_axis(fake_env, check):
    model = mlp()
    model.graph.output[0].type.tensor_type.shape.dim.pop(0)  # declared [4]: no batch axis
    with pytest.raises(GraphcError, match=r"^distill:loss=cosine compares samples along the batch axis; the first "
                                          r"output 'y' of the input model has rank 1$"):
        check(model, loss="cosine")


def test_cross_entropy_needs_a_rank_2_output(fake_env, check):
    with pytest.raises(GraphcError, match=r"alpha < 1 adds cross-entropy .* 'y' has rank 3 \(use alpha=1\)"):
        check(mlp(out_rank=3), alpha=0.9)
    check(mlp(out_rank=3), alpha=1.0)


def test_layer_globs_must_match_a_tensor_of_both_graphs(fake_env, check):
    check(mlp(), layers="h")
    check(mlp(op="Relu"), layers="h+h?")
    with pytest.raises(GraphcError, match=r"distill:layers: 'hidden\*' matches no tensor that both the student "
                                          r"and the teacher compute \(e\.g\. h, y\)$"):
        check(mlp(), layers="h+hidden*")
    with pytest.raises(ValueError, match=r"layers='h\+\+y' has an empty pattern"):
        DistillOptions(layers="h++y")


def test_layers_of_pruned_channels_are_refused_with_both_shapes(fake_env, make_context):
    """A pruned CNN's conv outputs are narrower than the teacher's: no projection, a clear refusal."""
    from graphc.graph import to_graph
    from graphc.passes.prune import PruneOptions, PrunePass

    teacher = onnx.load(str(CNN))
    pruned = PrunePass(PruneOptions(ratio=0.5)).run(to_graph(teacher), make_context(teacher)).graph
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    ctx = make_context(teacher, metric=None, train_data=Dataset({"image": images}, None, "train.npz"),
                       eval_data=None)
    conv = next(n.output[0] for n in teacher.graph.node if n.op_type == "Conv")
    with pytest.raises(GraphcError, match=rf"distill:layers: '{conv}' has shape \[2, \d+, .*\] in the student and "
                                          rf"\[2, \d+, .*\] in the teacher \(pruned channels\); .* not supported"):
        DistillPass(DistillOptions(layers=conv)).run(pruned, ctx)


def test_batch_larger_than_the_data(fake_env, check):
    with pytest.raises(GraphcError, match=r"distill:batch=128: --train-data has only 64 rows"):
        check(mlp(), batch=128)


def test_teacher_with_other_inputs(fake_env, tmp_path, check):
    teacher = mlp()
    teacher.graph.input[0].name = "other"
    teacher.graph.node[0].input[0] = "other"
    path = tmp_path / "teacher.onnx"
    onnx.save(teacher, path)
    with pytest.raises(GraphcError, match=r"distill:teacher=.*teacher.onnx: its inputs \['other'\] differ from the "
                                          r"model's \['x'\]"):
        check(mlp(), teacher=str(path))
    with pytest.raises(GraphcError, match=r"missing.onnx: no such file"):
        check(mlp(), teacher=str(tmp_path / "missing.onnx"))


def test_options_out_of_range_are_one_line_errors():
    from graphc.passes import build_passes
    from graphc.spec import parse_spec

    with pytest.raises(GraphcError, match=r"distill:alpha: 1.5 is out of range \[0.0, 1.0\]"):
        build_passes(parse_spec("distill:alpha=1.5"))
    with pytest.raises(GraphcError, match=r"distill:epochs: 0 is out of range"):
        build_passes(parse_spec("distill:0"))


def test_cli_without_training_environment_is_one_line_exit_2(tmp_path):
    env = {"GRAPHC_HOME": str(tmp_path / "none"), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    data = ROOT / "models" / "fashion_mnist_test.npz"
    run = subprocess.run([sys.executable, "-m", "graphc", "optimize", str(CNN), "--passes", "distill",
                          "--train-data", str(data), "-o", str(tmp_path / "out.onnx")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"graphc optimize: error: distill needs graphc's training environment (onnxruntime-training-cpu 1.19.2), "
        f"which is missing or outdated at {tmp_path / 'none' / 'training-venv'}; create it with: graphc setup training"]
    assert not (tmp_path / "out.onnx").exists()


def test_setup_refuses_a_python_without_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_HOME", str(tmp_path / "home"))
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3 12\n")
    fake.chmod(0o755)
    with pytest.raises(GraphcError, match=r"is Python 3.12; onnxruntime-training-cpu 1.19.2 has wheels for Python "
                                          r"3.8-3.11 only: run graphc setup training --python"):
        training_env.setup(python=str(fake), say=lambda line: None)
    with pytest.raises(GraphcError, match=r"--python /nonexistent/python: cannot run it"):
        training_env.setup(python="/nonexistent/python", say=lambda line: None)
    assert not training_env.env_dir().exists()


def test_mask_must_be_an_input_holding_zeros_and_ones(fake_env, check, context):
    with pytest.raises(GraphcError, match=r"distill:mask=attention_mask: the model has no input 'attention_mask' "
                                          r"\(inputs: x\)"):
        check(mlp(), mask="attention_mask")
    with pytest.raises(GraphcError, match=r"distill:mask=x: --train-data train.npz holds values other than 0 and 1"):
        check(mlp(), mask="x")
    ctx = context(mlp())
    ctx.train_data.inputs["x"] = (ctx.train_data.inputs["x"] > 0).astype(np.float32)
    ctx.eval_data.inputs["x"] = ctx.train_data.inputs["x"].reshape(64, 2, 4)
    with pytest.raises(GraphcError, match=r"distill:mask=x: --eval-data eval.npz holds it with shape \[64, 2, 4\]; "
                                          r"a mask is \[batch, sequence\]"):
        check(mlp(), ctx, mask="x")
    ctx.eval_data.inputs["x"] = ctx.train_data.inputs["x"]
    check(mlp(), ctx, mask="x")  # 0/1 [batch, sequence]: accepted
