"""``sparsify`` through the command line: ``graphc optimize`` and ``graphc inspect --sparsity``.

- The input model (and its external data) is never modified by
  ``graphc optimize IN --passes sparsify:0.5 -o OUT``; two runs write the same bytes.
- Order: ``int8,sparsify`` exits 2 with the one-line reason before anything is loaded;
  ``sparsify:0.5,prune:0.3`` runs in onnxruntime and every surviving weight is the
  sparsified weight sliced (so its zeros stay zero, sparsity still about 0.5);
  ``sparsify,int8`` keeps every zero exactly zero (int8 weight 0, zero point 0), also for the
  2:4 pattern, which ``graphc inspect --sparsity --json`` still reports as conforming.
- ``graphc inspect --sparsity`` (text and ``--json``): per-layer sparsity, conformance yes for
  the requested pattern, no for another, empty / absent for a dense layer.
- Bad options and missing ``--data``: exit 2 with one line, no output written.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

from graphc.cli import main
from graphc.model_io import external_data_files, load_model
from graphc.runtime import open_session
from tests import topologies
from tests.sparsify import oracle

CASES = [pytest.param(name, False, id=f"{name}-torchscript") for name in ("resnet", "gpt")] + [
    pytest.param(name, True, id=f"{name}-dynamo", marks=pytest.mark.slow) for name in ("resnet", "bert", "vit")]


def _digests(path) -> dict[str, str]:
    files = [path, *external_data_files(path)]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _optimize(source, out, passes, *extra) -> int:
    return main(["optimize", str(source), "--passes", passes, "-o", str(out), *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("graphc optimize: error: ")
    return err


@pytest.mark.parametrize("name,dynamo", CASES)
def test_input_model_is_never_modified_and_runs_repeat(name, dynamo, onnx_model, tmp_path):
    source = onnx_model(name, dynamo=dynamo)
    if dynamo:
        assert external_data_files(source), "a dynamo export keeps its weights beside the model"
    before = _digests(source)
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert _optimize(source, first, "sparsify:0.5") == 0
    assert _optimize(source, second, "sparsify:0.5") == 0
    assert _digests(source) == before
    assert first.read_bytes() == second.read_bytes()
    original, sparse = oracle.initializers(load_model(source)), oracle.initializers(load_model(first))
    shares = [float((sparse[n] == 0).mean()) for n in oracle.float_layers(load_model(source))
              if original[n].size >= 1024]
    assert shares and all(s == pytest.approx(0.5, abs=1e-3) for s in shares)


def test_sparsify_after_int8_is_refused_before_anything_runs(onnx_model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert _optimize(onnx_model("resnet"), out, "int8,sparsify:0.5") == 2
    err = _one_error_line(capsys)
    assert "sparsify after int8 is refused" in err and "sparsify:0.5,int8" in err
    assert not out.exists()
    # checked before the model is read: a missing model gives the same reason
    assert _optimize(tmp_path / "missing.onnx", out, "int8,sparsify:0.5") == 2
    assert "sparsify after int8 is refused" in _one_error_line(capsys)


def _slice_of(sparse: np.ndarray, pruned: np.ndarray):
    """The output / input channel indices with ``pruned == sparse[outs][:, ins]``, found from
    the non-zero values that occur once; asserts that every value of ``pruned`` is that slice."""
    where: dict[bytes, list[tuple]] = {}
    for i in np.argwhere(sparse != 0):
        where.setdefault(sparse[tuple(i)].tobytes(), []).append(tuple(i))
    outs, ins = {}, {}
    for index in np.argwhere(pruned != 0):
        found = where[pruned[tuple(index)].tobytes()]
        if len(found) > 1:  # a float32 value that occurs twice says nothing about the position
            continue
        (found,) = found
        assert found[2:] == tuple(index[2:])
        assert outs.setdefault(index[0], found[0]) == found[0]
        assert ins.setdefault(index[1], found[1]) == found[1]
    outs = [outs[i] for i in range(pruned.shape[0])]
    ins = [ins[i] for i in range(pruned.shape[1])]
    assert outs == sorted(outs) and ins == sorted(ins)
    np.testing.assert_array_equal(pruned, sparse[np.ix_(outs, ins)])
    return outs, ins


def test_sparsify_then_prune_keeps_the_zeros(onnx_model, tmp_path):
    source = onnx_model("resnet")
    sparse_path, both = tmp_path / "sparse.onnx", tmp_path / "both.onnx"
    assert _optimize(source, sparse_path, "sparsify:0.5") == 0
    assert _optimize(source, both, "sparsify:0.5,prune:0.3") == 0
    feeds = topologies.sample_inputs("resnet", batch=3, seed=5)
    logits = open_session(both).run(None, feeds)[0]
    assert logits.shape == (3, topologies.NUM_CLASSES) and np.isfinite(logits).all()
    sparse_model, pruned_model = load_model(sparse_path), load_model(both)
    sparse = oracle.float_layers(sparse_model)
    pruned = {layer.node: layer for layer in oracle.float_layers(pruned_model).values()}
    narrowed = 0
    for layer in sparse.values():
        kept = pruned[layer.node].weight
        assert kept.ndim == layer.weight.ndim
        _slice_of(layer.weight if layer.weight.ndim > 2 else layer.weight[..., None],
                  kept if kept.ndim > 2 else kept[..., None])
        narrowed += kept.shape != layer.weight.shape
        if layer.weight.size >= 1024:  # sparsified by sparsify:0.5
            assert float((kept == 0).mean()) == pytest.approx(0.5, abs=0.05), layer.node
    assert narrowed >= 3  # prune did remove channels


def _int8_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Node name -> (int8 weight, zero point) of each Conv/Gemm/MatMul whose weight is the
    output of a DequantizeLinear of initializers."""
    inits = oracle.initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if node.op_type in ("Conv", "Gemm", "MatMul") else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            zero_point = inits[dq.input[2]] if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int8)
            found[node.name] = (inits[dq.input[0]], zero_point)
    return found


@pytest.mark.parametrize("pattern", ["0.5", "pattern=2:4"])
def test_sparsify_then_int8_keeps_zeros_exactly_zero(pattern, onnx_model, tmp_path, capsys):
    source = onnx_model("resnet")
    sparse_path, both = tmp_path / "sparse.onnx", tmp_path / "int8.onnx"
    assert _optimize(source, sparse_path, f"sparsify:{pattern}") == 0
    assert _optimize(source, both, f"sparsify:{pattern},int8:speed_guard=false") == 0
    capsys.readouterr()
    sparse = {layer.node: layer for layer in oracle.float_layers(load_model(sparse_path)).values()}
    quantized = _int8_weights(load_model(both))
    assert set(quantized) == set(sparse)
    sparsified = 0
    for node, (q, zero_point) in quantized.items():
        weight = sparse[node].weight
        assert q.dtype == np.int8 and q.shape == weight.shape
        assert not zero_point.any()
        assert (q[weight == 0] == 0).all(), node
        sparsified += int((weight == 0).any())
    assert sparsified == 6  # the 3x3 Convs of the blocks; stem, shortcut and head are under min_size
    assert main(["inspect", str(both), "--sparsity", "--json"]) == 0
    rows = {r["node"]: r for r in json.loads(capsys.readouterr().out)["sparsity"]}
    for node, layer in sparse.items():
        share = float((layer.weight == 0).mean())
        assert rows[node]["sparsity"] >= round(share, 4) - 1e-4
        if share and pattern == "pattern=2:4":
            assert rows[node]["conforms"]["2:4"] is True


def _inspect(path, capsys, *extra) -> str:
    assert main(["inspect", str(path), "--sparsity", *extra]) == 0
    return capsys.readouterr().out


def _table(text: str) -> dict[str, dict[str, str]]:
    """The ``--sparsity`` markdown table: node -> column -> cell."""
    lines = text[text.index("\nsparsity: "):].strip().splitlines()[1:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.parametrize("pattern,own,other", [("pattern=2:4", "2:4", "1x4"),
                                               ("pattern=block:block=4x1", "4x1", "2:4")])
def test_inspect_reports_sparsity_and_conformance(pattern, own, other, onnx_model, tmp_path, capsys):
    out, report = tmp_path / "sparse.onnx", tmp_path / "report.json"
    assert _optimize(onnx_model("resnet"), out, f"sparsify:{pattern}", "--report", str(report)) == 0
    capsys.readouterr()
    details = json.loads(report.read_text())["passes"][0]["details"]
    sparse_layers = {r["layer"]: r["sparsity"] for r in details["layers"]}
    dense_layers = {r["layer"] for r in details["dense"]}
    assert sparse_layers and dense_layers
    rows = json.loads(_inspect(out, capsys, "--json"))["sparsity"]
    assert {r["weight"] for r in rows} == set(sparse_layers) | dense_layers
    nodes = {}
    weights = oracle.initializers(load_model(out))
    for row in rows:
        nodes[row["node"]] = row["weight"]
        if row["weight"] in sparse_layers:
            assert row["sparsity"] == sparse_layers[row["weight"]] == pytest.approx(0.5, abs=1e-3)
            assert row["sparsity"] == round(float((weights[row["weight"]] == 0).mean()), 4)
            assert row["conforms"][own] is True and row["conforms"][other] is False
        else:
            assert row["sparsity"] == 0.0 and row["conforms"].get(own) is None
    text = _inspect(out, capsys)
    assert f"sparsity: {len(rows)} layers, {len(sparse_layers)} with zeros" in text
    table = _table(text)
    assert set(table) == set(nodes)
    for node, weight in nodes.items():
        cells = table[node]
        if weight in sparse_layers:
            assert (cells[own], cells[other], cells["sparsity"]) == ("yes", "no", "50.0%")
        else:
            assert (cells[own], cells["sparsity"]) == ("", "0.0%")
    dense = _table(_inspect(onnx_model("resnet"), capsys))
    assert dense and all(c["sparsity"] == "0.0%" and c["2:4"] == c["1x4"] == "" for c in dense.values())


@pytest.mark.parametrize("spec,words", [
    ("sparsify:pattern=3:2", "pattern='3:2' is not unstructured, block, or N:M with 0 < N < M"),
    ("sparsify:pattern=block:block=0x4", "block='0x4' is not RxC"),
    ("sparsify:0.3:pattern=2:4", "ratio=0.3 contradicts it"),
    ("sparsify:block=4x1", "block=4x1 is read only with pattern=block"),
    ("sparsify:by=wanda", "sparsify:by=wanda needs --data"),
    ("sparsify:recalibrate=true", "sparsify:recalibrate=true needs --data"),
    ("sparsify:by=random", "sparsify:by: 'random' is not one of magnitude, wanda"),
])
def test_bad_options_exit_2_with_one_line(spec, words, onnx_model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert _optimize(onnx_model("resnet"), out, spec) == 2
    assert words in _one_error_line(capsys)
    assert not out.exists()


def test_wanda_through_the_cli_reads_data(onnx_model, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, **topologies.sample_inputs("resnet", batch=4, seed=2))
    out, magnitude = tmp_path / "wanda.onnx", tmp_path / "magnitude.onnx"
    assert _optimize(onnx_model("resnet"), out, "sparsify:by=wanda", "--data", str(data)) == 0
    assert _optimize(onnx_model("resnet"), magnitude, "sparsify:0.5") == 0
    capsys.readouterr()
    wanda, plain = oracle.initializers(load_model(out)), oracle.initializers(load_model(magnitude))
    layers = [n for n, w in plain.items() if n in oracle.float_layers(load_model(magnitude)) and (w == 0).any()]
    assert layers
    assert all(float((wanda[n] == 0).mean()) == pytest.approx(0.5, abs=1e-3) for n in layers)
    assert any(((wanda[n] == 0) != (plain[n] == 0)).any() for n in layers)
