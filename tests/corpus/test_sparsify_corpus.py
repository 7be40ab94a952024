"""``graphc optimize M --passes sparsify:0.5`` on every corpus model (issue 13's every-pass rule,
issue 16's pass): exit 0 with a model that runs and keeps the original's output names, shapes
and dtypes, in which every weight the report lists as sparsified is half zeros (within one
weight) and every value that changed became exactly 0, and every other initializer is
byte-identical to the model ``sparsify:0`` writes (the same load and write: graphc may
normalise a model on load, e.g. flatten a constant If); a model with nothing to sparsify (pre-quantized weights, weights in
subgraphs, layers under ``min_size``) is returned unchanged with a note. Never exit 1 or 2.

The models outside ``tests/corpus/test_prune_corpus.FAST`` are ``slow``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphc import cli
from tests.corpus import CORPUS
from tests.corpus.test_prune_corpus import FAST, _feeds, _run
from tests.corpus.test_prune_corpus import _args as _prune_args

# the dims these recurrent models leave open, for the inputs the outputs are compared on
STATE_SHAPES = {
    "gru-state": ("--shape", "batch=1,time=16"),
    "lstm-state-unnamed": ("--shape", "x=1x16x8", "--shape", "h0=2x1x16", "--shape", "c0=2x1x16"),
}


def _args(name: str) -> list[str]:
    return [*_prune_args(name), *STATE_SHAPES.get(name, ())]


def _models():
    for model in sorted(CORPUS):
        yield pytest.param(model, marks=[] if model in FAST else [pytest.mark.slow], id=model)


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("name", list(_models()))
def test_sparsify_on_corpus_model_zeroes_only_the_listed_weights(name, tmp_path, capsys):
    path = CORPUS[name].build(tmp_path)
    out, report, baseline = tmp_path / "sparse.onnx", tmp_path / "report.json", tmp_path / "as-loaded.onnx"
    assert cli.main(["optimize", str(path), "--passes", "sparsify:0", "-o", str(baseline), "--quiet",
                     *_args(name)]) == 0, capsys.readouterr().err
    code = cli.main(["optimize", str(path), "--passes", "sparsify:0.5", "-o", str(out), "--report", str(report),
                     "--quiet", *_args(name)])
    captured = capsys.readouterr()
    assert code == 0, f"sparsify:0.5 on {name} exited {code}: {captured.err.strip()}"
    (sparsify,) = json.loads(report.read_text())["passes"]
    listed = {row["layer"]: row for row in sparsify["details"].get("layers", [])}
    before, after = _initializers(baseline), _initializers(out)
    assert set(after) == set(before)
    for key, values in before.items():
        if key not in listed:
            assert after[key].tobytes() == values.tobytes(), f"{name}: {key} changed but is not listed"
            continue
        changed = after[key] != values
        assert (after[key][changed] == 0).all(), f"{name}: {key} changed to non-zero values"
        assert abs(int((after[key] == 0).sum()) - values.size / 2) <= 1, f"{name}: {key}"
    if not listed:
        assert not sparsify["changed"] and any(n.startswith("sparsify:") for n in json.loads(
            report.read_text())["notes"]), sparsify
    original = onnx.load(str(path), load_external_data=False)
    feeds = _feeds(original, _args(name))
    reference, result = _run(path, feeds), _run(out, feeds)
    assert list(result) == list(reference)
    for key in reference:
        assert (result[key].shape, result[key].dtype) == (reference[key].shape, reference[key].dtype), key
