"""int8 accuracy budget (``budget=<max drop>``, graphc.passes.int8.budget) on the bundled CNN.

The budget is checked independently: the output model is scored with onnxruntime in the
test, on the same evaluation rows, against the original model. The failing path is real:
``budget=0`` on ``cosine`` cannot be met while any node is INT8 (quantization noise always
moves the cosine below the FP32 model's own).
"""

import pathlib

import numpy as np
import onnx
import pytest

from graphc.errors import GraphcError
from graphc.metrics import cosine_per_sample
from graphc.passes.int8 import quantization_summary
from graphc.pipeline import OptimizeRequest, optimize
from graphc.runtime import open_session
from graphc.passes.int8.budget import group_key, make_groups

MODELS = pathlib.Path(__file__).resolve().parents[2] / "models"
CNN = MODELS / "fashion_cnn.onnx"
ROWS = 128


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """(calibration .npz, evaluation .npz, evaluation images) from the bundled test split."""
    root = tmp_path_factory.mktemp("fashion")
    data = np.load(MODELS / "fashion_mnist_test.npz")
    np.savez(root / "calib.npz", image=data["image"][:256])
    images = data["image"][5000:5000 + ROWS]
    np.savez(root / "eval.npz", image=images, labels=data["labels"][5000:5000 + ROWS])
    return root / "calib.npz", root / "eval.npz", images


def _run(tmp_path, fashion, spec, metric="cosine", out="q.onnx"):
    calib, evaluation, _ = fashion
    report = optimize(OptimizeRequest(model=CNN, passes=spec, output=tmp_path / out, data=calib,
                                      eval_data=evaluation, metric=metric, progress=False))
    return tmp_path / out, report


def _cosine_drop(path, images):
    """FP32 metric minus the model's, both against the original (as the pass defines it)."""
    feeds = {"image": images}
    ref = open_session(CNN).run(None, feeds)[0]
    got = open_session(path).run(None, feeds)[0]
    return cosine_per_sample(ref, ref).mean() - cosine_per_sample(got, ref).mean()


def test_tight_budget_keeps_the_most_sensitive_nodes_fp32_and_holds(tmp_path, fashion):
    _, report = _run(tmp_path, fashion, "fold,int8:budget=1:budget_group=node", out="all.onnx")
    full = report.passes[-1].stats
    assert full["budget_fp32_nodes"] == 0 and full["budget_evaluations"] == 2  # met by all INT8
    all_drop = full["metric_fp32"] - full["metric_int8_all"]
    assert all_drop > 0
    budget = all_drop / 2
    out, report = _run(tmp_path, fashion, f"fold,int8:budget={budget}:budget_group=node")
    step = report.passes[-1]
    stats, kept = step.stats, step.details["budget"]["kept_fp32"]
    assert 1 <= stats["budget_fp32_nodes"] < 8 and len(kept) == stats["budget_fp32_groups"]
    # the budget holds, measured here with onnxruntime on the same rows
    measured = _cosine_drop(out, fashion[2])
    assert measured <= budget + 1e-9
    assert measured == pytest.approx(stats["metric_fp32"] - stats["metric_int8"], abs=1e-6)
    # most sensitive first, each with its figure; the rest of the groups measured too
    gains = [k["gain"] for k in kept]
    assert gains == sorted(gains, reverse=True) and len(step.details["budget"]["sensitivity"]) == 8
    assert all(k["gain"] == step.details["budget"]["sensitivity"][k["group"]] for k in kept)
    # those nodes really are FP32 in the output, every other compute node quantized
    states = {row["node"]: row["state"] for row in quantization_summary(onnx.load(out))}
    fp32 = {node for k in kept for node in k["nodes"]}
    assert {n for n, s in states.items() if s == "fp32"} == fp32
    assert stats["fp32_reasons"] == {n: "kept FP32 by budget" for n in sorted(fp32)}
    note = report.notes[-1]
    assert note.startswith(f"int8 budget {budget:g} on cosine ({ROWS} rows)")
    assert all(k["group"] in note for k in kept)


def test_impossible_budget_fails_with_one_line_and_writes_nothing(tmp_path, fashion):
    with pytest.raises(GraphcError) as info:
        _run(tmp_path, fashion, "fold,int8:budget=0:budget_group=node")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"int8:budget=0 (cosine on {ROWS} rows of --eval-data): no INT8 mix meets it")
    assert "7 of 8 groups FP32" in message
    assert not (tmp_path / "q.onnx").exists()


def test_layer_groups_on_the_cnn(tmp_path, fashion):
    """Residual blocks (features.6 / features.10: two Convs each) are kept or quantized together."""
    out, report = _run(tmp_path, fashion, "fold,int8:budget=0.0001", out="layers.onnx")
    step = report.passes[-1]
    sensitivity = step.details["budget"]["sensitivity"]
    assert "/features/features.6" in sensitivity and len(sensitivity) == 6
    assert step.stats["budget_fp32_groups"] >= 1
    for kept in step.details["budget"]["kept_fp32"]:
        if kept["group"] in ("/features/features.6", "/features/features.10"):
            assert len(kept["nodes"]) == 2
    assert _cosine_drop(out, fashion[2]) <= 0.0001 + 1e-9


def test_budget_needs_eval_data_and_metric(tmp_path, fashion):
    with pytest.raises(GraphcError, match=r"int8:budget=0.01 needs --eval-data and --metric"):
        optimize(OptimizeRequest(model=CNN, passes="fold,int8:budget=0.01", output=tmp_path / "o.onnx",
                                 data=fashion[0], progress=False))
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(GraphcError, match="int8:budget"):
        optimize(OptimizeRequest(model=CNN, passes="int8:budget=-0.1", output=tmp_path / "o.onnx", progress=False))


def test_group_keys():
    assert group_key("/hf/bert/encoder/layer.3/attention/self/query/MatMul", "layer") == "/hf/bert/encoder/layer.3"
    assert group_key("/hf/bert/encoder/layer.3/attention/self/query/MatMul", "node").endswith("query/MatMul")
    assert group_key("/features/features.6/body/body.0/Conv", "layer") == "/features/features.6"
    assert group_key("/hf/classifier/Gemm_1", "layer") == "/hf/classifier/Gemm_1"  # final segment only
    assert group_key("node_MatMul_12", "layer") == "node_MatMul_12"
    assert make_groups(["/a.1/x", "/b/y", "/a.1/z"], "layer") == {"/a.1": ["/a.1/x", "/a.1/z"], "/b/y": ["/b/y"]}
