"""``graphc.tensorrt_engine``, the adapter from the TensorRT plan to an engine file, driven by a
stand-in ``tensorrt`` module (no TensorRT builder installs here: PyPI's packages are stubs).

The stand-in records what the adapter asks of TensorRT's builder API and returns bytes for an
engine, so these tests check the adapter's side of the contract: a strongly typed network and
no precision flags, the parsed file, the workspace, SPARSE_WEIGHTS, one profile per dynamic
input with the plan's min/opt/max, the engine written into the artifact and listed in its
manifest, and a parser error or an empty build refused in one line with nothing left behind.
"""

from __future__ import annotations

import hashlib
import json
import types

import pytest

from graphc import tensorrt_engine
from graphc.cli import main
from graphc.errors import GraphcError

CNN = "models/fashion_cnn.onnx"
CALIB = "models/fashion_mnist_calib.npz"


def stand_in(parse_ok=True, build_ok=True):
    calls = {"flags": [], "profiles": [], "pool": {}, "network_flags": None, "parsed": None}

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported attribute"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (list(low), list(opt), list(high))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pool"][pool] = size

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"].append(profile.shapes)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if not build_ok:
                return None
            return b"engine of " + hashlib.sha256(open(calls["parsed"], "rb").read()).hexdigest().encode()

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    trt = types.SimpleNamespace(
        Logger=Logger, Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(SPARSE_WEIGHTS="sparse", INT8="int8", FP16="fp16"))
    return trt, calls


@pytest.fixture(scope="module")
def int8_cnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "cnn.int8.onnx"
    assert main(["optimize", CNN, "--passes", "fold,int8:target=tensorrt", "--data", CALIB, "-o", str(out), "--quiet"]) == 0
    return out


def test_build_writes_the_engine_into_the_artifact(int8_cnn, tmp_path, monkeypatch, capsys):
    trt, calls = stand_in()
    monkeypatch.setattr(tensorrt_engine, "builder_module", lambda: trt)
    out = tmp_path / "art"
    assert main(["build", str(int8_cnn), "--target", "tensorrt", "-o", str(out), "--shape", "image=8x1x28x28",
                 "--workspace", "256"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tensorrt"]["engine"] == "model.plan" and manifest["tensorrt"]["engine_note"] is None
    assert set(manifest["files"]) == {"model.onnx", "model.plan"}
    model_sha = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert (out / "model.plan").read_bytes() == b"engine of " + model_sha.encode()  # built from the artifact's model
    assert calls["network_flags"] == 1 << 5 and calls["flags"] == []  # strongly typed, no precision flags
    assert calls["pool"] == {"workspace": 256 * 2**20}
    assert calls["profiles"] == [{"image": ([1, 1, 28, 28], [8, 1, 28, 28], [8, 1, 28, 28])}]
    capsys.readouterr()
    assert main(["build", "--check", str(out)]) == 0
    (out / "model.plan").write_bytes(b"other")
    assert main(["build", "--check", str(out)]) == 2


def test_sparse_weights_ask_for_the_flag(int8_cnn, tmp_path):
    trt, calls = stand_in()
    config = {"workspace_bytes": 2**20, "sparse_weights": True, "profiles": []}
    engine = tensorrt_engine.build(trt, int8_cnn, config, tmp_path / "e.plan")
    assert engine.exists() and calls["flags"] == ["sparse"] and calls["profiles"] == []


@pytest.mark.parametrize("parse_ok,build_ok,message", [
    (False, True, "TensorRT's ONNX parser refused model.onnx: In node 3 (Conv): unsupported attribute"),
    (True, False, "TensorRT built no engine for model.onnx"),
])
def test_a_failed_build_is_one_line_and_leaves_nothing(int8_cnn, tmp_path, monkeypatch, capsys, parse_ok, build_ok,
                                                       message):
    trt, _ = stand_in(parse_ok, build_ok)
    monkeypatch.setattr(tensorrt_engine, "builder_module", lambda: trt)
    out = tmp_path / "art"
    capsys.readouterr()
    assert main(["build", str(int8_cnn), "--target", "tensorrt", "-o", str(out), "--shape", "image=8x1x28x28"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_builder_module_is_tensorrt_else_tensorrt_rtx(monkeypatch):
    import sys

    rtx = types.SimpleNamespace(name="rtx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    assert tensorrt_engine.builder_module() is rtx
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert tensorrt_engine.builder_module() is None
    full = types.SimpleNamespace(name="full")
    monkeypatch.setitem(sys.modules, "tensorrt", full)
    assert tensorrt_engine.builder_module() is full


@pytest.mark.gpu
def test_the_engine_runs_on_the_gpu_near_onnxruntime(int8_cnn, tmp_path):
    """Needs a CUDA GPU and a TensorRT builder: the built engine, deserialized and run, gives
    onnxruntime's INT8 outputs up to TensorRT's own INT8 rounding."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    trt = tensorrt_engine.builder_module()
    if trt is None:
        pytest.skip("no TensorRT builder (PyPI's tensorrt packages are stubs)")
    import numpy as np

    from graphc.runtime import open_session

    out = tmp_path / "art"
    assert main(["build", str(int8_cnn), "--target", "tensorrt", "-o", str(out), "--shape", "image=8x1x28x28"]) == 0
    images = np.load(CALIB)["image"][:8]
    got = tensorrt_engine.run_engine(trt, out / "model.plan", {"image": images})
    want = open_session(int8_cnn).run(None, {"image": images})[0]
    logits = next(iter(got.values()))
    cos = float((logits * want).sum() / (np.linalg.norm(logits) * np.linalg.norm(want)))
    assert cos > 0.999 and np.mean(logits.argmax(1) == want.argmax(1)) >= 0.875
