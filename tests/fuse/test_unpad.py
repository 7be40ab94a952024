"""``fuse`` rule 5 (passes/fuse/unpad.py): the layers between the embeddings and the head run
on the tokens only, where the model's outputs stay the same; kept padding otherwise."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest

from graphc import cli
from graphc.runtime import open_session
from tests.fuse.exports import export_tiny_embedder, padded_rows


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedders")
    cache = {}

    def get(dynamo: bool = False, hidden_states: bool = False):
        key = (dynamo, hidden_states)
        if key not in cache:
            cache[key] = export_tiny_embedder(root / f"embedder-{int(dynamo)}-{int(hidden_states)}.onnx", dynamo,
                                              hidden_states)
        return cache[key]
    return get


def _optimize(path, out, passes="fold,fuse:norms=off"):
    report = out.with_suffix(".json")
    code = cli.main(["optimize", str(path), "--passes", passes, "-o", str(out), "--report", str(report), "--quiet"])
    return code, json.loads(report.read_text()) if report.exists() else {}


def _fuse_stats(report):
    return next(p for p in report["passes"] if p["name"].startswith("fuse"))["stats"]


def _feeds(sample_inputs, batch=8, seq=20):
    return padded_rows(sample_inputs("bert", batch=batch, seq=seq))


def _max_rel(want, got):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_rule_5_a_mean_pooled_embedder_runs_on_its_tokens_and_keeps_its_outputs(dynamo, embedder, sample_inputs,
                                                                                tmp_path):
    source, out = embedder(dynamo), tmp_path / "unpadded.onnx"
    code, report = _optimize(source, out)
    assert code == 0 and _fuse_stats(report)["unpadded"] is True
    ops = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["GatherND"] == 2  # the tokens gathered once at the entry, the exit scattered back once
    for batch, seq in ((8, 20), (1, 20), (3, 7)):
        feeds = _feeds(sample_inputs, batch, seq)
        want = open_session(source).run(None, feeds)[0]
        got = open_session(out).run(None, feeds)[0]
        assert _max_rel(want, got) < 1e-5, (batch, seq)


def test_rule_5_a_row_without_tokens_runs_and_the_others_keep_their_outputs(embedder, sample_inputs, tmp_path):
    source, out = embedder(), tmp_path / "unpadded.onnx"
    assert _optimize(source, out)[0] == 0
    feeds = _feeds(sample_inputs, 4)
    feeds["attention_mask"][3] = 0
    want = open_session(source).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert np.all(np.isfinite(got)) and _max_rel(want[:3], got[:3]) < 1e-5


def test_rule_5_a_head_reading_padded_positions_keeps_the_padding_with_a_note(embedder, sample_inputs, tmp_path):
    source, out = embedder(hidden_states=True), tmp_path / "fused.onnx"
    code, report = _optimize(source, out)
    assert code == 0 and _fuse_stats(report)["unpadded"] is False and _fuse_stats(report)["fused"] == 2
    assert any("padding kept: output 'embedding' reads padded positions" in n for n in report["notes"])
    feeds = _feeds(sample_inputs)
    assert _max_rel(open_session(source).run(None, feeds)[0], open_session(out).run(None, feeds)[0]) < 1e-5


def test_rule_5_a_first_token_classifier_unpads_for_right_padding_only(onnx_model, sample_inputs, tmp_path):
    source = onnx_model("bert")
    code, report = _optimize(source, tmp_path / "any.onnx")
    assert code == 0 and _fuse_stats(report)["unpadded"] is False  # a left-padded row's first token is padding
    out = tmp_path / "right.onnx"
    code, report = _optimize(source, out, "fold,fuse:norms=off:padding=right")
    assert code == 0 and _fuse_stats(report)["unpadded"] is True
    feeds = _feeds(sample_inputs, 8)
    right = [r for r in range(8) if r % 4 in (0, 1)]  # full and right-padded rows
    feeds = {k: v[right] for k, v in feeds.items()}
    want = open_session(source).run(None, feeds)[0]
    assert _max_rel(want, open_session(out).run(None, feeds)[0]) < 1e-5


def test_rule_5_off_keeps_every_position(embedder, tmp_path):
    code, report = _optimize(embedder(), tmp_path / "fused.onnx", "fold,fuse:norms=off:unpad=false")
    assert code == 0 and _fuse_stats(report)["unpadded"] is False
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node)
    assert ops["GatherND"] == 4  # each layer's keys and values


def test_rule_4_a_fixed_batch_of_one_is_probed_on_a_left_padded_row(onnx_model, sample_inputs, tmp_path):
    model = onnx.load(str(onnx_model("bert")))
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    source, data, out = tmp_path / "batch1.onnx", tmp_path / "data.npz", tmp_path / "fused.onnx"
    onnx.save(model, str(source))
    np.savez(data, **sample_inputs("bert", batch=4, seq=12))
    report = out.with_suffix(".json")
    assert cli.main(["optimize", str(source), "--passes", "fold,fuse:norms=off", "--data", str(data), "-o", str(out),
                     "--report", str(report), "--quiet"]) == 0
    stats = _fuse_stats(json.loads(report.read_text()))
    assert stats["fused"] == 2 and stats["unpadded"] is False  # the first token of a left-padded row is padding
    feeds = {k: v[2:3] for k, v in _feeds(sample_inputs, 4, 12).items()}  # row 2: left-padded
    assert _max_rel(open_session(source).run(None, feeds)[0], open_session(out).run(None, feeds)[0]) < 1e-5
