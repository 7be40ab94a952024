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
from graphc.passes.int8 import activation_chains
from graphc.runtime import session_options
from tests.corpus import CORPUS
from tests.corpus.images import sample_images

SHAPES = {"ppocr-cls": "x=1x3x48x192", "ppocr-det": "x=1x3x160x160", "open-nsfw": "input_0=1x224x224x3"}
FAST = ["silu-detector", "hardswish-mobilenet", "silu-efficientnet"]
SLOW = ["ppocr-cls", "ppocr-det", "open-nsfw"]
def _final_sigmoid_input(model: onnx.ModelProto) -> str:
    output = model.graph.output[0].name
    return next(n.input[0] for n in model.graph.node if n.op_type == "Sigmoid" and n.output[0] == output)


# ppocr-det: fold's exactness check refuses it (a Sigmoid output moves 2e-3 relative at 1e-7
# absolute: fold's business, not int8's), so int8 runs on the export as it is
FOLD = {"ppocr-det": ""}
# INT8 (rule 3 alone, before this work) is below cosine 0.99 on these on synthetic text lines
# (ppocr-cls: 0.93-0.999 per image, a 2-way softmax; ppocr-det: 0.4-0.7, a thresholding
# Sigmoid map): rules 10 and 11 must not make it worse
WEAK_INT8 = {"ppocr-cls", "ppocr-det"}
# the detector's probability map is a Sigmoid that thresholds its logits: on synthetic text
# lines most pixels sit near 0 or 1 and the map's cosine is noise; it is compared on the logits
COMPARED = {"ppocr-det": _final_sigmoid_input}
FLOAT_CHAIN_OPS = {"Sigmoid", "HardSwish", "HardSigmoid", "QuickGelu", "Clip", "Div"}
# float chain ops expected to remain: the classifier head's HardSwish after a Gemm (rule 3
# quantizes Conv-family outputs only; onnxruntime writes it HardSigmoid + Mul), the detector's
# output Sigmoid (a graph output stays float)
FLOAT_LEFT = {"hardswish-mobilenet": {"HardSigmoid": 1}, "ppocr-det": {"Sigmoid": 1}}


def _source(name: str, directory: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    model = CORPUS[name]
    path = model.build(directory)
    args = list(model.cli_args) or (["--shape", SHAPES[name]] if name in SHAPES else [])
    if onnx.load(path, load_external_data=False).opset_import[0].version < 13:
        converted = directory / f"{name}-op13.onnx"
        onnx.save(onnx.version_converter.convert_version(onnx.load(path), 13), converted)
        path = converted
    return path, args


def _feeds(name, path, args, rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` images in the model's input range (tests/corpus/images.py)."""
    model = onnx.load(path, load_external_data=False)
    given = dict(a.split("=") for a in args[1::2]) if args else {}
    feeds = {}
    for value in model.graph.input:
        dims = ([int(d) for d in given[value.name].split("x")] if value.name in given
                else [d.dim_value or 1 for d in value.type.tensor_type.shape.dim])
        feeds[value.name] = sample_images(name, dims, rows, seed)
    return feeds


def _cosines(name, source, out, args) -> np.ndarray:
    """Per-sample cosine of ``out`` against onnxruntime on ``source`` over 8 fresh images, on
    the first output, or on the tensor ``COMPARED`` names (kept by name in the INT8 graph)."""
    feeds = _feeds(name, source, args, rows=8)
    values = []
    for path in (source, out):
        model = onnx.load(path)
        wanted = COMPARED.get(name, lambda m: m.graph.output[0].name)(onnx.load(source, load_external_data=False))
        if wanted not in {o.name for o in model.graph.output}:
            model.graph.output.append(onnx.ValueInfoProto(name=wanted))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        values.append(session.run([wanted], feeds)[0])
    want, got = values
    rows = len(want)
    return cosine_per_sample(want.reshape(rows, -1).astype(np.float64), got.reshape(rows, -1).astype(np.float64))


def _within_tolerance(name, source, out, args, baseline: float | None) -> None:
    """Cosine >= 0.99 on every image; where rule 3's INT8 alone cannot hold that (the Paddle
    exports: ``baseline`` is its mean cosine), no worse than it by more than 0.02 on average."""
    cosine = _cosines(name, source, out, args)
    if baseline is None:
        assert cosine.min() >= 0.99, cosine
    else:
        assert cosine.mean() >= baseline - 0.02, (cosine, baseline)


def _baseline(name, tmp_path, monkeypatch) -> float | None:
    """Mean cosine of int8 without rule 10 (chains off) on a model rule 3 quantizes poorly."""
    if name not in WEAK_INT8:
        return None
    source, args = _source(name, tmp_path)
    out = tmp_path / "rule3.onnx"
    with monkeypatch.context() as patch:
        patch.setattr(activation_chains, "chain_output", lambda node, chosen: [])
        patch.setattr(activation_chains, "decompose_hard_activations", lambda graph, chosen: 0)
        assert _optimize(name, source, out, f"{FOLD.get(name, 'fold,')}int8:speed_guard=false", args) == 0
    return float(_cosines(name, source, out, args).mean())


def _optimize(name, source, out, spec, args, report=None) -> int:
    """``graphc optimize`` calibrated on 16 rows drawn like the test inputs (another seed)."""
    calib = out.with_name("calib.npz")
    np.savez(calib, **_feeds(name, source, args, rows=16, seed=100))
    extra = ["--report", str(report)] if report else []
    return cli.main(["optimize", str(source), "--passes", spec, *args, "--data", str(calib), "-o", str(out), *extra])


def _executed_ops(path, tmp_path) -> collections.Counter:
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _chains_fused(name, tmp_path, baseline=None):
    source, args = _source(name, tmp_path)
    out = tmp_path / "int8.onnx"
    assert _optimize(name, source, out, f"{FOLD.get(name, 'fold,')}int8:speed_guard=false", args) == 0
    _within_tolerance(name, source, out, args, baseline)
    ops = _executed_ops(out, tmp_path)
    assert {op: ops[op] for op in FLOAT_CHAIN_OPS if op in ops} == FLOAT_LEFT.get(name, {}), ops
    assert ops["QLinearConv"] > 0 and ops["QLinearMul"] > 0, ops
    return ops


def _guarded(name, tmp_path, baseline=None):
    source, args = _source(name, tmp_path)
    out, report_path = tmp_path / "int8.onnx", tmp_path / "report.json"
    assert _optimize(name, source, out, f"{FOLD.get(name, 'fold,')}int8", args, report_path) == 0
    _within_tolerance(name, source, out, args, baseline)
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
def test_chains_fused_on_paddle_exports(name, tmp_path, monkeypatch):
    ops = _chains_fused(name, tmp_path, _baseline(name, tmp_path, monkeypatch))
    assert ops["QLinearAdd"] > 0  # Paddle's HardSwish x * Clip(x + 3, 0, 6) / 6: Add and Mul, Div dropped


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_guard_reports_fp32_layers_on_real_exports(name, tmp_path, monkeypatch):
    _guarded(name, tmp_path, _baseline(name, tmp_path, monkeypatch))
