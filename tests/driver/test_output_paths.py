"""One output-path rule for every file a command writes (graphc.model_io.check_output_paths):
an output that is an input or another output is refused in one line (exit 2) before anything
runs, inputs stay byte-identical, and a failure leaves no output behind. In-process through
``cli.main`` (the subprocess form is tested in test_cli.py)."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from graphc import cli
from tests import CNN, MODELS

CALIB = MODELS / "fashion_mnist_calib.npz"


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def files(tmp_path):
    """Copies of the bundled model and its calibration data, and their digests."""
    model, data = tmp_path / "m.onnx", tmp_path / "calib.npz"
    shutil.copy(CNN, model)
    shutil.copy(CALIB, data)
    return model, data, {model: digest(model), data: digest(data)}


def refused(capsys, argv, pattern):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and pattern in err, err


def unchanged(digests):
    assert all(digest(path) == want for path, want in digests.items())


@pytest.mark.parametrize("target", ["model", "data", "output"])
def test_report_onto_an_input_or_the_output_is_refused(files, tmp_path, capsys, target):
    model, data, digests = files
    out = tmp_path / "o.onnx"
    report = {"model": model, "data": data, "output": out}[target]
    refused(capsys, ["optimize", str(model), "--passes", "fold", "--data", str(data), "-o", str(out),
                     "--report", str(report), "--quiet"], "--report")
    unchanged(digests)
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--data", "--eval-data"])
def test_output_onto_a_data_file_is_refused(files, tmp_path, capsys, flag):
    model, data, digests = files
    extra = ["--metric", "top1"] if flag == "--eval-data" else []
    refused(capsys, ["optimize", str(model), "--passes", "fold,int8", flag, str(data), *extra, "-o", str(data),
                     "--quiet"], f"it would overwrite {flag}")
    unchanged(digests)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_output_through_a_link_onto_the_input_is_refused(files, tmp_path, capsys, link):
    model, _, digests = files
    alias = tmp_path / "alias.onnx"
    (os.symlink if link == "symlink" else os.link)(model, alias)
    assert cli.main(["optimize", str(model), "--passes", "fold", "-o", str(alias), "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    unchanged(digests)


def test_output_inside_a_data_directory_is_refused(files, tmp_path, capsys):
    model, _, digests = files
    directory = tmp_path / "npy"
    directory.mkdir()
    import numpy as np

    np.save(directory / "image.npy", np.load(CALIB)["image"][:8])
    refused(capsys, ["optimize", str(model), "--passes", "fold", "--data", str(directory),
                     "-o", str(directory / "o.onnx"), "--quiet"], "it would overwrite --data")


def test_bench_json_onto_a_model_or_through_a_symlink_is_refused(files, tmp_path, capsys):
    model, _, digests = files
    refused(capsys, ["bench", str(model), "--runs", "1", "--warmup", "0", "--json", str(model)], "--json")
    planted = tmp_path / "results.json"
    os.symlink(model, planted)
    refused(capsys, ["bench", str(model), "--runs", "1", "--warmup", "0", "--json", str(planted)], "--json")
    unchanged(digests)


def test_a_report_that_cannot_be_written_leaves_no_model(files, tmp_path, capsys):
    model, _, digests = files
    out = tmp_path / "o.onnx"
    refused(capsys, ["optimize", str(model), "--passes", "fold", "-o", str(out),
                     "--report", str(tmp_path / "missing" / "r.json"), "--quiet"], "cannot write")
    assert not out.exists()
    unchanged(digests)


def test_an_output_name_over_255_bytes_is_one_line(files, tmp_path, capsys):
    model, _, digests = files
    refused(capsys, ["optimize", str(model), "--passes", "fold", "-o", str(tmp_path / ("x" * 300 + ".onnx")),
                     "--quiet"], "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx"]
    unchanged(digests)
