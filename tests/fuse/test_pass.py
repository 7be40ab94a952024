"""``fuse`` as a pass: rule 6 (norms) on top of the attention rules, by option and by measurement."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest

from graphc import cli
from graphc.passes import fuse as fuse_pass
from graphc.runtime import open_session
from tests.fuse.exports import padded_rows


def _optimize(path, out, passes):
    report = out.with_suffix(".json")
    code = cli.main(["optimize", str(path), "--passes", passes, "-o", str(out), "--report", str(report), "--quiet"])
    return code, json.loads(report.read_text()) if report.exists() else {}


def _ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_rule_6_norms_on_rewrites_every_residual_norm_exactly(onnx_model, sample_inputs, tmp_path):
    source, out = onnx_model("bert"), tmp_path / "fused.onnx"
    code, report = _optimize(source, out, "fold,fuse:norms=on")
    assert code == 0
    assert _ops(out)["SkipLayerNormalization"] == 4 and _ops(out)["GroupQueryAttention"] == 2
    feeds = padded_rows(sample_inputs("bert", batch=8, seq=12))
    want, got = (open_session(p).run(None, feeds)[0] for p in (source, out))
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5


@pytest.mark.parametrize("faster", ["fused", "unfused"])
def test_rule_6_auto_keeps_the_norms_only_when_measured_faster(faster, onnx_model, tmp_path, monkeypatch):
    timed = []

    def measured(models, feeds, threads, **kwargs):
        timed.append(sorted(models))
        assert all(np.shape(v)[0] == 1 for v in feeds.values())  # batch 1
        return faster, {"unfused": 100.0, "fused": 90.0 if faster == "fused" else 110.0}

    monkeypatch.setattr(fuse_pass, "faster_variant", measured)
    out = tmp_path / "fused.onnx"
    code, report = _optimize(onnx_model("bert"), out, "fold,fuse")
    assert code == 0 and timed == [["fused", "unfused"]]
    assert (_ops(out)["SkipLayerNormalization"] == 4) == (faster == "fused")
    assert any("fuse norms=auto" in n and ("not kept" in n) == (faster == "unfused") for n in report["notes"])


def test_rule_6_off_measures_nothing(onnx_model, tmp_path, monkeypatch):
    monkeypatch.setattr(fuse_pass, "faster_variant", lambda *a, **k: pytest.fail("timed with norms=off"))
    out = tmp_path / "fused.onnx"
    assert _optimize(onnx_model("bert"), out, "fold,fuse:norms=off")[0] == 0
    assert _ops(out)["SkipLayerNormalization"] == 0


def test_inspect_attention_lists_sites_and_why_softmaxes_are_left(onnx_model, tmp_path, capsys):
    source = onnx_model("bert")
    assert cli.main(["inspect", str(source), "--attention", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["attention"]
    assert [(r["state"], r["heads"], r["head_size"], r["mask"]) for r in rows] == [("fusable", 4, 16, True)] * 2
    out = tmp_path / "fused.onnx"
    assert _optimize(source, out, "fold,fuse:norms=off")[0] == 0
    assert cli.main(["inspect", str(out), "--attention"]) == 0
    text = capsys.readouterr().out
    assert "0 of 2 fusable" in text and text.count("fused (GroupQueryAttention)") == 2


def test_inspect_attention_gives_the_reason_for_a_layout_it_does_not_read(tmp_path, capsys):
    from tests.corpus import CORPUS

    source = CORPUS["fused-qkv-slice"].build(tmp_path)
    assert cli.main(["inspect", str(source), "--attention"]) == 0
    text = capsys.readouterr().out
    assert "0 of 1 fusable" in text and "Q is not a rank-3 tensor behind layout nodes" in text
