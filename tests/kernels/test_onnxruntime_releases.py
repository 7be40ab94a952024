"""The kernel library loads and computes exactly in an older onnxruntime release as well as
the one graphc runs on: the training venv's onnxruntime 1.19.2 (``graphc setup training``),
which the library's request for C API version 17 admits."""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest

from graphc import kernels, training_env
from graphc.kernels.layout import pack
from tests.kernels.helpers import integer_model, integer_product

SCRIPT = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.register_custom_ops_library(sys.argv[1])
session = ort.InferenceSession(sys.argv[2], options, providers=["CPUExecutionProvider"])
feeds = dict(np.load(sys.argv[3]))
np.save(sys.argv[4], session.run(None, feeds)[0])
print(ort.__version__)
"""


def test_the_library_runs_in_onnxruntime_1_19(tmp_path):
    python = training_env.env_python()
    if training_env.ready() is None:
        pytest.skip("no training venv (graphc setup training) to hold onnxruntime 1.19.2")
    rng = np.random.default_rng(5)
    weight = np.where(rng.random((130, 70)) < 0.8, 0, rng.integers(-128, 128, (130, 70))).astype(np.int8)
    a = rng.integers(0, 256, (1, 37, 130)).astype(np.uint8)
    model = integer_model(pack(weight))
    model.ir_version = 8  # onnxruntime 1.19 reads IR 10 at most
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "feeds.npz", A=a, zp=np.array(17, np.uint8))
    (tmp_path / "run.py").write_text(SCRIPT)
    done = subprocess.run([str(python), str(tmp_path / "run.py"), str(kernels.library_path()), str(tmp_path / "model.onnx"),
                           str(tmp_path / "feeds.npz"), str(tmp_path / "out.npy")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.19.2"
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), integer_product(a, 17, weight))
