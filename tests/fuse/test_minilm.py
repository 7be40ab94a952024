"""``fuse`` on all-MiniLM-L6-v2 (real weights, both exporters): exact on glosses padded every
way, and ``fold,fuse,int8`` within cosine 0.99 of FP32 on held-out WordNet glosses."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from graphc import cli
from graphc.models import minilm, wordnet
from graphc.runtime import open_session
from tests.fuse.exports import padded_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow  # two real 22.7M-parameter exports


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def export(request, tmp_path_factory):
    return minilm.export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx", dynamo=request.param)


def _optimize(source, out, passes, *extra):
    report = out.with_suffix(".json")
    code = cli.main(["optimize", str(source), "--passes", passes, "-o", str(out), "--report", str(report), "--quiet",
                     *extra])
    return code, json.loads(report.read_text())


def test_fuse_is_exact_on_glosses_padded_every_way_and_runs_on_the_tokens(export, tmp_path):
    out = tmp_path / "fused.onnx"
    code, report = _optimize(export, out, "fold,fuse:norms=off")
    assert code == 0
    stats = next(p for p in report["passes"] if p["name"] == "fuse")["stats"]
    assert stats["fused"] == 6 and stats["mask_padding"] == 6 and stats["unpadded"] is True
    feeds = padded_rows(minilm.tokenize(wordnet.noun_glosses(8, seed=3), max_length=48))
    feeds["attention_mask"][1, 20:] = 0  # right padding after a gloss's own padding
    want = open_session(export).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert float(np.max(np.abs(got - want))) < 1e-5  # unit-norm embeddings


def test_fuse_then_int8_keeps_the_embedding_on_held_out_glosses(export, tmp_path):
    glosses = wordnet.noun_glosses(96)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **minilm.tokenize(glosses[:64], max_length=128))
    out = tmp_path / "fused-int8.onnx"
    code, _ = _optimize(export, out, "fold,fuse:norms=off,int8:speed_guard=false", "--data", str(calib))
    assert code == 0
    held_out = minilm.tokenize(glosses[64:], max_length=128)
    want = open_session(export).run(None, held_out)[0]
    got = open_session(out).run(None, held_out)[0]
    cosine = np.sum(want * got, axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.mean() >= 0.99
