"""examples/cpp (graphc_run): built with CMake against the onnxruntime wheel's library and the
C API headers graphc fetches; run on artifacts of the bundled CNN (FP32 and ``fold,int8``, the
10k test split), a BERT fixture with graphc's sparse ops (the kernel library from the
artifact) and an int8 MiniLM (slow): its outputs equal Python's onnxruntime outputs exactly
(same model, one thread); each corruption of an artifact is refused in one line, exit 2."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import onnxruntime
import pytest

from graphc.cli import main
from graphc.kernels.build import header_dir
from graphc.runtime import open_session
from tests.driver.test_build import flip_byte

ROOT = pathlib.Path(__file__).resolve().parents[2]
CNN = ROOT / "models" / "fashion_cnn.onnx"
TEST = ROOT / "models" / "fashion_mnist_test.npz"


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> pathlib.Path:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build examples/cpp (apt-get install cmake)")
    build = tmp_path_factory.mktemp("cpp")
    library = next((pathlib.Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    configure = subprocess.run(["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build),
                                f"-DORT_INCLUDE_DIR={header_dir()}", f"-DORT_LIBRARY={library}"],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stderr[-2000:]
    done = subprocess.run(["cmake", "--build", str(build), "--parallel", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return build / "graphc_run"


def run_app(app, artifact, feeds, out, runs=2):
    args = [str(app), str(artifact), "--out", str(out), "--runs", str(runs), "--threads", "1"]
    for name, value in feeds.items():
        path = out.parent / f"{out.name}-{name}.npy"
        np.save(path, value)
        args += ["--input", f"{name}={path}"]
    return subprocess.run(args, capture_output=True, text=True)


def build_artifact(model, out) -> pathlib.Path:
    assert main(["build", str(model), "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("passes", [None, "fold,int8"])
def test_cnn_artifact_gives_pythons_outputs_and_top1(app, passes, tmp_path, capsys):
    model = CNN
    if passes:
        model = tmp_path / "opt.onnx"
        assert main(["optimize", str(CNN), "--passes", passes, "--data", str(ROOT / "models" / "fashion_mnist_calib.npz"),
                     "-o", str(model), "--quiet"]) == 0
    artifact = build_artifact(model, tmp_path / "art")
    data = np.load(TEST)
    done = run_app(app, artifact, {"image": data["image"]}, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "2 runs, 1 threads: median" in done.stdout
    got = np.load(tmp_path / "out" / "logits.npy")
    expected = open_session(artifact / "model.onnx", threads=1).run(None, {"image": data["image"]})[0]
    np.testing.assert_array_equal(got, expected)
    capsys.readouterr()
    assert main(["eval", str(model), "--data", str(TEST), "--metric", "top1"]) == 0
    printed = capsys.readouterr().out  # "top1: 0.9146 (10000 samples, ...)"
    assert f"top1: {(got.argmax(1) == data['labels']).mean():.4f}" in printed


def test_sparse_artifact_registers_its_own_library(app, onnx_model, sample_inputs, tmp_path, capsys):
    sparse = tmp_path / "sparse.onnx"
    assert main(["optimize", str(onnx_model("bert")), "--passes",
                 "fold,sparsify:0.8:pattern=block:block=1x4,int8:speed_guard=false,sparse-int8", "-o", str(sparse),
                 "--quiet"]) == 0
    artifact = build_artifact(sparse, tmp_path / "art")
    feeds = sample_inputs("bert")
    done = run_app(app, artifact, feeds, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    expected = open_session(artifact / "model.onnx", threads=1).run(None, feeds)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "logits.npy"), expected)


@pytest.mark.slow
def test_int8_minilm_artifact(app, tmp_path, capsys):
    from graphc.models import minilm, wordnet

    source = tmp_path / "minilm.onnx"
    minilm.export_minilm(source)
    feeds = minilm.tokenize(wordnet.noun_glosses(24), max_length=48)
    np.savez(tmp_path / "calib.npz", **feeds)
    quantized = tmp_path / "int8.onnx"
    assert main(["optimize", str(source), "--passes", "fold,int8", "--data", str(tmp_path / "calib.npz"),
                 "-o", str(quantized), "--quiet"]) == 0
    artifact = build_artifact(quantized, tmp_path / "art")
    done = run_app(app, artifact, feeds, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    session = open_session(artifact / "model.onnx", threads=1)
    for output, expected in zip(session.get_outputs(), session.run(None, feeds)):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{output.name}.npy"), expected)


@pytest.mark.parametrize("corrupt,words", [
    (lambda d: flip_byte(d / "model.onnx"), "model.onnx does not match its sha256 and size"),
    (lambda d: (d / "model.ort").unlink(), "model.ort is missing"),
    (lambda d: (d / "extra.bin").write_bytes(b"x"), "extra.bin not listed in manifest.json"),
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace('"bytes": ', '"bytes": 1')),
     "does not match its sha256 and size"),
    (lambda d: (d / "manifest.json").write_text("[1, 2"), "manifest.json: not valid JSON"),
])
def test_app_refuses_each_corruption_in_one_line(app, corrupt, words, tmp_path, capsys):
    artifact = build_artifact(CNN, tmp_path / "art")
    corrupt(artifact)
    done = run_app(app, artifact, {"image": np.load(TEST)["image"][:2]}, tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("graphc_run: error: ") and words in done.stderr
    assert not (tmp_path / "out").exists()
