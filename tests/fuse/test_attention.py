"""``fuse``'s attention rules (passes/fuse/): every transformer fixture, both torch exporters,
eager and SDPA attention, fused and equal to the unfused model on rows padded every way."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest

from graphc import cli
from graphc.passes import fuse as fuse_pass
from graphc.passes.fuse import attention_rewrite
from graphc.passes.fuse.masks import MaskKind, classify, padding_patterns
from graphc.runtime import open_session
from tests.fuse.exports import export_bert_sdpa, padded_rows

# (fixture, exporter) -> (fused op, mask kind) on each of its 2 layers
EXPECTED = {
    ("bert", False): ("GroupQueryAttention", "padding"), ("bert", True): ("GroupQueryAttention", "padding"),
    ("gpt", False): ("MultiHeadAttention", "causal"), ("gpt", True): ("MultiHeadAttention", "causal"),
    ("vit", False): ("MultiHeadAttention", "none"), ("vit", True): ("MultiHeadAttention", "none"),
    ("bert-sdpa", False): ("GroupQueryAttention", "padding"), ("bert-sdpa", True): ("GroupQueryAttention", "padding"),
}


@pytest.fixture(scope="module")
def exports(onnx_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse-exports")
    cache = {}

    def get(name: str, dynamo: bool):
        if (name, dynamo) not in cache:
            if name == "bert-sdpa":
                cache[name, dynamo] = export_bert_sdpa(root / f"bert-sdpa-{int(dynamo)}.onnx", dynamo)
            else:
                cache[name, dynamo] = onnx_model(name, dynamo=dynamo)
        return cache[name, dynamo]
    return get


def _inputs(name: str, sample_inputs, batch: int = 8, seq: int = 12) -> dict[str, np.ndarray]:
    feeds = sample_inputs("bert" if name == "bert-sdpa" else name, batch=batch, seq=seq)
    return padded_rows(feeds) if "attention_mask" in feeds else feeds


def _optimize(path, out, passes="fold,fuse:norms=off", *extra) -> tuple[int, dict]:
    report = out.with_suffix(".json")
    code = cli.main(["optimize", str(path), "--passes", passes, "-o", str(out), "--report", str(report), "--quiet",
                     *extra])
    return code, (json.loads(report.read_text()) if report.exists() else {})


def _fused_ops(path) -> collections.Counter:
    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft")


def _max_rel(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.max(np.abs(candidate - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("name,dynamo", list(EXPECTED), ids=[f"{n}-{'dynamo' if d else 'torchscript'}"
                                                              for n, d in EXPECTED])
def test_rules_1_to_3_fuse_every_fixture_exactly_with_rows_padded_every_way(name, dynamo, exports, sample_inputs,
                                                                           tmp_path):
    source = exports(name, dynamo)
    out = tmp_path / "fused.onnx"
    code, report = _optimize(source, out, "fold,fuse:norms=off:unpad=false")
    assert code == 0
    op, kind = EXPECTED[name, dynamo]
    assert _fused_ops(out) == {op: 2}
    stats = next(p for p in report["passes"] if p["name"] == "fuse")["stats"]
    assert stats["fused"] == 2 and stats[f"mask_{kind}"] == 2 and stats["reverted"] == 0
    feeds = _inputs(name, sample_inputs)
    want = open_session(source).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert _max_rel(want, got) < 1e-5


def test_rule_3_padding_masks_read_once_per_input(exports, tmp_path):
    out = tmp_path / "fused.onnx"
    assert _optimize(exports("bert", False), out, "fold,fuse:norms=off:unpad=false")[0] == 0
    model = onnx.load(str(out))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["TopK"] == 1 and ops["ReduceSum"] == 1  # one token order and one length per mask input
    assert ops["GatherND"] == 4  # keys and values of each of the 2 layers
    assert ops["Softmax"] == 0


def test_rule_3_padding_right_skips_the_gather_and_is_wrong_only_on_left_padding(exports, sample_inputs, tmp_path):
    source = exports("bert", False)
    out = tmp_path / "right.onnx"
    assert _optimize(source, out, "fold,fuse:norms=off:padding=right:unpad=false")[0] == 0
    assert collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)["GatherND"] == 0
    feeds = _inputs("bert", sample_inputs, batch=4)  # rows: full, right-, left-padded, holes
    want = open_session(source).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert _max_rel(want[:2], got[:2]) < 1e-5  # full and right-padded rows: exact
    assert _max_rel(want[2:3], got[2:3]) > 1e-3  # a left-padded row attends to padding


def test_rule_3_a_row_without_tokens_runs(exports, sample_inputs, tmp_path):
    source = exports("bert", False)
    out = tmp_path / "fused.onnx"
    assert _optimize(source, out)[0] == 0
    feeds = _inputs("bert", sample_inputs, batch=4)
    feeds["attention_mask"][3] = 0
    want = open_session(source).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert np.all(np.isfinite(got))
    assert _max_rel(want[:3], got[:3]) < 1e-5


def test_rule_2_classifies_padding_causal_zero_and_other_masks():
    probe = padding_patterns(4, 6, np.int64)
    lowest = np.float32(np.finfo(np.float32).min)
    padding = np.where(probe == 0, lowest, 0).astype(np.float32)[:, None, None, :]
    assert classify(padding, {"m": probe}, ["m"], {"m"}) == MaskKind("padding", "m")
    assert classify(np.broadcast_to(padding, (4, 1, 6, 6)), {"m": probe}, ["m"], {"m"}) == MaskKind("padding", "m")
    assert classify(padding, {"m": probe}, ["m"], {"m", "input_ids"}).kind == "bias"  # reads another input
    causal = np.triu(np.full((6, 6), -1e4, np.float32), k=1)[None, None]
    assert classify(causal, {"m": probe}, ["m"], set()) == MaskKind("causal")
    assert classify(np.zeros((1, 1, 6, 6), np.float32), {}, [], set()) == MaskKind("none")
    weak = np.where(probe == 0, -1.0, 0).astype(np.float32)[:, None, None, :]
    assert classify(weak, {"m": probe}, ["m"], {"m"}).kind == "bias"  # -1 does not mask a key
    assert classify(causal + padding, {"m": probe}, ["m"], {"m"}).kind == "bias"  # causal with padding


def test_rule_4_a_site_whose_fused_form_differs_is_put_back_with_a_note(exports, sample_inputs, tmp_path,
                                                                        monkeypatch):
    real = attention_rewrite.fuse_site

    def wrong_scale(make, site, kind, plans):
        if site.name.endswith("layer.1/attention/self/Softmax"):
            site.scale *= 2
        return real(make, site, kind, plans)

    monkeypatch.setattr(fuse_pass, "fuse_site", wrong_scale)
    source = exports("bert", False)
    out = tmp_path / "fused.onnx"
    code, report = _optimize(source, out)
    assert code == 0
    assert _fused_ops(out) == {"GroupQueryAttention": 1}
    assert any("layer.1/attention/self/Softmax left unfused" in n for n in report["notes"])
    feeds = _inputs("bert", sample_inputs)
    assert _max_rel(open_session(source).run(None, feeds)[0], open_session(out).run(None, feeds)[0]) < 1e-5


def test_rule_1_attention_weights_read_elsewhere_are_left_alone_with_the_reason(exports, tmp_path):
    model = onnx.load(str(exports("bert", False)))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT,
                                                                   ["batch", 4, "sequence", "sequence"]))
    source = tmp_path / "weights-out.onnx"
    onnx.save(model, str(source))
    out = tmp_path / "fused.onnx"
    code, report = _optimize(source, out)
    assert code == 0
    assert _fused_ops(out) == {"GroupQueryAttention": 1}
    assert any("attention weights output" in n for n in report["notes"])


def test_no_attention_is_unchanged_with_a_note(onnx_model, tmp_path):
    out = tmp_path / "fused.onnx"
    code, report = _optimize(onnx_model("resnet"), out)
    assert code == 0 and not _fused_ops(out)
    assert any("no attention site" in n for n in report["notes"])


def test_order_prune_before_fuse_before_int8(exports, tmp_path, capsys):
    source = exports("bert", False)
    for passes, reason in (("fold,fuse:norms=off,prune:0.3", "prune must run before fuse"),
                           ("fold,int8,fuse", "fuse must run before int8")):
        assert cli.main(["optimize", str(source), "--passes", passes, "-o", str(tmp_path / "x.onnx")]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_prune_then_fuse_then_int8_runs_on_the_pruned_heads(exports, sample_inputs, tmp_path):
    source = exports("bert", False)
    pruned, fused = tmp_path / "pruned.onnx", tmp_path / "fused.onnx"
    assert _optimize(source, pruned, "fold,prune:0.5")[0] == 0
    code, report = _optimize(pruned, fused, "fuse:norms=off,int8")
    assert code == 0
    heads = {onnx.helper.get_attribute_value(a) for n in onnx.load(str(fused)).graph.node
             if n.op_type == "GroupQueryAttention" for a in n.attribute if a.name == "num_heads"}
    assert heads and max(heads) < 4  # prune removed heads; fuse read the new count
    feeds = _inputs("bert", sample_inputs)
    want = open_session(pruned).run(None, feeds)[0]
    got = open_session(fused).run(None, feeds)[0]
    cosine = np.sum(want * got, axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.99


def test_inspect_counts_the_fused_attention_macs(exports, tmp_path):
    source = exports("bert", False)
    out = tmp_path / "fused.onnx"
    _, report = _optimize(source, out)
    fold_macs = next(p for p in report["passes"] if p["name"] == "fold")["after"]["macs"]
    fuse_macs = next(p for p in report["passes"] if p["name"] == "fuse")["after"]["macs"]
    assert fuse_macs == fold_macs
