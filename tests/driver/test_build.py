"""``graphc build --target ort`` and ``graphc build --check`` (graphc.artifact).

- The bundled CNN (FP32 and after ``fold,int8``) and a BERT fixture with graphc's sparse ops:
  the artifact's model.onnx and model.ort give the outputs of the model built from, the
  manifest lists every file with its sha256 and size, the inputs/outputs with symbolic dims,
  the precision, the passes from ``--report``, the library where ``ai.graphc`` ops need it.
- ``--check`` passes on a fresh artifact and refuses each corruption in one line, exit 2: a
  byte changed, a file missing, a file added, the manifest edited.
- An existing DIR is refused without ``--force`` and replaced with it; a model that cannot run
  is refused and nothing is left behind.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphc import artifact
from graphc.cli import main
from graphc.runtime import open_session

CNN = "models/fashion_cnn.onnx"
CALIB = "models/fashion_mnist_calib.npz"


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("graphc build: error: ")
    return err


def outputs(path, feeds):
    return open_session(path, threads=1).run(None, feeds)


def cnn_feeds():
    data = np.load(CALIB)
    model = onnx.load(CNN)
    name = model.graph.input[0].name
    return {name: data[name][:8]}


@pytest.mark.parametrize("passes", [None, "fold,int8"])
def test_cnn_artifact_runs_as_the_model_it_was_built_from(passes, tmp_path, capsys):
    source = CNN
    report = None
    if passes:
        source, report = tmp_path / "opt.onnx", tmp_path / "report.json"
        assert main(["optimize", CNN, "--passes", passes, "--data", CALIB, "-o", str(source), "--report",
                     str(report), "--quiet"]) == 0
    out = tmp_path / "art"
    command = ["build", str(source), "--target", "ort", "-o", str(out)] + (["--report", str(report)] if report else [])
    assert main(command) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "graphc-artifact" and manifest["format_version"] == 1
    assert set(manifest["files"]) == {"model.onnx", "model.ort"} == {p.name for p in out.iterdir()} - {"manifest.json"}
    assert manifest["precision"] == ("int8" if passes else "fp32")
    assert manifest["inputs"][0]["shape"][0] == "batch" and manifest["outputs"][0]["dtype"] == "float32"
    assert manifest["produced_by"] == (None if not passes else {"passes": ["fold", "int8"],
                                                               "report": json.loads(report.read_text())})
    assert manifest["cpu"]["int8_weight_bits"] in ((7, 8) if passes else (None,))
    feeds = cnn_feeds()
    expected = outputs(source, feeds)
    for name in ("model.onnx", "model.ort"):
        for a, b in zip(expected, outputs(out / name, feeds)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["build", "--check", str(out)]) == 0
    assert f"{out}: ok (2 files" in capsys.readouterr().out


def test_sparse_model_artifact_carries_the_kernel_library(onnx_model, tmp_path, capsys):
    sparse = tmp_path / "sparse.onnx"
    assert main(["optimize", str(onnx_model("bert")), "--passes",
                 "fold,sparsify:0.8:pattern=block:block=1x4,int8:speed_guard=false,sparse-int8", "-o", str(sparse),
                 "--quiet"]) == 0
    out = tmp_path / "art"
    assert main(["build", str(sparse), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["custom_op_library"] == "libgraphc_kernels.so" and "libgraphc_kernels.so" in manifest["files"]
    assert manifest["precision"] == "int8 (graphc sparse ops)"
    capsys.readouterr()
    assert main(["build", "--check", str(out)]) == 0


@pytest.fixture
def built(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["build", CNN, "-o", str(out)]) == 0
    capsys.readouterr()
    return out


def flip_byte(path):
    """One bit of the byte in the middle of ``path`` flipped (also tests/driver/test_cpp_example.py)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt,words", [
    (lambda d: flip_byte(d / "model.onnx"), "model.onnx does not match its sha256 and size"),
    (lambda d: flip_byte(d / "model.ort"), "model.ort does not match its sha256 and size"),
    (lambda d: (d / "model.ort").unlink(), "model.ort is missing"),
    (lambda d: (d / "notes.txt").write_text("x"), "notes.txt not listed in manifest.json"),
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace(
        '"format_version": 1', '"format_version": 7')), "format version 7"),
    (lambda d: (d / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
])
def test_check_refuses_each_corruption_in_one_line(built, corrupt, words, capsys):
    corrupt(built)
    assert main(["build", "--check", str(built)]) == 2
    assert words in one_error(capsys)


def test_existing_directory_needs_force_and_is_replaced_whole(built, tmp_path, capsys):
    before = (built / "manifest.json").read_text()
    assert main(["build", CNN, "-o", str(built)]) == 2
    assert "already exists; give --force" in one_error(capsys)
    (built / "stale.txt").write_text("old")
    assert main(["build", CNN, "-o", str(built), "--force"]) == 0
    assert not (built / "stale.txt").exists()
    # model.onnx is the same bytes; onnxruntime's .ort writer is not byte-reproducible (same size, other bytes)
    assert json.loads((built / "manifest.json").read_text())["files"]["model.onnx"] == \
        json.loads(before)["files"]["model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging folder left


def test_a_model_that_cannot_run_is_refused_and_nothing_is_left(tmp_path, capsys):
    model = onnx.load(CNN)
    model.graph.node[0].op_type = "NoSuchOp"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    out = tmp_path / "art"
    assert main(["build", str(broken), "-o", str(out)]) == 2
    one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_check_without_a_directory_and_missing_arguments(tmp_path, capsys):
    assert main(["build", "--check", str(tmp_path / "none")]) == 2
    assert "not an artifact directory" in one_error(capsys)
    assert main(["build", CNN]) == 2
    assert "give MODEL and -o DIR" in one_error(capsys)


def test_check_warns_where_this_cpu_would_saturate_the_weights(built, monkeypatch):
    from graphc import cpu_features

    manifest = json.loads((built / "manifest.json").read_text())
    manifest["cpu"]["saturates_without_vnni"] = True
    (built / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(cpu_features, "cpu_features",
                        lambda: cpu_features.CpuFeatures(avx2=True, avx512_vnni=False, avx_vnni=False))
    assert any("saturating int16" in w for w in artifact.check(built)["warnings"])


def test_an_unwritable_place_and_a_missing_library_are_one_line(built, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["build", CNN, "-o", str(blocker / "art")]) == 2  # a file where the parent folder should be
    assert "cannot write there" in one_error(capsys)
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["custom_op_library"] = "libgraphc_kernels.so"  # named, but not in the artifact
    (built / "manifest.json").write_text(json.dumps(manifest))
    assert main(["build", "--check", str(built)]) == 2
    assert "names the library libgraphc_kernels.so but does not list it" in one_error(capsys)
