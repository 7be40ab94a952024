"""The command line end to end (subprocess) on the bundled Fashion-MNIST CNN, and bad input."""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from graphc import cli
from graphc.errors import GraphcError
from graphc.pass_api import Pass, PassResult
from graphc.passes import PASSES
from tests import CNN, ROOT, assert_one_line_error

TEST_SPLIT = ROOT / "models" / "fashion_mnist_test.npz"


def graphc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def digest(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """The first 512 test images, for fast end-to-end runs."""
    with np.load(TEST_SPLIT) as npz:
        path = tmp_path_factory.mktemp("data") / "test512.npz"
        np.savez(path, image=npz["image"][:512], labels=npz["labels"][:512])
    return path


def test_optimize_fold_verify_writes_model_report_and_keeps_top1(tmp_path, small_split):
    out, report = tmp_path / "out" / "cnn.fold.onnx", tmp_path / "report.json"
    before = digest(CNN)
    run = graphc("optimize", CNN, "--passes", "fold", "--verify", "--data", small_split,
                 "--eval-data", small_split, "--metric", "top1", "-o", out, "--report", report)
    assert run.returncode == 0, run.stderr
    assert digest(CNN) == before
    assert "| fold" in run.stdout and "top1: before" in run.stdout
    data = json.loads(report.read_text())
    (fold,) = data["passes"]
    assert fold["stats"]["bn_folded"] == 7
    assert data["after"]["ops"].get("BatchNormalization") is None and data["after"]["nodes"] < data["before"]["nodes"]
    assert max(v["max_rel_error"] for v in fold["verify"]) < 1e-4
    assert data["metrics"]["top1"]["before"] == data["metrics"]["top1"]["after"] > 0.85
    assert data["after"]["macs"] == data["before"]["macs"] > 0

    for model in (CNN, out):  # the eval verb agrees with the report, on both models
        evaluated = graphc("eval", model, "--data", small_split, "--metric", "top1")
        assert evaluated.returncode == 0, evaluated.stderr
        assert float(re.search(r"top1: ([0-9.]+)", evaluated.stdout).group(1)) == pytest.approx(
            data["metrics"]["top1"]["before"], abs=1e-4)


def test_inspect_prints_signature_params_and_macs():
    run = graphc("inspect", CNN)
    assert run.returncode == 0, run.stderr
    assert "image: uint8 ['batch', 1, 28, 28]" in run.stdout and "logits: float32 ['batch', 10]" in run.stdout
    info = json.loads(graphc("inspect", CNN, "--json").stdout)
    bn_channels = 24 + 32 + 32 + 32 + 64 + 64 + 64
    assert info["params"] == 118_994 + 2 * bn_channels  # torch's parameters + BN running mean/var
    conv_macs = 28 * 28 * 24 * 9 + 14 * 14 * 32 * 24 * 9 + 2 * 14 * 14 * 32 * 32 * 9 \
        + 7 * 7 * 64 * 32 * 9 + 2 * 7 * 7 * 64 * 64 * 9
    assert info["macs_by_op"] == {"Conv": conv_macs, "Gemm": 64 * 10}


def test_prune_end_to_end_with_bench_and_prune_groups(tmp_path, small_split):
    out, report = tmp_path / "cnn.pruned.onnx", tmp_path / "r.json"
    run = graphc("optimize", CNN, "--passes", "fold,prune:ratio=0.5:round_to=8", "--bench", "--threads", "1",
                 "--eval-data", small_split, "--metric", "top1", "-o", out, "--report", report)
    assert run.returncode == 0, run.stderr
    assert "latency p50 (batch 1, interleaved)" in run.stdout
    data = json.loads(report.read_text())
    prune = data["passes"][1]
    assert prune["stats"]["groups_pruned"] == 5 and data["latency"]["after_p50_ms"] > 0
    assert data["after"]["params"] < 0.6 * data["before"]["params"]
    assert all((g["units"] - g["removed"]) % 8 == 0 for g in prune["details"]["groups"] if not g["blocked"])
    assert 0.1 < data["metrics"]["top1"]["after"] < data["metrics"]["top1"]["before"]
    groups = graphc("inspect", CNN, "--prune-groups")
    assert groups.returncode == 0, groups.stderr
    assert "prune groups: 6 (5 prunable)" in groups.stdout
    assert "blocked: reaches graph output 'logits'" in groups.stdout


def test_bench_two_models_one_table(tmp_path):
    run = graphc("bench", CNN, CNN, "--runs", "5", "--warmup", "1", "--threads", "1", "--batch", "4",
                 "--json", tmp_path / "b.json")
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"\| [12] ", line)]
    assert len(rows) == 2 and "1.00x" in rows[0]
    results = json.loads((tmp_path / "b.json").read_text())
    assert [r["runs"] for r in results] == [5, 5] and all(r["p50_ms"] > 0 for r in results)


def _bad_files(tmp_path) -> dict[str, pathlib.Path]:
    good = CNN.read_bytes()
    files = {"truncated": good[: len(good) // 2], "random": np.random.default_rng(0).bytes(4096),
             "text": b"hello, this is not a model\n" * 20, "empty": b""}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize("kind", ["truncated", "random", "text", "empty"])
def test_bad_model_files_fail_cleanly(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    before = digest(path)
    out = tmp_path / "out.onnx"
    assert_one_line_error(graphc("optimize", path, "--passes", "fold", "-o", out),
                          rf"{kind}.onnx: (not a valid ONNX model|not an ONNX model|empty file|invalid ONNX model)")
    assert_one_line_error(graphc("inspect", path), rf"{kind}.onnx")
    assert digest(path) == before and not out.exists()


def _wrong_data(tmp_path):
    with np.load(TEST_SPLIT) as npz:
        images = npz["image"][:8]
    np.savez(tmp_path / "name.npz", pixels=images)
    np.savez(tmp_path / "shape.npz", image=images[:, :, :20, :])
    np.savez(tmp_path / "dtype.npz", image=images.astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("args, pattern", [
    (["missing.onnx", "--passes", "fold"], "missing.onnx: no such file"),
    (["{cnn}", "--passes", "fold,shrink"], r"unknown pass 'shrink' \(passes: .*fold"),
    (["{cnn}", "--passes", "fold:bn=perhaps"], "fold:bn: 'perhaps' is not a valid bool"),
    (["{cnn}", "--passes", "fold:sizes=3"], r"has no option 'sizes' \(options: constants, bn, size_threshold\)"),
    (["{cnn}", "--passes", "fold", "--data", "{tmp}/name.npz"], r"'pixels' is not an input of the model \(inputs: image"),
    (["{cnn}", "--passes", "fold", "--data", "{tmp}/shape.npz"],
     r"input 'image' has shape \[8, 1, 20, 28\], the model expects \[batch, 1, 28, 28\]"),
    (["{cnn}", "--passes", "fold", "--data", "{tmp}/dtype.npz"], "input 'image' has dtype float32, the model expects uint8"),
    (["{cnn}", "--passes", "fold", "--eval-data", "{tmp}/name.npz"], "'pixels' is not an input"),
    (["{cnn}", "--passes", "fold", "--metric", "top1"], "--eval-data and --metric go together"),
    (["{cnn}", "--passes", "fold", "--threads", "0"], "--threads must be a positive integer"),
    (["{cnn}", "--passes", "fold", "--shape", "image=1x1"], "does not fit the model's input"),
])
def test_bad_arguments_fail_with_one_line(tmp_path, args, pattern):
    data_dir = _wrong_data(tmp_path)
    before = digest(CNN)
    out = tmp_path / "out.onnx"
    args = [a.format(cnn=CNN, tmp=data_dir) for a in args]
    assert_one_line_error(graphc("optimize", *args, "-o", out), pattern)
    assert digest(CNN) == before and not out.exists()


def test_usage_errors_are_one_line_too(tmp_path):
    assert_one_line_error(graphc("optimize", CNN), "the following arguments are required: --passes")
    assert_one_line_error(graphc("eval", CNN, "--data", TEST_SPLIT, "--metric", "f1"), "invalid choice: 'f1'")
    assert_one_line_error(graphc("optimize", CNN, "--passes", "fold", "-o", CNN), "must not overwrite the input")


class ExplodingPass(Pass):
    name = "explode"
    summary = "raises halfway (test only)"
    in_place = True

    def run(self, graph, ctx) -> PassResult:
        raise GraphcError("exploded on purpose")


def test_failing_pass_leaves_no_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PASSES, "explode", ExplodingPass)
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", str(CNN), "--passes", "fold,explode", "-o", str(out)]) == 2
    assert "exploded on purpose" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_pass_and_option():
    run = graphc("optimize", "--help")
    assert run.returncode == 0
    for name, cls in PASSES.items():
        assert f"  {name}: {cls.summary}" in run.stdout
    assert "NAME:KEY=VALUE" in run.stdout and "size_threshold=int" in run.stdout


def test_bench_feeds_fill_the_batch_when_data_has_fewer_rows(tmp_path):
    from graphc.bench import _feeds_for
    from graphc.model_io import load_model

    images = np.random.default_rng(0).integers(0, 255, (3, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "three.npz", image=images)
    feeds = _feeds_for([load_model(CNN)], tmp_path / "three.npz", {}, batch=8)
    assert feeds["image"].shape == (8, 1, 28, 28)
    np.testing.assert_array_equal(feeds["image"][:3], images)
    np.testing.assert_array_equal(feeds["image"][3:6], images)
    assert _feeds_for([load_model(CNN)], tmp_path / "three.npz", {}, batch=2)["image"].shape[0] == 2
