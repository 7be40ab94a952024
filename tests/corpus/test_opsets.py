"""Opsets below 13 (issue 13): int8 converts them with onnx.version_converter where original and
converted agree bit for bit on sample inputs, else refuses in one line with the command."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc.errors import GraphcError
from graphc.opsets import default_opset, meet_min_opset
from graphc.pipeline import OptimizeRequest, optimize
from tests.corpus import CORPUS
from tests.corpus.old_opsets import SHAPE


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", ["cnn-opset11", "cnn-opset12"])
def test_int8_converts_an_old_opset_exactly_with_a_note(name, tmp_path):
    source = CORPUS[name].build(tmp_path)
    out = tmp_path / "q.onnx"
    # conversion under test, not speed: the speed guard would keep this tiny CNN FP32 at batch 1
    report = optimize(OptimizeRequest(model=source, passes="fold,int8:speed_guard=false", output=out, verify=True,
                                      progress=False))
    assert any(n.startswith(f"converted from opset {name[-2:]} to 13 for int8") and "bit for bit" in n
               for n in report.notes)
    model = onnx.load(str(out))
    assert default_opset(model) == 13
    assert report.passes[-1].stats["static_nodes"] == 4  # 3 Conv + the Gemm head
    feeds = {"image": np.random.default_rng(3).standard_normal((4, *SHAPE[1:])).astype(np.float32)}
    assert cosine(run(source, feeds)[0], run(out, feeds)[0]) > 0.99  # int8's --verify tolerance


def test_fold_alone_keeps_the_opset(tmp_path):
    source = CORPUS["cnn-opset11"].build(tmp_path)
    report = optimize(OptimizeRequest(model=source, passes="fold", output=tmp_path / "f.onnx", progress=False))
    assert default_opset(onnx.load(str(tmp_path / "f.onnx"))) == 11
    assert not any("converted" in n for n in report.notes)


def test_unverifiable_conversion_is_refused_with_the_command(tmp_path):
    source = CORPUS["ppocr-cls"].build(tmp_path)  # x [-1, 3, ?, ?]: no synthetic inputs without --shape
    with pytest.raises(GraphcError) as error:
        optimize(OptimizeRequest(model=source, passes="int8", output=tmp_path / "q.onnx", progress=False))
    message = str(error.value)
    assert "int8 needs opset 13" in message and "--shape x=" in message
    assert "v.convert_version(onnx.load(" in message and "\n" not in message
    assert not (tmp_path / "q.onnx").exists()


def test_a_conversion_that_changes_outputs_is_refused(tmp_path):
    model = onnx.load(str(CORPUS["cnn-opset11"].build(tmp_path)))

    class Int8Like:
        name, min_opset = "int8", 13

    outputs = iter([[np.zeros(3, np.float32)], [np.full(3, 1e-3, np.float32)]])
    with pytest.raises(GraphcError, match="not exact .output 0 differs by up to 0.001"):
        meet_min_opset(model, [Int8Like()], "m.onnx", sample=lambda: {"image": np.zeros(SHAPE, np.float32)},
                       run=lambda m, feeds: next(outputs), note=lambda text: None)


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("ppocr-cls", (1, 3, 48, 192)), ("ppocr-det", (1, 3, 64, 64)),
                                        ("ppocr-rec", (1, 3, 48, 64))])
def test_paddle_exports_are_converted_for_int8(name, shape, tmp_path):
    source = CORPUS[name].build(tmp_path)
    report = optimize(OptimizeRequest(model=source, passes="int8", output=tmp_path / "q.onnx",
                                      shapes={"x": shape}, progress=False))
    assert any(n.startswith("converted from opset") for n in report.notes)
    assert report.passes[-1].changed


def test_refusal_is_one_line_exit_2_on_the_command_line(tmp_path):
    import subprocess
    import sys

    source = CORPUS["ppocr-det"].build(tmp_path)
    result = subprocess.run([sys.executable, "-m", "graphc", "optimize", str(source), "--passes", "int8",
                             "-o", str(tmp_path / "q.onnx"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has opset 12" in lines[0] and "convert_version" in lines[0]
