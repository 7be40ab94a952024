"""Rules 3, 4, 6 and 7 in the real training environment: frozen initializers, AdamW against
numpy, same seed same weights, resume, crash restarts, write-back by name.

The training environment is created by the session fixture ``training_python``
(``tests/distill/conftest.py``) when missing (about 30 s, idempotent); these tests are
skipped only when it cannot be installed (no package index, no Python 3.11).
"""

import json
import signal
import subprocess

import numpy as np
import pytest
from onnx import numpy_helper

from graphc import training_env
from graphc.data import Dataset
from graphc.graph import to_graph, to_model
from graphc.passes.distill import DistillOptions, DistillPass
from graphc.passes.distill import run as distill_run
from tests.distill.helpers import (adamw_step, embedding_models, feature_models, outputs, position_models, run_in,
                                  trained, worker_batches)


def test_frozen_initializers_keep_their_values(tmp_path, training_python, make_context):
    teacher, student, train, evaluation = feature_models()
    ctx = make_context(teacher, train_data=train, eval_data=evaluation, metric="cosine", threads=1)
    graph = to_graph(student)
    result = DistillPass(DistillOptions(epochs=2, batch=32, lr=0.02, loss="cosine", freeze="b")).run(graph, ctx)
    after = {t.name: numpy_helper.to_array(t) for t in to_model(graph, student).graph.initializer}
    before = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    assert result.details["trainable"] == ["W"] and result.stats["frozen_by_glob"] == 1
    assert np.array_equal(after["b"], before["b"]) and not np.array_equal(after["W"], before["W"])


@pytest.mark.slow
def test_same_seed_same_weights_and_resume_equals_uninterrupted(tmp_path, fashion, training_python):
    options = {"epochs": 2, "batch": 64, "patience": 0}
    run_in(tmp_path / "a", fashion, training_python, **options)
    run_in(tmp_path / "b", fashion, training_python, **options)
    a, b = trained(tmp_path / "a"), trained(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    run_in(tmp_path / "seed1", fashion, training_python, seed=1, **options)
    assert not all(np.array_equal(a[k], v) for k, v in trained(tmp_path / "seed1").items())

    # interrupted right after epoch 1's checkpoint, then the same directory run again
    directory = tmp_path / "c"
    distill_run.prepare(directory, fashion["student"], fashion["teacher"], fashion["train"], fashion["eval"],
                        {"inputs": ["image"], "threads": 2, **options}, threads=2)
    process = subprocess.Popen([str(training_python), str(training_env.WORKER), str(directory)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "epoch" and event["epoch"] == 1:  # its checkpoint is written before this line
            process.kill()
            break
    process.wait()
    assert not (directory / "trained.npz").exists()
    result = distill_run.run_worker(directory, training_python, None, say=lambda line: None, progress=False)
    assert result["resumed_from"] == 1
    c = trained(directory)
    assert all(np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_write_back_changes_only_trained_initializers(fashion, training_python, make_context):
    student = fashion["student"]
    ctx = make_context(fashion["teacher"], train_data=fashion["train"], eval_data=fashion["eval"], metric="top1",
                       threads=2)
    distill = DistillPass(DistillOptions(epochs=1, batch=64))
    distill.check(ctx)
    graph = to_graph(student)
    result = distill.run(graph, ctx)
    after = to_model(result.graph if result.graph is not None else graph, student)
    before = to_model(to_graph(student), student)
    assert [n.SerializeToString() for n in after.graph.node] == [n.SerializeToString() for n in before.graph.node]
    assert [n.SerializeToString() for n in after.graph.node] == [n.SerializeToString() for n in student.graph.node]
    for field in ("input", "output"):
        assert [v.SerializeToString() for v in getattr(after.graph, field)] == \
               [v.SerializeToString() for v in getattr(student.graph, field)]
    old = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    assert list(old) == list(new) and all(old[k].shape == new[k].shape and old[k].dtype == new[k].dtype for k in old)
    changed = {k for k in old if not np.array_equal(old[k], new[k])}
    assert changed == set(result.details["trainable"]) and len(changed) == 23
    assert not any("running" in name for name in changed)
    assert result.changed and result.stats["tensors_trained"] == 23
    # the trained student runs in the normal onnxruntime, and better than before on held-out data
    feeds = {"image": fashion["eval"].inputs["image"]}
    labels = fashion["eval"].labels
    assert (outputs(after, feeds).argmax(1) == labels).mean() > (outputs(student, feeds).argmax(1) == labels).mean()
    key = distill_run.run_key(student, fashion["teacher"], [fashion["train"], fashion["eval"]],
                              distill._config(ctx, ["image"], []))
    assert not distill_run.run_dir(key).exists()  # removed after a successful write-back


def test_a_crashed_worker_is_restarted_and_other_failures_are_not(tmp_path, training_python):
    """SIGSEGV (onnxruntime-training 1.19.2's intermittent fault) restarts the worker on its
    directory (it resumes from its checkpoint, which gives the same weights: see the resume test);
    a plain failure is reported at once."""
    teacher, student, train, evaluation = feature_models()
    config = {"inputs": ["x"], "threads": 1, "epochs": 1, "batch": 32, "lr": 0.02, "loss": "cosine",
              "metric": "cosine", "patience": 0}
    runs = {}
    for name in ("steady", "flaky"):
        runs[name] = tmp_path / name
        distill_run.prepare(runs[name], student, teacher, train, evaluation, config, threads=1)
    flaky = tmp_path / "flaky-python"
    flaky.write_text(f"#!/bin/sh\necho started >> {tmp_path}/starts\n"
                     f"if [ ! -e {tmp_path}/crashed ]; then touch {tmp_path}/crashed; kill -SEGV $$; fi\n"
                     f"exec {training_python} \"$@\"\n")
    flaky.chmod(0o755)
    lines = []
    result = distill_run.run_worker(runs["flaky"], flaky, "cosine", say=lines.append, progress=False)
    assert (tmp_path / "starts").read_text().count("started") == 2
    assert any(f"crashed (exit {-signal.SIGSEGV}" in line and "(1 of 4)" in line for line in lines)
    distill_run.run_worker(runs["steady"], training_python, "cosine", say=lambda line: None, progress=False)
    for key, value in trained(runs["steady"]).items():
        np.testing.assert_array_equal(trained(runs["flaky"])[key], value)
    assert result["best"]["epoch"] == 1
    failing = tmp_path / "failing-python"
    failing.write_text(f"#!/bin/sh\necho started >> {tmp_path}/fails\necho 'ValueError: broken' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"the distillation worker failed \(exit 1\): ValueError: broken"):
        distill_run.run_worker(runs["flaky"], failing, "cosine", say=lines.append, progress=False)
    assert (tmp_path / "fails").read_text().count("started") == 1


def train_on_cut_batches(tmp_path, student, teacher, inputs, python):
    """One epoch of two batches of 32 (ids, mask), cut to their longest row; MSE, lr 0.01, no
    warm-up. Returns the run directory."""
    config = {"inputs": ["ids", "mask"], "threads": 1, "epochs": 1, "batch": 32, "loss": "mse", "lr": 0.01,
              "warmup": 0.0, "patience": 0, "mask": "mask"}
    directory = tmp_path / "run"
    distill_run.prepare(directory, student, teacher, Dataset(inputs, None, "train"), None, config, threads=1)
    distill_run.run_worker(directory, python, None, say=lambda line: None, progress=False)
    return directory


def test_embedding_table_trained_on_cut_batches_follows_numpy_adamw(tmp_path, training_python):
    """Two AdamW steps on batches cut to their longest row: the trained embedding table and
    projection equal numpy's (gradients through Gather written out by hand)."""
    from graphc.passes.distill.worker.batches import valid_lengths
    from graphc.passes.distill.worker.loop import lr_at

    student, teacher, inputs = embedding_models()
    lr, directory = 0.01, train_on_cut_batches(tmp_path, student, teacher, inputs, training_python)

    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in student.graph.initializer}
    target = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in teacher.graph.initializer}
    table, weight = weights["E"], weights["W"]
    moments = {}
    lengths = valid_lengths(inputs["mask"])
    batches = worker_batches(64, 32, lengths)
    assert len(batches) == 2 and min(int(lengths[b].max()) for b in batches) < 8  # a batch is cut
    for step, rows in enumerate(batches):
        ids, mask = inputs["ids"][rows], inputs["mask"][rows].astype(np.float64)
        pooled = (table[ids] * mask[..., None]).sum(1)
        teacher_y = (target["E"][ids] * mask[..., None]).sum(1) @ target["W"]
        dy = 2 * (pooled @ weight - teacher_y) / (len(rows) * 3)  # MSE: mean over batch and outputs
        grads = {"W": pooled.T @ dy, "E": np.zeros_like(table)}
        np.add.at(grads["E"], ids, (dy @ weight.T)[:, None, :] * mask[..., None])
        adamw_step({"E": table, "W": weight}, moments, grads, lr_at(step, 2, lr, 0.0), step)
    got = trained(directory)
    start = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    for name, want in (("E", table), ("W", weight)):
        moved = np.abs(want - start[name]).max()
        assert moved > 0.5 * lr  # the step is visible
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-3 * lr)


def test_position_embeddings_broadcast_over_the_batch_follow_numpy_adamw(tmp_path, training_python):
    """Position embeddings [1, L, 4] (a buffer sliced to the computed length) added to token
    embeddings [N, L, 4]: two AdamW steps of the worker give numpy's position table, whose
    gradient sums over the batch. Without the measured unit axis (worker/unit_dims.py) the
    gradient builder skipped that sum, and GatherGrad read a [N, L, 4] gradient for [1, L]
    indices: a wrong table, and on MiniLM a corrupted heap (SIGSEGV)."""
    from graphc.passes.distill.worker.batches import valid_lengths

    student, teacher, inputs = position_models()
    lr, directory = 0.01, train_on_cut_batches(tmp_path, student, teacher, inputs, training_python)
    info = json.loads((directory / "artifacts" / "info.json").read_text())
    assert info["unit_dims_pinned"] >= 2  # the sliced positions and their embeddings

    start = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in student.graph.initializer}
    target = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in teacher.graph.initializer}
    values, moments = {name: start[name].copy() for name in ("E", "P", "W")}, {}
    lengths = valid_lengths(inputs["mask"])
    batches = worker_batches(64, 32, lengths)
    for step, rows in enumerate(batches):
        width = int(lengths[rows].max())  # the worker cuts each batch to its longest row
        ids, mask = inputs["ids"][rows, :width], inputs["mask"][rows, :width].astype(np.float64)

        def pooled(w):
            return ((w["E"][ids] + w["P"][None, :width]) * mask[..., None]).sum(1)

        dy = 2 * (pooled(values) @ values["W"] - pooled(target) @ target["W"]) / (len(rows) * 3)
        dh = (dy @ values["W"].T)[:, None, :] * mask[..., None]
        grads = {"W": pooled(values).T @ dy, "E": np.zeros_like(values["E"]), "P": np.zeros_like(values["P"])}
        np.add.at(grads["E"], ids, dh)
        grads["P"][:width] = dh.sum(0)  # the broadcast over the batch, summed back
        adamw_step(values, moments, grads, lr_at_step(step, lr), step)
    got = trained(directory)
    for name, want in values.items():
        assert np.abs(want - start[name]).max() > 0.5 * lr  # the steps are visible
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-3 * lr, err_msg=name)


def test_state_rows_on_axis_1_and_a_scalar_input_train_like_numpy_adamw(tmp_path, training_python):
    """Inputs x [N, 4], s [2, N, 4] (batch on axis 1) and k (0-d), y = (x * (s[0] + s[1]) * k) @ W,
    a second output (the next state): two AdamW steps of the worker equal numpy's on the same
    rows. Rows of s taken on axis 0, or k cut into rows, give other gradients or no run."""
    from onnx import TensorProto, helper

    from graphc.data import model_signature, validate

    rng = np.random.default_rng(7)

    def model(weight):
        nodes = [helper.make_node("ReduceSum", ["s", "axis0"], ["total"], keepdims=0),
                 helper.make_node("Mul", ["x", "total"], ["h"]), helper.make_node("Mul", ["h", "k"], ["hk"]),
                 helper.make_node("MatMul", ["hk", "W"], ["y"]), helper.make_node("Neg", ["s"], ["sN"])]
        graph = helper.make_graph(
            nodes, "state", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                             helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "batch", 4]),
                             helper.make_tensor_value_info("k", TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
             helper.make_tensor_value_info("sN", TensorProto.FLOAT, [2, "batch", 4])],
            [numpy_helper.from_array(np.array([0], np.int64), "axis0"), numpy_helper.from_array(weight, "W")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    teacher_w = rng.standard_normal((4, 3)).astype(np.float32)
    student_w = (teacher_w + 0.5 * rng.standard_normal((4, 3))).astype(np.float32)
    student, teacher = model(student_w), model(teacher_w)
    x, s = rng.standard_normal((64, 4)).astype(np.float32), rng.standard_normal((2, 64, 4)).astype(np.float32)
    data = validate({"x": x, "s": s, "k": np.float32(0.5)}, model_signature(student), "train")
    assert data.axes == {"x": 0, "s": 1, "k": None}
    lr, config = 0.01, {"inputs": ["x", "s", "k"], "threads": 1, "epochs": 1, "batch": 32, "loss": "mse",
                        "lr": 0.01, "warmup": 0.0, "patience": 0}
    directory = tmp_path / "run"
    distill_run.prepare(directory, student, teacher, data, None, config, threads=1)
    distill_run.run_worker(directory, training_python, None, say=lambda line: None, progress=False)

    features = (x * (s[0] + s[1]) * 0.5).astype(np.float64)
    weight = student_w.astype(np.float64)
    moments = {}
    for step, rows in enumerate(worker_batches(64, 32)):
        hk = features[rows]
        grad = hk.T @ (2 * (hk @ weight - hk @ teacher_w) / (len(rows) * 3))
        adamw_step({"W": weight}, moments, {"W": grad}, lr_at_step(step, lr), step)
    got = trained(directory)["W"]
    assert np.abs(weight - student_w).max() > 0.5 * lr  # the steps are visible
    np.testing.assert_allclose(got, weight, rtol=0, atol=1e-3 * lr)


def lr_at_step(step: int, lr: float) -> float:
    from graphc.passes.distill.worker.loop import lr_at

    return lr_at(step, 2, lr, 0.0)
