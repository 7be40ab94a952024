"""int8 on the corpus CNNs (issue 13, Build 5): activation chains (rule 10) and the speed
guard (rule 11) on real exports and on the SiLU / HardSwish / depthwise blocks of
tests/corpus/mobile_blocks.py.

- guard off: onnxruntime's optimized graph runs the SiLU / HardSwish / HardSigmoid / Sigmoid
  chains in QLinear kernels (none of their float ops left), within cosine 0.99 of the
  original model;
- guard on (the default): a valid model within cosine 0.99 whose report says how many
  layers stayed FP32 and lists each one with its measured times. Which layers that is
  depends on the machine's measurement; the tests check the bookkeeping, never a time.

Paddle exports (opset 11/12) are converted to opset 13 with onnx.version_converter first
where int8 still refuses old opsets.
"""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import pytest

from graphc import cli
from graphc.metrics import cosine_per_sample
from graphc.runtime import session_options
from tests.corpus import CORPUS

SHAPES = {"ppocr-cls": "x=1x3x48x192", "ppocr-det": "x=1x3x160x160", "open-nsfw": "input_0=1x224x224x3"}
FAST = ["silu-detector", "hardswish-mobilenet", "silu-efficientnet"]
SLOW = ["ppocr-cls", "ppocr-det", "open-nsfw"]
FLOAT_CHAIN_OPS = {"Sigmoid", "HardSwish", "HardSigmoid", "QuickGelu", "Clip", "Div"}
# float chain ops expected to remain: the classifier head's HardSwish after a Gemm (rule 3
# quantizes Conv-family outputs only; onnxruntime writes it HardSigmoid + Mul)
FLOAT_LEFT = {"hardswish-mobilenet": {"HardSigmoid": 1}}


def _source(name: str, directory: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    model = CORPUS[name]
    path = model.build(directory)
    args = list(model.cli_args) or (["--shape", SHAPES[name]] if name in SHAPES else [])
    if onnx.load(path, load_external_data=False).opset_import[0].version < 13:
        converted = directory / f"{name}-op13.onnx"
        onnx.save(onnx.version_converter.convert_version(onnx.load(path), 13), converted)
        path = converted
    return path, args


def _feeds(path, args) -> dict[str, np.ndarray]:
    model = onnx.load(path, load_external_data=False)
    given = dict(a.split("=") for a in args[1::2]) if args else {}
    feeds = {}
    for i, value in enumerate(model.graph.input):
        dims = ([int(d) for d in given[value.name].split("x")] if value.name in given
                else [d.dim_value or 1 for d in value.type.tensor_type.shape.dim])
        feeds[value.name] = np.random.default_rng(i).random([2, *dims[1:]], dtype=np.float32)
    return feeds


def _cosine(source, out, feeds) -> float:
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    rows = len(want)
    return float(cosine_per_sample(want.reshape(rows, -1).astype(np.float64),
                                   got.reshape(rows, -1).astype(np.float64)).min())


def _optimize(source, out, spec, args, report=None) -> int:
    extra = ["--report", str(report)] if report else []
    return cli.main(["optimize", str(source), "--passes", spec, *args, "-o", str(out), *extra])


def _executed_ops(path, tmp_path) -> collections.Counter:
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _chains_fused(name, tmp_path):
    source, args = _source(name, tmp_path)
    out = tmp_path / "int8.onnx"
    assert _optimize(source, out, "fold,int8:samples=16:speed_guard=false", args) == 0
    assert _cosine(source, out, _feeds(source, args)) >= 0.99
    ops = _executed_ops(out, tmp_path)
    assert {op: ops[op] for op in FLOAT_CHAIN_OPS if op in ops} == FLOAT_LEFT.get(name, {}), ops
    assert ops["QLinearConv"] > 0 and ops["QLinearMul"] > 0, ops
    return ops


def _guarded(name, tmp_path):
    source, args = _source(name, tmp_path)
    out, report_path = tmp_path / "int8.onnx", tmp_path / "report.json"
    assert _optimize(source, out, "fold,int8:samples=16", args, report_path) == 0
    assert _cosine(source, out, _feeds(source, args)) >= 0.99
    report = json.loads(report_path.read_text())
    step = report["passes"][-1]
    stats, kept = step["stats"], step["details"]["speed_guard"]["kept_fp32"]
    assert stats["speed_guard_fp32_layers"] == len(kept) <= stats["speed_guard_layers"]
    assert stats["static_nodes"] + stats["dynamic_nodes"] + len(kept) <= stats["speed_guard_layers"] + \
        stats["fp32_compute_nodes"]
    assert all(stats["fp32_reasons"].get(k["layer"], "kept FP32 by speed_guard").startswith("kept FP32 by speed_guard")
               for k in kept)
    (note,) = [n for n in report["notes"] if n.startswith("int8 speed_guard")]
    assert f"{len(kept)} of {stats['speed_guard_layers']} layers kept FP32" in note
    assert all(k["layer"] in note for k in kept[:20])


@pytest.mark.parametrize("name", FAST)
def test_chains_fused_on_mobile_blocks(name, tmp_path):
    ops = _chains_fused(name, tmp_path)
    if name != "hardswish-mobilenet":  # SiLU: QLinearSigmoid; HardSwish: QLinearAdd + QLinearMul
        assert ops["QLinearSigmoid"] > 0
    else:
        assert ops["QLinearAdd"] > 0 and "HardSwish" not in ops


@pytest.mark.parametrize("name", FAST)
def test_guard_reports_fp32_layers_on_mobile_blocks(name, tmp_path):
    _guarded(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocr-cls", "ppocr-det"])
def test_chains_fused_on_paddle_exports(name, tmp_path):
    ops = _chains_fused(name, tmp_path)
    assert ops["QLinearAdd"] > 0  # Paddle's HardSwish x * Clip(x + 3, 0, 6) / 6: Add and Mul, Div dropped


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_guard_reports_fp32_layers_on_real_exports(name, tmp_path):
    _guarded(name, tmp_path)
