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


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), PermissionError(13, "Permission denied")])
def test_a_full_disk_or_a_read_only_directory_is_one_line_and_leaves_nothing(files, tmp_path, capsys, monkeypatch,
                                                                            error):
    """Writing the model fails mid-way (the tests run as root, so a read-only directory and a
    full disk are simulated at the write): exit 2, one line, no file left in the directory."""
    import graphc.model_io

    model, _, digests = files
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_replace = os.replace

    def failing_replace(source, target):
        if str(target).endswith("o.onnx"):
            raise error
        return real_replace(source, target)

    monkeypatch.setattr(graphc.model_io.os, "replace", failing_replace)
    refused(capsys, ["optimize", str(model), "--passes", "fold", "-o", str(out_dir / "o.onnx"), "--quiet"],
            f"cannot write the model: [Errno {error.errno}]")
    assert list(out_dir.iterdir()) == []
    unchanged(digests)


def test_bench_json_into_a_missing_directory_is_one_line(files, tmp_path, capsys):
    model, _, digests = files
    refused(capsys, ["bench", str(model), "--runs", "1", "--json", str(tmp_path / "missing" / "b.json")],
            "cannot write")
    unchanged(digests)


def test_onnxruntime_own_log_stays_below_graphcs_line(tmp_path):
    """onnxruntime logs coloured warnings and errors of its own (here: an unused initializer
    it removes, at warning level) unless its severity is set; graphc sets it to fatal, so
    stderr holds graphc's lines only: nothing on success, one line on failure."""
    import subprocess
    import sys

    import numpy as np
    import onnx
    import onnx.helper as oh

    from tests import assert_one_line_error

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    unused = onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused")
    noisy = tmp_path / "noisy.onnx"
    onnx.save(oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y], [unused]),
                            opset_imports=[oh.make_opsetid("", 17)]), str(noisy))
    run = subprocess.run([sys.executable, "-m", "graphc", "bench", str(noisy), "--runs", "1"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    empty = tmp_path / "empty.onnx"
    onnx.save(oh.make_model(oh.make_graph([], "g", [x], [y]), opset_imports=[oh.make_opsetid("", 17)]), str(empty))
    for argv in (["bench", str(empty)], ["optimize", str(empty), "--passes", "fold", "-o", str(tmp_path / "o.onnx")]):
        run = subprocess.run([sys.executable, "-m", "graphc", *argv], capture_output=True, text=True, timeout=120)
        assert_one_line_error(run, r"error: ")
        assert "\x1b[" not in run.stderr


def test_an_output_whose_external_data_would_replace_the_inputs_is_refused(tmp_path, capsys):
    """A model over 2 GB is saved as OUT plus OUT.data: OUT.data must not be the input's own
    external data file (the input's weights would be replaced)."""
    import numpy as np
    import onnx
    import onnx.helper as oh

    weight = onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32), "w")
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])
    model = oh.make_model(oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"])], "g", [x],
                                        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])], [weight]),
                          opset_imports=[oh.make_opsetid("", 17)])
    source = tmp_path / "m.onnx"
    onnx.save(model, str(source), save_as_external_data=True, location="o.onnx.data", size_threshold=0)
    digests = {source: digest(source), tmp_path / "o.onnx.data": digest(tmp_path / "o.onnx.data")}
    refused(capsys, ["optimize", str(source), "--passes", "fold", "-o", str(tmp_path / "o.onnx")],
            "o.onnx.data: it would overwrite MODEL's external data ")
    unchanged(digests)
    assert not (tmp_path / "o.onnx").exists()
