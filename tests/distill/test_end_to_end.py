"""distill end to end, through ``graphc.pipeline.optimize`` and the CLI, in the real training
environment.

The training environment is created by the session fixture ``training_python``
(``tests/distill/conftest.py``) when missing (about 30 s, idempotent); these tests are
skipped only when it cannot be installed (no package index, no Python 3.11).
"""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphc import training_env
from graphc.errors import GraphcError
from graphc.pipeline import OptimizeRequest, optimize


@pytest.mark.slow
@pytest.mark.parametrize("name,loss,lr,layers", [("resnet", "kl", 0.002, ""), ("bert", "cosine", 0.0005, ""),
                                                ("bert", "cosine", 0.0005, "*LayerNorm*")])
def test_short_distill_lowers_held_out_kd_loss(tmp_path, name, loss, lr, layers, onnx_model, sample_inputs,
                                               training_python):
    path = onnx_model(name)
    train, evaluation = tmp_path / "train.npz", tmp_path / "eval.npz"
    np.savez(train, **sample_inputs(name, batch=256, seed=1))
    np.savez(evaluation, **sample_inputs(name, batch=64, seed=2))
    out = tmp_path / "student.onnx"
    passes = f"fold,prune:0.4,distill:epochs=2:batch=32:lr={lr}:clip=1:loss={loss}" + (f":layers={layers}" if layers
                                                                                     else "")
    report = optimize(OptimizeRequest(model=path, passes=passes, output=out, train_data=train, eval_data=evaluation,
                                      metric="cosine", progress=False, threads=2))
    history = report.passes[-1].details["history"]
    assert history[-1]["eval_loss"] < 0.8 * history[0]["eval_loss"]
    assert report.passes[-1].stats["best_epoch"] >= 1 and report.passes[-1].changed
    assert report.metrics["cosine"]["after"] > history[0]["metric"]
    if layers:  # every LayerNorm output of the residual stream keeps its width after prune
        norms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LayerNormalization"]
        assert report.passes[-1].stats["layers_matched"] == len(norms) > 0
    if name == "bert":  # LayerNormalization needed its optional outputs in the training copy
        assert any(n.op_type == "LayerNormalization" for n in onnx.load(str(out)).graph.node)
    feeds = dict(np.load(evaluation))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, feeds)[0]).all()


def test_worker_refusal_is_a_one_line_graphc_error(tmp_path, training_python):
    """Weights held in Constant nodes (not initializers) leave nothing to train: exit 3, one line."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Constant", [], ["W"], value=weight),
                               helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "constant_weights.onnx"
    onnx.save(model, path)
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.standard_normal((64, 8)).astype(np.float32))
    runs = training_env.graphc_home() / "distill-runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    with pytest.raises(GraphcError, match=r"^the student has no trainable float initializers \(weights in Constant "
                                          r"nodes\? run fold first\)$"):
        optimize(OptimizeRequest(model=path, passes="distill:batch=16", output=tmp_path / "o.onnx",
                                 train_data=data, progress=False))
    assert not (tmp_path / "o.onnx").exists()
    assert set(runs.iterdir()) <= before  # no run directory left: nothing to resume


@pytest.mark.slow
def test_cli_prune_distill_and_setup_is_idempotent(tmp_path, fashion, training_python):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    setup = subprocess.run([sys.executable, "-m", "graphc", "setup", "training"], capture_output=True, text=True,
                           env=env)
    assert setup.returncode == 0 and setup.stdout.strip().endswith("nothing to do")
    root, out = fashion["root"], tmp_path / "distilled.onnx"
    run = subprocess.run([sys.executable, "-m", "graphc", "optimize", str(root / "pruned.onnx"), "--passes",
                          "distill:epochs=2:alpha=0.5", "--train-data", str(root / "train.npz"), "--eval-data",
                          str(root / "eval.npz"), "--metric", "top1", "-o", str(out), "--threads", "2"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    epochs = [line for line in run.stderr.splitlines() if line.startswith("distill epoch")]
    assert len(epochs) == 3 and epochs[0].startswith("distill epoch 0/2: eval loss") and "top1" in epochs[-1]
    assert "| distill:epochs=2:alpha=0.5" in run.stdout and "top1=" in run.stdout
