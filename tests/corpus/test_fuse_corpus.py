"""``graphc optimize M --passes fold,fuse`` on the corpus models with attention (issue 15 on
models from the wild): DETR (self- and cross-attention), Swin (windows, relative position
bias, shifted-window masks), MobileViT, Wav2Vec2, the Whisper encoder, each from both torch
exporters, and Paddle's fused-QKV layout. Each exits 0 with the fused site counts pinned in
``EXPECTED`` (fused, put back by rule 4's check, left by rule 1) and outputs equal to the
original's on seeded inputs (the pipeline checks that too: ``fuse`` is exact).
``norms=off``: the norm rules' choice is timed, the counts here are not.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc import cli
from tests.corpus import CORPUS
from tests.corpus.hf_families import sample_feeds

# model -> (fused, reverted by rule 4, Softmax left by rule 1)
EXPECTED = {
    "hf-detr-ts": (3, 0, 0), "hf-detr-dynamo": (3, 0, 0),
    "hf-swin-ts": (3, 0, 0), "hf-swin-dynamo": (1, 2, 0),
    "hf-mobilevit-ts": (9, 0, 0), "hf-mobilevit-dynamo": (9, 0, 0),
    "hf-wav2vec2-ts": (1, 0, 0), "hf-wav2vec2-dynamo": (1, 0, 0),
    "hf-whisper-ts": (1, 0, 0), "hf-whisper-dynamo": (1, 0, 0),
    "fused-qkv-slice": (0, 0, 1),
}
FAST = {"hf-whisper-ts", "fused-qkv-slice"}


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow], id=n)
                                  for n in EXPECTED])
def test_fuse_on_corpus_attention(name, tmp_path):
    source = CORPUS[name].build(tmp_path)
    out, report = tmp_path / "fused.onnx", tmp_path / "report.json"
    code = cli.main(["optimize", str(source), "--passes", "fold,fuse:norms=off", "-o", str(out), "--report",
                     str(report), "--quiet", *CORPUS[name].cli_args])
    assert code == 0
    stats = next(p for p in json.loads(report.read_text())["passes"] if p["name"] == "fuse")["stats"]
    assert (stats.get("fused", 0), stats.get("reverted", 0), stats["softmax_left"]) == EXPECTED[name]
    feeds = sample_feeds(onnx.load(str(source), load_external_data=False), rows=3)
    want, got = _run(source, feeds), _run(out, feeds)
    assert want.keys() == got.keys()
    for key in want:
        scale = max(float(np.max(np.abs(want[key]))), 1e-6)
        assert float(np.max(np.abs(got[key] - want[key]))) / scale < 1e-4, key
