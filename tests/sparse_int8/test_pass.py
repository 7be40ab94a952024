"""``sparse-int8``: quantized layers with sparse int8 weights become graphc's sparse op.

- Dynamic form (transformers: bert, gpt): ``sparsify,int8,sparse-int8`` gives exactly the
  outputs of ``sparsify,int8`` (the same integers and float32 operations; compared with
  onnxruntime's graph optimizations off, which would otherwise fuse only the dense model's
  nodes, and within float rounding with them on), every MatMulInteger with a sparse weight is
  lowered with its Cast and scale Mul into ``SparseMatMulIntegerToFloat`` and its compressed
  weight unpacks to the int8 weight it replaced.
- Static QDQ form (mlp_bn's Gemm layers): within float rounding of the dense QDQ model.
- Layers that do not pay off or cannot be lowered stay dense, each with its reason.
- Order: ``sparse-int8`` before ``int8`` or ``sparsify`` exits 2 with one line.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphc.cli import main
from graphc.kernels import DOMAIN, WEIGHT_INPUTS
from graphc.kernels.layout import BlockColumns
from graphc.model_io import load_model
from graphc.runtime import open_session

SPARSE = "fold,sparsify:0.8:pattern=block:block=1x4"  # fold: the exports' weights are Transposes
INT8 = "int8:speed_guard=false"


def optimize(source, out, passes, *extra) -> int:
    return main(["optimize", str(source), "--passes", passes, "-o", str(out), *extra])


def outputs(path, feeds, optimized=True):
    return open_session(path, threads=2, optimized=optimized).run(None, feeds)


def lowered_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_INPUTS:
            assert node.domain == DOMAIN
            k = next(a.i for a in node.attribute if a.name == "K")
            first = WEIGHT_INPUTS[node.op_type]
            col_ptr, block_k, values = (inits[name] for name in node.input[first:first + 3])
            found[node.name] = BlockColumns(k, col_ptr.size - 1, col_ptr, block_k, values).dense()
    return found


@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_dynamic_form_gives_the_same_integers(name, onnx_model, sample_inputs, tmp_path, capsys):
    source = onnx_model(name)
    dense, sparse = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    assert optimize(source, dense, f"{SPARSE},{INT8}") == 0
    assert optimize(source, sparse, f"{SPARSE},{INT8},sparse-int8", "--report", str(tmp_path / "r.json")) == 0
    capsys.readouterr()
    dense_model, sparse_model = load_model(dense), load_model(sparse)
    integer = [n for n in dense_model.graph.node if n.op_type == "MatMulInteger"]
    weights = {t.name: numpy_helper.to_array(t) for t in dense_model.graph.initializer}
    sparse_weights = [weights[n.input[1]] for n in integer if (weights[n.input[1]] == 0).mean() > 0.5]
    lowered = lowered_weights(sparse_model)
    assert len(lowered) == len(sparse_weights) > 0
    remaining = {n.input[1] for n in sparse_model.graph.node if n.op_type == "MatMulInteger"}
    assert all((weights[w] == 0).mean() <= 0.5 for w in remaining)  # what stays dense is the dense layers
    assert sorted(w.tobytes() for w in lowered.values()) == sorted(w.tobytes() for w in sparse_weights)
    # the Cast -> Mul (-> Add) after each MatMulInteger went into the op (rule 1)
    assert {n.op_type for n in sparse_model.graph.node if n.domain == DOMAIN} == {"SparseMatMulIntegerToFloat"}
    feeds = sample_inputs(name)
    for a, b in zip(outputs(dense, feeds, optimized=False), outputs(sparse, feeds, optimized=False)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(outputs(dense, feeds), outputs(sparse, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    assert main(["inspect", str(sparse), "--sparsity", "--json"]) == 0  # read back from the compressed form
    rows = [r for r in json.loads(capsys.readouterr().out)["sparsity"] if r["op"] in WEIGHT_INPUTS]
    assert sorted(r["sparsity"] for r in rows) == sorted(round(float((w == 0).mean()), 4) for w in lowered.values())
    report = json.loads((tmp_path / "r.json").read_text())
    stats = report["passes"][-1]["stats"]
    assert stats["layers_lowered"] == len(lowered)
    # MACs: a lowered layer counts the kernel's work, rows x 4 x kept 4-groups: about 20% of its dense MACs
    before, after = report["passes"][-2]["after"]["macs"], report["passes"][-1]["after"]["macs"]
    assert 0 < after < before
    assert stats["weight_bytes"][1] < 0.5 * stats["weight_bytes"][0]  # 80% of 4-groups gone: values + indices


def test_static_form_within_float_rounding(onnx_model, sample_inputs, tmp_path, capsys):
    source = onnx_model("mlp_bn")
    dense, sparse = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    sparsify = "sparsify:0.8:pattern=block:block=1x4:min_size=0"
    assert optimize(source, dense, f"{sparsify},{INT8}") == 0
    assert optimize(source, sparse, f"{sparsify},{INT8},sparse-int8") == 0
    capsys.readouterr()
    model = load_model(sparse)
    assert len(lowered_weights(model)) == 2
    assert not [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    feeds = sample_inputs("mlp_bn")
    for a, b in zip(outputs(dense, feeds), outputs(sparse, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_layers_that_do_not_pay_off_stay_dense_with_the_reason(onnx_model, tmp_path, capsys):
    source = onnx_model("bert")
    out = tmp_path / "out.onnx"
    assert optimize(source, out, f"{INT8},sparse-int8", "--report", str(tmp_path / "r.json")) == 0
    captured = capsys.readouterr().out
    assert "stay dense" in captured and "denser than max_density=0.5" in captured
    report = json.loads((tmp_path / "r.json").read_text())
    layers = report["passes"][-1]["details"]["layers"]
    assert layers and all("4-groups hold a non-zero" in row["dense"] for row in layers)
    assert report["passes"][-1]["stats"]["layers_lowered"] == 0
    assert not lowered_weights(load_model(out))


def test_quantized_conv_stays_dense_with_the_reason(tmp_path, capsys):
    source = "models/fashion_cnn.onnx"
    out = tmp_path / "out.onnx"
    assert optimize(source, out, f"sparsify:0.8,{INT8},sparse-int8", "--data", "models/fashion_mnist_calib.npz",
                    "--report", str(tmp_path / "r.json")) == 0
    capsys.readouterr()
    layers = json.loads((tmp_path / "r.json").read_text())["passes"][-1]["details"]["layers"]
    convs = [row for row in layers if row["op"] == "Conv"]
    assert len(convs) == 7 and all(row["dense"] == "Conv (no sparse Conv kernel yet)" for row in convs)


@pytest.mark.parametrize("passes,words", [
    ("sparse-int8,int8", "put it after int8"),
    ("int8,sparse-int8,sparsify:0.5", "sparsify after sparse-int8 is refused"),
    ("int8,sparse-int8,prune:0.3", "prune after sparse-int8 is refused"),
])
def test_order_is_refused_before_anything_runs(passes, words, onnx_model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert optimize(onnx_model("bert"), out, passes) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not out.exists()
