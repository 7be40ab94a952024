"""graphc's verbs and passes on the Hugging Face families of ``tests/corpus/hf_families.py``
(issue 13, Build 2), each model as exported by both torch exporters:

- ``graphc inspect``: exit 0, nothing on stderr, its inputs listed, params and MACs counted;
- ``fold``: exit 0 and the same outputs as the original (float32 rounding);
- ``fold,int8:speed_guard=false``: exit 0 with a model whose every output is within int8's
  tolerance (cosine >= 0.99 per sample) of the original, or exit 2 with one line saying why
  (``REFUSED``; none is refused today). Every layer INT8: what the speed guard would keep FP32
  depends on a timed profile of the machine (``tests.int8.no_speed_guard``), and this is the
  strictest case for accuracy;
- ``prune:0.3``: ``tests/corpus/test_prune_corpus.py`` (its ``EXPECTED`` lists these models).

Both models run in onnxruntime on the same seeded inputs (``hf_families.sample_feeds``, four
rows). The ``FAST`` family runs in the fast loop, the others are ``slow``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc import cli
from graphc.metrics import cosine_per_sample
from tests.corpus import CORPUS
from tests.corpus.hf_families import FAMILIES, sample_feeds
from tests.int8 import no_speed_guard

FAST = {"pplcnet"}
REFUSED: dict[str, str] = {}  # model -> the reason int8 refuses it (a fragment of its error line)
MIN_COSINE = 0.99  # int8's declared tolerance (graphc.passes.int8: Tolerance(min_cosine=0.99))


def _models():
    for family in FAMILIES:
        for flavour in ("ts", "dynamo"):
            name = f"hf-{family}-{flavour}"
            yield pytest.param(name, marks=[] if family in FAST else [pytest.mark.slow], id=name)


MODELS = list(_models())


def _run(path, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))


def _optimize(name, tmp_path, capsys, passes: str):
    source = CORPUS[name].build(tmp_path)
    out, report = tmp_path / f"{name}.{passes}.onnx", tmp_path / f"{name}.{passes}.json"
    code = cli.main(["optimize", str(source), "--passes", passes, "-o", str(out), "--report", str(report),
                     "--quiet", *CORPUS[name].cli_args])
    return source, out, report, code, capsys.readouterr().err.strip()


def _feeds(source) -> dict[str, np.ndarray]:
    return sample_feeds(onnx.load(str(source), load_external_data=False), rows=4)


def test_every_family_is_registered_with_both_exporters():
    names = {p.values[0] for p in MODELS}
    assert names <= set(CORPUS) and len(names) == 2 * len(FAMILIES) == 14


@pytest.mark.parametrize("name", MODELS)
def test_inspect(name, tmp_path, capsys):
    source = CORPUS[name].build(tmp_path)
    assert cli.main(["inspect", str(source), *CORPUS[name].cli_args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    for value in onnx.load(str(source), load_external_data=False).graph.input:
        assert f"  {value.name}: float32" in captured.out
    params = re.search(r"^params: ([\d,]+)", captured.out, re.MULTILINE)
    macs = re.search(r"^MACs \(one batch\): ([\d,]+)", captured.out, re.MULTILINE)
    assert params and int(params.group(1).replace(",", "")) > 1000, captured.out[:400]
    assert macs and int(macs.group(1).replace(",", "")) > 10_000, captured.out[:400]


@pytest.mark.parametrize("name", MODELS)
def test_fold_is_exact(name, tmp_path, capsys):
    source, out, _, code, err = _optimize(name, tmp_path, capsys, "fold")
    assert code == 0, err
    feeds = _feeds(source)
    before, after = _run(source, feeds), _run(out, feeds)
    assert list(after) == list(before)
    for key, want in before.items():
        np.testing.assert_allclose(after[key], want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())),
                                   err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_fold_int8_is_within_tolerance_or_refused(name, tmp_path, capsys):
    source, out, report, code, err = _optimize(name, tmp_path, capsys, no_speed_guard("fold,int8"))
    assert code in (0, 2), f"fold,int8 on {name} exited {code}: {err}"
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("graphc optimize: error: "), err
        assert name in REFUSED and REFUSED[name] in err, f"{name} refused: {err}"
        assert not out.exists()
        return
    assert name not in REFUSED, f"{name} was expected to be refused ({REFUSED[name]})"
    int8 = json.loads(report.read_text())["passes"][-1]
    assert int8["name"].startswith("int8") and int8["changed"]
    feeds = _feeds(source)
    before, after = _run(source, feeds), _run(out, feeds)
    assert list(after) == list(before)
    for key, want in before.items():
        assert after[key].shape == want.shape and after[key].dtype == want.dtype, key
        cosine = cosine_per_sample(want, after[key])
        assert cosine.min() >= MIN_COSINE, f"{name} output {key}: cosine {cosine.min():.4f} < {MIN_COSINE}"
