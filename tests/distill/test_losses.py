"""Rule 2: the worker's loss at the first step (and on held-out data) equals the loss written
out in numpy, for each ``loss``, with ``layers`` and on ``mask``-cut batches.

The training environment is created by the session fixture ``training_python``
(``tests/distill/conftest.py``) when missing (about 30 s, idempotent); these tests are
skipped only when it cannot be installed (no package index, no Python 3.11).
"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphc.data import Dataset, model_signature
from graphc.passes.distill import run as distill_run
from tests.distill.helpers import (feature_models, outputs, reference_feature_loss, reference_loss, run_in,
                                  worker_batches)


@pytest.mark.slow
def test_step0_kd_loss_matches_numpy(tmp_path, fashion, training_python):
    T, alpha, beta = 3.0, 0.6, 0.3
    result = run_in(tmp_path / "run", fashion, training_python, T=T, alpha=alpha, beta=beta, batch=64)
    train, evaluation = fashion["train"], fashion["eval"]
    rows = worker_batches(len(train), 64)[0]
    feeds = {"image": train.inputs["image"][rows]}
    want = reference_loss(outputs(fashion["student"], feeds), outputs(fashion["teacher"], feeds),
                          train.labels[rows], T, alpha, beta)
    assert result["first_step_loss"] == pytest.approx(want, rel=1e-5)
    feeds = {"image": evaluation.inputs["image"]}
    held_out = reference_loss(outputs(fashion["student"], feeds), outputs(fashion["teacher"], feeds),
                              evaluation.labels, T, alpha, beta)
    assert result["history"][0]["eval_loss"] == pytest.approx(held_out, rel=1e-5)
    assert result["batchnorm_frozen"] == 7 and len(result["trainable"]) == 23


@pytest.mark.parametrize("loss,beta", [("cosine", 0.0), ("cosine", 0.25), ("mse", 0.0)])
def test_step0_feature_loss_matches_numpy_and_training_lowers_it(tmp_path, loss, beta, training_python):
    teacher, student, train, evaluation = feature_models()
    directory = tmp_path / "run"
    config = {"inputs": ["x"], "threads": 1, "epochs": 3, "batch": 32, "lr": 0.02, "loss": loss, "beta": beta,
              "metric": "cosine", "patience": 0}
    distill_run.prepare(directory, student, teacher, train, evaluation, config, threads=1)
    result = distill_run.run_worker(directory, training_python, "cosine", say=lambda line: None, progress=False)
    rows = worker_batches(len(train), 32)[0]
    feeds = {"x": train.inputs["x"][rows]}
    want = reference_feature_loss(outputs(student, feeds), outputs(teacher, feeds), loss, 1.0, beta)
    assert result["first_step_loss"] == pytest.approx(want, rel=1e-5)
    feeds = {"x": evaluation.inputs["x"]}
    s, t = outputs(student, feeds), outputs(teacher, feeds)
    history = result["history"]
    assert history[0]["eval_loss"] == pytest.approx(reference_feature_loss(s, t, loss, 1.0, beta), rel=1e-5)
    cosine = (s.reshape(64, -1) * t.reshape(64, -1)).sum(1) / np.linalg.norm(s.reshape(64, -1), axis=1) \
        / np.linalg.norm(t.reshape(64, -1), axis=1)
    assert history[0]["metric"] == pytest.approx(cosine.mean(), rel=1e-6)
    assert history[-1]["eval_loss"] < 0.5 * history[0]["eval_loss"]
    assert history[-1]["metric"] > history[0]["metric"] and result["best"]["epoch"] == 3


def test_step0_layer_loss_matches_numpy_and_training_lowers_it(tmp_path, training_python):
    """layers=h: the loss adds gamma * MSE(h_s, h_t) / mean(h_t^2), h_t stored as float16."""
    teacher, student, train, evaluation = feature_models()
    directory = tmp_path / "run"
    config = {"inputs": ["x"], "threads": 1, "epochs": 3, "batch": 32, "lr": 0.02, "loss": "cosine",
              "metric": "cosine", "patience": 0, "layers": ["h"], "gamma": 0.5}
    distill_run.prepare(directory, student, teacher, train, evaluation, config, threads=1)
    result = distill_run.run_worker(directory, training_python, "cosine", say=lambda line: None, progress=False)

    def hidden(model, x):
        weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
        return x.astype(np.float64) @ weights["W"].T + weights["b"]

    teacher_h = hidden(teacher, train.inputs["x"]).astype(np.float32).astype(np.float16).astype(np.float64)
    mean_square = (teacher_h ** 2).mean()
    rows = worker_batches(len(train), 32)[0]
    feeds = {"x": train.inputs["x"][rows]}
    main = reference_feature_loss(outputs(student, feeds), outputs(teacher, feeds), "cosine", 1.0, 0.0)
    layer = ((hidden(student, feeds["x"]) - teacher_h[rows]) ** 2).mean() / mean_square
    assert result["first_step_loss"] == pytest.approx(main + 0.5 * layer, rel=1e-4)
    assert layer > 0.1 * main  # the layer term is not negligible in that sum
    layer = np.load(directory / "train_layer0.npy")
    assert layer.dtype == np.float16 and layer.shape == (256, 6)
    np.testing.assert_array_equal(layer.astype(np.float64), teacher_h)
    history = result["history"]
    assert history[-1]["eval_loss"] < 0.5 * history[0]["eval_loss"] and history[-1]["metric"] > history[0]["metric"]


@pytest.mark.slow  # a BERT training artifact build and a worker run
def test_mask_grouped_training_step0_loss_is_the_uncut_loss(tmp_path, onnx_model, sample_inputs, training_python):
    """A BERT-style encoder ignores padded positions, so cutting each batch to its longest row
    leaves the first step's loss what numpy computes from the uncut rows."""
    from graphc.passes.distill.worker.batches import valid_lengths

    teacher = onnx.load(str(onnx_model("bert")))
    student = onnx.ModelProto()
    student.CopyFrom(teacher)
    rng = np.random.default_rng(4)
    for tensor in student.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.dtype == np.float32 and value.size > 1:
            tensor.CopyFrom(numpy_helper.from_array(value + 0.05 * rng.standard_normal(value.shape)
                                                    .astype(np.float32), tensor.name))
    inputs = sample_inputs("bert", batch=64, seed=1)
    signature = model_signature(teacher)
    train = Dataset(inputs, None, "train")
    evaluation = Dataset(sample_inputs("bert", batch=16, seed=2), None, "eval")
    config = {"inputs": [s.name for s in signature], "threads": 2, "epochs": 2, "batch": 8, "lr": 0.0005,
              "loss": "cosine", "metric": "cosine", "patience": 0, "mask": "attention_mask"}
    directory = tmp_path / "run"
    distill_run.prepare(directory, student, teacher, train, evaluation, config, threads=2)
    result = distill_run.run_worker(directory, training_python, "cosine", say=lambda line: None, progress=False)
    lengths = valid_lengths(inputs["attention_mask"])
    batches = worker_batches(64, 8, lengths)
    feeds = {name: value[batches[0]] for name, value in inputs.items()}
    want = reference_feature_loss(outputs(student, feeds), outputs(teacher, feeds), "cosine", 1.0, 0.0)
    assert result["first_step_loss"] == pytest.approx(want, rel=1e-4)
    fill = sum(int(lengths[b].sum()) for b in batches) / sum(8 * int(lengths[b].max()) for b in batches)
    assert result["history"][1]["token_fill"] == pytest.approx(fill) and fill > lengths.mean() / 16 + 0.05
    history = result["history"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"] and history[-1]["metric"] > history[0]["metric"]
