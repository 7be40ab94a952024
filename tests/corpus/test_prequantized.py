"""Pre-quantized inputs (issue 13): fold is exact on them, int8 keeps their Q/DQ and QOperator
nodes and quantizes only the float compute left (saying so), prune leaves them unchanged with a
reason; every output runs. Outputs compared with onnxruntime on the original."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc.ops import QUANTIZED_OPS
from graphc.pipeline import OptimizeRequest, optimize
from tests.corpus import CORPUS

MODELS = {  # name -> (--shape overrides, an input feed)
    "small-cnn-qdq": ({}, lambda rng: {"image": rng.standard_normal((2, 3, 12, 12)).astype(np.float32)}),
    "small-cnn-qoperator": ({}, lambda rng: {"image": rng.standard_normal((2, 3, 12, 12)).astype(np.float32)}),
    "voicefilter-embedder": ({}, lambda rng: {"mel_window": rng.standard_normal((2, 80, 40)).astype(np.float32)}),
    "voicefilter-lite": ({"time": (8,)}, lambda rng: {  # stateful: h0/c0 [3, batch, 512]
        "stacked_logmel": rng.standard_normal((2, 8, 512)).astype(np.float32),
        "dvec": rng.standard_normal((2, 256)).astype(np.float32),
        "h0": rng.standard_normal((3, 2, 512)).astype(np.float32),
        "c0": rng.standard_normal((3, 2, 512)).astype(np.float32)}),
    "tashkeel-bilstm": ({"seq_len": (16,)}, lambda rng: {"input_ids": rng.integers(0, 40, (2, 16)).astype(np.int64)}),
}


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def quantized_ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node
                               if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear"))


def cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prequantized")
    return {name: CORPUS[name].build(root) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_fold_is_exact_on_a_quantized_model(name, models, tmp_path):
    shapes, feed = MODELS[name]
    out = tmp_path / "fold.onnx"
    optimize(OptimizeRequest(model=models[name], passes="fold", output=out, shapes=shapes, progress=False))
    feeds = feed(np.random.default_rng(0))
    for before, after in zip(run(models[name], feeds), run(out, feeds)):
        assert np.array_equal(before, after)
    assert quantized_ops(out) == quantized_ops(models[name])


@pytest.mark.parametrize("name", MODELS)
def test_int8_keeps_existing_quantization_and_says_so(name, models, tmp_path):
    shapes, feed = MODELS[name]
    out = tmp_path / "int8.onnx"
    # what is kept and quantized is under test, not speed: no timed speed guard
    report = optimize(OptimizeRequest(model=models[name], passes="int8:speed_guard=false", output=out, shapes=shapes,
                                      verify=True, progress=False))
    before, after = quantized_ops(models[name]), quantized_ops(out)
    assert all(after[op] >= count for op, count in before.items())  # nothing existing removed
    stats = report.passes[-1].stats
    assert stats["prequantized_nodes_kept"] == sum(before.values())
    assert any(n.startswith("int8: the model is already quantized") for n in report.notes)
    float_left = stats.get("static_nodes", 0) + stats.get("dynamic_nodes", 0)
    if name.startswith("small-cnn"):  # their float Gemm head (kept float by onnxruntime's quantizer) is quantized
        assert float_left == 1
    feeds = feed(np.random.default_rng(1))
    assert cosine(run(models[name], feeds)[0], run(out, feeds)[0]) > 0.99


@pytest.mark.parametrize("name", MODELS)
def test_prune_leaves_a_quantized_model_unchanged_with_a_reason(name, models, tmp_path):
    shapes, feed = MODELS[name]
    out = tmp_path / "prune.onnx"
    report = optimize(OptimizeRequest(model=models[name], passes="prune:0.3", output=out, shapes=shapes,
                                      progress=False))
    assert not report.passes[-1].changed
    assert report.passes[-1].stats["quantized_layers_kept"] >= 2
    assert any("quantized layers (Q/DQ or QOperator weights) left as they are" in n for n in report.notes)
    feeds = feed(np.random.default_rng(2))
    for before, after in zip(run(models[name], feeds), run(out, feeds)):
        assert np.array_equal(before, after)
