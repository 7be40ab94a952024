"""``benchmarks/gpu_check.py`` at toy sizes on the CPU (Triton's interpreter), as the GPU machine runs
it at full size: every section completes, the one results file has each section and the JSON of
every figure, graphc's Triton kernels equal the int64 product, and the torch executor's outputs
(FP32, FP16, graphc int8) are those of onnxruntime on the CPU within each one's tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.txt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for heading in ("## machine", "## tensorrt", "## kernels", "## models", "## json"):
        assert heading in text
    results = json.loads(text.split("## json", 1)[1])
    assert results["machine"]["device"] == "cpu"
    trt = results["tensorrt"]
    assert trt["builder"]["precision"]["int8"] and (trt["engine"] or "stubs" in trt["note"])
    kernels = results["kernels"]
    graphc_rows = [r for r in kernels if r["variant"].startswith("graphc triton")]
    assert len(graphc_rows) == 4 and all(r["exact"] is True for r in graphc_rows)
    assert all(r["exact"] is True for r in kernels if r["variant"] == "torch._int_mm int8")
    models = results["models"]
    assert not any("failed" in row for row in models), models
    assert {(r["model"], r["batch"]) for r in models} == {("fashion CNN", 1), ("fashion CNN", 2), ("BERT-tiny", 1),
                                                          ("BERT-tiny", 2)}
    for row in models:
        scale = row["output_scale"]
        variants = row["variants"]
        assert variants["fp32"]["max_diff_vs_fp32"] <= 1e-5 * max(scale, 1.0)
        assert variants["fp16"]["max_diff_vs_fp32"] <= 0.02 * scale
        int8 = variants["graphc int8"]
        assert int8["max_diff_vs_onnxruntime_int8_unfused"] <= 1e-5 * max(scale, 1.0)
        if row["model"] == "fashion CNN":  # a trained model: INT8 stays near FP32. The random-init
            # BERT-tiny's logits are about 0.01 and their INT8 error depends on which layers the
            # speed guard keeps FP32 on this machine: only its exactness above is checked
            assert int8["max_diff_vs_fp32"] <= 0.1 * scale and int8["top1_agrees_with_fp32"] >= 0.5
        assert variants["fp16"]["vs_fp16"] == 1.0
