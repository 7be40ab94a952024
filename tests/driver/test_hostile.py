"""Careless and hostile input from issue 14, each refused in one line (exit 2) or handled
(exit 0); inputs stay byte-identical."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphc import cli
from graphc.data import load_dataset, model_signature, validate
from graphc.errors import GraphcError
from graphc.model_io import load_model
from tests import CNN, MODELS


def one_line(capsys, argv, pattern, code=2):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and pattern in err, err


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf", "1e9"])
def test_bench_seconds_outside_its_range_is_one_line(seconds, capsys):
    one_line(capsys, ["bench", str(CNN), "--seconds", seconds], "--seconds must be in [0, 3600]")


def test_threads_beyond_the_machines_cores_are_refused(tmp_path, capsys):
    many = str((os.cpu_count() or 1) + 1)
    one_line(capsys, ["optimize", str(CNN), "--passes", "fold", "-o", str(tmp_path / "o.onnx"), "--threads", many],
             "cores")
    one_line(capsys, ["bench", str(CNN), "--threads", "100000"], "cores")
    assert not (tmp_path / "o.onnx").exists()


def test_a_passes_list_past_the_bound_is_refused(tmp_path, capsys):
    one_line(capsys, ["optimize", str(CNN), "--passes", ",".join(["fold"] * 20000), "-o", str(tmp_path / "o.onnx")],
             "at most 64")


def test_a_huge_bad_value_is_echoed_as_a_short_prefix(tmp_path, capsys):
    value = "x" * 100_000
    assert cli.main(["optimize", str(CNN), "--passes", f"prune:ratio={value}", "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err) < 300 and "(100000 chars)" in err


@pytest.mark.parametrize("labels", [np.int64(3), np.zeros((512, 2), np.int64)])
def test_labels_must_be_one_value_a_row(labels):
    with np.load(MODELS / "fashion_mnist_calib.npz") as npz:
        arrays = {"image": npz["image"], "labels": labels}
    with pytest.raises(GraphcError, match="labels are one value a row"):
        validate(arrays, model_signature(load_model(CNN)), "d")


def test_a_single_npy_feeds_a_one_input_model(tmp_path):
    with np.load(MODELS / "fashion_mnist_calib.npz") as npz:
        np.save(tmp_path / "image.npy", npz["image"][:8])
    dataset = load_dataset(tmp_path / "image.npy", model_signature(load_model(CNN)))
    assert len(dataset) == 8
    two = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("a", "b")]
    model = oh.make_model(oh.make_graph([oh.make_node("Add", ["a", "b"], ["c"])], "g", two,
                                        [oh.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1])]))
    with pytest.raises(GraphcError, match="a single .npy feeds a one-input model; this one has 2 inputs"):
        load_dataset(tmp_path / "image.npy", model_signature(model))


def test_a_model_without_outputs_is_refused_by_every_verb(tmp_path, capsys):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    path = tmp_path / "none.onnx"
    onnx.save(oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], []),
                            opset_imports=[oh.make_opsetid("", 17)]), str(path))
    before = path.read_bytes()
    for argv in (["optimize", str(path), "--passes", "prune:0.3", "-o", str(tmp_path / "o.onnx")],
                 ["inspect", str(path)], ["bench", str(path)]):
        one_line(capsys, argv, "the graph has no outputs")
    assert path.read_bytes() == before and not (tmp_path / "o.onnx").exists()


def test_inspect_into_a_closed_pipe_ends_quietly():
    """``graphc inspect M | head``: the reader is gone before graphc prints (its end of the
    pipe is closed at once, while graphc still imports)."""
    proc = subprocess.Popen([sys.executable, "-m", "graphc", "inspect", str(CNN)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and stderr == "", stderr


def test_bench_on_a_model_that_fails_at_run_time_is_one_line(tmp_path, capsys):
    """bench runs through graphc's runner: onnxruntime's run failure is exit 2, one line."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    shape = onnx.numpy_helper.from_array(np.array([5], np.int64), "shape")  # 4 elements a row never reshape to 5
    model = oh.make_model(oh.make_graph([oh.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x],
                                        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5])], [shape]),
                          opset_imports=[oh.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    one_line(capsys, ["bench", str(path), "--runs", "1", "--warmup", "0"], "onnxruntime failed to run the model")


def _external_model(tmp_path, location="w.bin", length=None, held=64):
    """y = x + w with w (16 floats, 64 bytes) in external data at ``location``."""
    weight = onnx.numpy_helper.from_array(np.arange(16, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), *([("length", str(length))] if length else [])):
        weight.external_data.add(key=key, value=value)
    if "\0" not in location and len(location) < 255:
        (tmp_path / location).write_bytes(np.arange(16, dtype=np.float32).tobytes()[:held])
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [16])
    model = oh.make_model(oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"])], "g", [x],
                                        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [16])], [weight]),
                          opset_imports=[oh.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location, pattern", [("w\0.bin", "is not a file name (a NUL byte"),
                                               ("w" * 300 + ".bin", "is not a file name (a NUL byte, or a name over 255")])
def test_an_external_data_location_that_is_no_file_name_is_refused(location, pattern, tmp_path, capsys):
    path = _external_model(tmp_path, location)
    for argv in (["optimize", str(path), "--passes", "fold", "-o", str(tmp_path / "o.onnx")], ["inspect", str(path)],
                 ["bench", str(path)]):
        one_line(capsys, argv, pattern)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("length, held, pattern", [
    (None, 40, "needs 64 bytes of external data; 'w.bin' holds 40"),
    (40, 64, "needs 64 bytes of external data; 'w.bin' holds 40"),
    (100, 64, "length 100 lies beyond the end of 'w.bin' (64 bytes)"),
])
def test_external_data_shorter_than_its_tensor_is_refused_by_every_verb(length, held, pattern, tmp_path, capsys):
    path = _external_model(tmp_path, length=length, held=held)
    for argv in (["optimize", str(path), "--passes", "fold", "-o", str(tmp_path / "o.onnx")], ["inspect", str(path)],
                 ["bench", str(path)]):
        one_line(capsys, argv, pattern)
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_that_fits_still_loads(tmp_path, capsys):
    path = _external_model(tmp_path, length=64)
    assert cli.main(["optimize", str(path), "--passes", "fold", "-o", str(tmp_path / "o.onnx")]) == 0


def test_a_sequence_output_model_is_refused_by_every_verb(tmp_path, capsys):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    seq = oh.make_tensor_sequence_value_info("s", onnx.TensorProto.FLOAT, None)
    model = oh.make_model(oh.make_graph([oh.make_node("SplitToSequence", ["x"], ["s"], axis=0)], "g", [x], [seq]),
                          opset_imports=[oh.make_opsetid("", 17)])
    path = tmp_path / "seq.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()
    labels = tmp_path / "d.npz"
    np.savez(labels, x=np.zeros((2, 3), np.float32), labels=np.zeros(2, np.int64))
    for argv in (["optimize", str(path), "--passes", "prune:0.3", "-o", str(tmp_path / "o.onnx")],
                 ["optimize", str(path), "--passes", "fold", "-o", str(tmp_path / "o.onnx")],
                 ["inspect", str(path)], ["bench", str(path)], ["eval", str(path), "--data", str(labels), "--metric", "top1"]):
        one_line(capsys, argv, "graph output 's' is a sequence, not a tensor")
    assert path.read_bytes() == before and not (tmp_path / "o.onnx").exists()
