"""``graphc optimize M --passes prune:0.3`` on every corpus model (issue 13): exit 0 with a
model that runs and keeps the original's output names, shapes and dtypes (prune changes the
numbers by design, so they are not compared), or exit 2 with one line saying why; never
exit 1, never a traceback.

Each model runs with its registered ``cli_args`` plus what prune needs here (``PRUNE_ARGS``:
the dims its inputs leave open). ``EXPECTED`` pins what each known model does (pruned,
returned unchanged, or refused); a model registered later is held to the rule above. The
models outside ``FAST`` are ``slow``. Both outputs run on inputs built here from the same
shapes (``FEEDS`` for values the model needs, e.g. silero's sample rate).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc import cli
from graphc.data import model_signature, parse_shapes, resolve_shape
from tests.corpus import CORPUS
from tests.corpus.hf_families import FAMILIES

SILERO_SHAPES = ("--shape", "input=1x512", "--shape", "state=2x1x128")
PRUNE_ARGS = {
    "ppocr-rec": ("--shape", "x=1x3x48x320"),
    "ppocr-cls": ("--shape", "x=1x3x48x192"),
    "ppocr-det": ("--shape", "x=1x3x96x96"),
    "silero-vad": SILERO_SHAPES,
    "silero-vad-op15": SILERO_SHAPES,
    "silero-vad-ifless": SILERO_SHAPES,
    "voicefilter-lite": ("--shape", "batch=1,time=10"),
}
FEEDS = {"sr": np.array(16000, np.int64)}  # silero's sample rate: 8000 or 16000
# pruned: exit 0, smaller; unchanged: exit 0, nothing prunable (a note says why)
EXPECTED = {
    "open-nsfw": "pruned", "ppocr-rec": "pruned", "ppocr-cls": "pruned", "ppocr-det": "pruned",
    "silero-vad": "unchanged", "silero-vad-op15": "pruned", "silero-vad-ifless": "unchanged",
    "voicefilter-embedder": "unchanged", "voicefilter-lite": "unchanged", "tashkeel-bilstm": "unchanged",
    "yolo-c2f-sppf": "pruned", "fused-qkv-slice": "pruned",
    # tests/corpus/hf_families.py: every family with both exporters
    **{f"hf-{family}-{flavour}": "pruned" for family in FAMILIES for flavour in ("ts", "dynamo")},
}
FAST = {"ppocr-cls", "silero-vad", "silero-vad-op15", "silero-vad-ifless", "yolo-c2f-sppf", "fused-qkv-slice",
        "tashkeel-bilstm", "hf-pplcnet-ts", "hf-pplcnet-dynamo"}


def _args(name: str) -> list[str]:
    return [*CORPUS[name].cli_args, *PRUNE_ARGS.get(name, ())]


def _feeds(model: onnx.ModelProto, args: list[str]) -> dict[str, np.ndarray]:
    """One batch for ``model`` at the shapes ``--shape`` in ``args`` gives (first dims 1)."""
    shapes = parse_shapes([args[i + 1] for i, a in enumerate(args) if a == "--shape"])
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in model_signature(model):
        if spec.name in FEEDS:
            feeds[spec.name] = FEEDS[spec.name]
            continue
        shape = resolve_shape(spec, shapes)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, spec.dtype)
    return feeds


def _run(path: pathlib.Path, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))


def _models():
    for model in sorted(CORPUS):
        yield pytest.param(model, marks=[] if model in FAST else [pytest.mark.slow], id=model)


@pytest.mark.parametrize("name", list(_models()))
def test_prune_on_corpus_model_runs_or_refuses(name, tmp_path, capsys):
    path = CORPUS[name].build(tmp_path)
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    code = cli.main(["optimize", str(path), "--passes", "prune:0.3", "-o", str(out), "--report", str(report),
                     "--quiet", *_args(name)])
    captured = capsys.readouterr()
    assert code in (0, 2), f"prune:0.3 on {name} exited {code}: {captured.err.strip()}"
    if code == 2:
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("graphc optimize: error: "), err
        assert EXPECTED.get(name, "refused") == "refused", f"{name} refused: {err}"
        assert not out.exists()
        return
    assert EXPECTED.get(name) != "refused", f"{name} was expected to be refused"
    original = onnx.load(str(path), load_external_data=False)
    feeds = _feeds(original, _args(name))
    before, after = _run(path, feeds), _run(out, feeds)
    assert list(after) == list(before)
    for key in before:
        assert (after[key].shape, after[key].dtype) == (before[key].shape, before[key].dtype), key
        if after[key].dtype.kind == "f":
            assert np.isfinite(after[key]).all(), key
    (prune,) = json.loads(report.read_text())["passes"]
    if name in EXPECTED:
        assert prune["changed"] == (EXPECTED[name] == "pruned"), prune["stats"]


def test_prune_takes_the_open_dims_from_data(tmp_path, capsys):
    """With --data, no --shape is needed: the first batch of the data gives the dims."""
    path = CORPUS["ppocr-cls"].build(tmp_path)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32))
    out = tmp_path / "pruned.onnx"
    assert cli.main(["optimize", str(path), "--passes", "prune:0.3", "--data", str(data), "-o", str(out),
                     "--quiet"]) == 0, capsys.readouterr().err
    feeds = {"x": np.load(data)["x"][:1]}
    assert [a.shape for a in _run(out, feeds).values()] == [a.shape for a in _run(path, feeds).values()] == [(1, 2)]


def test_silero_prunes_on_data_in_its_natural_layout(tmp_path, capsys):
    """silero's state is [2, B, 128] and its sample rate a 0-d input: with data in that
    layout (batch axis 1 for ``state``, none for ``sr``, inferred from the model's dims)
    prune analyses on it and writes a model that runs on the same rows."""
    path = CORPUS["silero-vad-op15"].build(tmp_path)
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    inputs = {"input": rng.standard_normal((4, 512)).astype(np.float32), "state": np.zeros((2, 4, 128), np.float32),
              "sr": np.array(16000, np.int64)}
    np.savez(data, **inputs)
    out = tmp_path / "pruned.onnx"
    assert cli.main(["optimize", str(path), "--passes", "prune:0.3", "--data", str(data), "-o", str(out)]) == 0, \
        capsys.readouterr().err
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pruned = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for want, got in zip(original.run(None, inputs), pruned.run(None, inputs)):
        assert want.shape == got.shape and want.dtype == got.dtype
