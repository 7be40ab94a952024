"""Model loading and saving: validation, external data confinement, atomic writes."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphc import cli
from graphc.errors import GraphcError
from graphc.model_io import file_size, load_model, save_model
from graphc.pass_api import Pass, PassResult
from graphc.verify import Tolerance
from graphc.passes import PASSES
from tests import CNN



def matmul_model(rows=64) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_external_data_loads_and_is_counted_in_size(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(matmul_model(), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    model = load_model(path)
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (64, 8)
    assert file_size(path) == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path, location):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "outside.data").write_bytes(b"\0" * 64 * 8 * 4)
    model = matmul_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    path = model_dir / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(GraphcError, match="outside the model's directory; refused"):
        load_model(path)


def test_missing_external_data_file_is_named(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(matmul_model(), str(path), save_as_external_data=True, location="w.data", size_threshold=0)
    (tmp_path / "w.data").unlink()
    with pytest.raises(GraphcError, match="external data file 'w.data' of tensor 'w' not found"):
        load_model(path)


def test_structurally_invalid_model_is_refused(tmp_path):
    model = matmul_model()
    model.graph.node[0].input[1] = "nowhere"
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(GraphcError, match="bad.onnx: invalid ONNX model"):
        load_model(path)


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "out.onnx"
    save_model(matmul_model(), path)
    assert onnx.load(str(path)).graph.node[0].op_type == "MatMul"
    save_model(matmul_model(rows=32), path)  # replaces in place
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 32
    assert sorted(os.listdir(path.parent)) == ["out.onnx"]


def test_save_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.onnx"
    save_model(matmul_model(), path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(GraphcError, match="cannot write the model: disk full"):  # one line, exit 2
        save_model(matmul_model(rows=32), path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["out.onnx"]


class PerturbPass(Pass):
    """Scales every float initializer by 1.01: outside a 1e-4 tolerance (test only)."""

    name = "perturb"
    summary = "test only"
    in_place = True

    def tolerance(self):
        return Tolerance(max_rel_error=1e-4)

    def run(self, graph, ctx):
        import onnx_graphsurgeon as gs

        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32 and tensor.values.size > 1:
                tensor.values = tensor.values * np.float32(1.01)
        return PassResult(changed=True)


def test_verify_stops_a_pass_beyond_its_tolerance(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PASSES, "perturb", PerturbPass)
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", str(CNN), "--passes", "fold,perturb", "--verify", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--verify: pass perturb moved output 'logits' by" in err and "above its tolerance 0.0001; stopped" in err
    assert not out.exists()
    # without --verify the same pipeline runs: verification is what stopped it
    assert cli.main(["optimize", str(CNN), "--passes", "fold,perturb", "-o", str(out), "--quiet"]) == 0
    assert out.exists()


class ExactPerturbPass(PerturbPass):
    """The same change from a pass that declares itself exact (test only)."""

    name = "exact-perturb"
    exact = True


def test_an_exact_pass_that_changes_outputs_is_a_bug_even_without_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PASSES, "exact-perturb", ExactPerturbPass)
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", str(CNN), "--passes", "fold,exact-perturb", "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass exact-perturb is exact but changed the outputs on 2 sample rows" in err
    assert not out.exists()


def test_verify_holds_each_pass_to_its_own_input(tmp_path, capsys):
    """prune changes outputs by design; the exact fold after it must still pass --verify,
    while the report keeps showing each stage against the original."""
    import json

    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert cli.main(["optimize", str(CNN), "--passes", "prune:0.5,fold", "--verify", "-o", str(out),
                     "--report", str(report), "--quiet"]) == 0
    prune, fold = json.loads(report.read_text())["passes"]
    assert prune["verify"][0]["cosine"] < 0.99  # far from the original...
    assert abs(fold["verify"][0]["cosine"] - prune["verify"][0]["cosine"]) < 1e-5  # ...and fold adds nothing
