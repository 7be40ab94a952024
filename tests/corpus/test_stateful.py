"""Stateful corpus models end to end (issue 13, Build 3): state inputs whose batch axis is 1
and 0-d inputs, given as data in their natural layout (``input [N, 512]``, ``state [2, N,
128]``, ``sr`` 0-d) and as graphc's synthetic inputs, through ``fold`` and ``fold,int8``;
every output model is compared with onnxruntime on the original model, per sample along each
output's batch axis."""

from __future__ import annotations

import pathlib

import numpy as np
import onnxruntime as ort
import pytest

from graphc import cli
from graphc.metrics import cosine_per_sample
from tests.corpus import CORPUS

ROWS = 12


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _stream(path, first: dict, state_names: dict[str, str], steps: int, chunk) -> dict[str, np.ndarray]:
    """Natural-layout rows from one stream: run ``steps`` chunks one after another (batch 1),
    keep each step's input chunk and the state it started from; the rows are the last
    ``ROWS`` steps (states along axis 1, the others along axis 0, constants as given)."""
    session = _session(path)
    outputs = [o.name for o in session.get_outputs()]
    feeds, rows = dict(first), []
    for step in range(steps):
        feeds.update(chunk(step))
        rows.append({k: v for k, v in feeds.items() if np.ndim(v)})
        values = dict(zip(outputs, session.run(None, feeds)))
        feeds.update({state: values[out] for state, out in state_names.items()})
    rows = rows[-ROWS:]
    data = {k: np.concatenate([r[k] for r in rows], axis=1 if k in state_names else 0) for k in rows[0]}
    data.update({k: v for k, v in first.items() if not np.ndim(v)})
    return data


def _silero_data(path) -> dict[str, np.ndarray]:
    t = np.arange(512 * 32) / 16000
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.2 * np.sin(2 * np.pi * 523 * t)
             + 0.02 * rng.standard_normal(t.size)).astype(np.float32).reshape(-1, 512)
    first = {"state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    return _stream(path, first, {"state": "stateN"}, len(audio), lambda i: {"input": audio[i:i + 1]})


def _voicefilter_data(path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    dvec = rng.standard_normal((1, 256)).astype(np.float32)
    first = {"dvec": dvec / np.linalg.norm(dvec), "h0": np.zeros((3, 1, 512), np.float32),
             "c0": np.zeros((3, 1, 512), np.float32)}
    return _stream(path, first, {"h0": "hN", "c0": "cN"}, ROWS + 4,
                   lambda i: {"stacked_logmel": rng.standard_normal((1, 6, 512)).astype(np.float32)})


def _rnn_data(path, states) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    first = {s: np.zeros((shape, 1, 16), np.float32) for s, shape in states.items()}
    first["sr"] = np.array(16000, np.int64)
    return _stream(path, first, {s: s.replace("0", "N") for s in states}, ROWS + 3,
                   lambda i: {"x": rng.standard_normal((1, 5, 8)).astype(np.float32)})


# name: (natural-layout data, --shape for synthetic inputs, batch axis of each output)
MODELS = {
    "silero-vad": (_silero_data, ["input=1x512"], {"output": 0, "stateN": 1}),  # If-based, dims unnamed
    "silero-vad-op15": (_silero_data, ["sequence=512"], {"output": 0, "stateN": 1}),
    "silero-vad-ifless": (_silero_data, ["sequence=512"], {"output": 0, "stateN": 1}),
    "voicefilter-lite": (_voicefilter_data, ["time=6"], {"mask": 0, "f_adapt": 0, "hN": 1, "cN": 1}),
    "gru-state": (lambda p: _rnn_data(p, {"h0": 1}), ["time=5"], {"y": 0, "hN": 1}),
    "lstm-state-unnamed": (lambda p: _rnn_data(p, {"h0": 2, "c0": 2}), ["x=1x5x8"], {"y": 0, "hN": 1, "cN": 1}),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (model path, natural-layout .npz, its arrays); each built once."""
    root = tmp_path_factory.mktemp("stateful")
    cache = {}

    def get(name):
        if name not in cache:
            path = CORPUS[name].build(root)
            arrays = MODELS[name][0](path)
            data = root / f"{name}.npz"
            np.savez(data, **arrays)
            cache[name] = (path, data, arrays)
        return cache[name]

    return get


def _optimize(model, out, passes, *extra) -> int:
    return cli.main(["optimize", str(model), "--passes", passes, "-o", str(out), "--quiet", *map(str, extra)])


def _per_sample_cosine(reference: np.ndarray, candidate: np.ndarray, axis: int) -> float:
    return float(cosine_per_sample(np.moveaxis(reference, axis, 0), np.moveaxis(candidate, axis, 0)).min())


def _compare(name, original: pathlib.Path, optimized: pathlib.Path, feeds: dict) -> dict[str, tuple[float, float]]:
    """output -> (max |a - b| / max |a|, min per-sample cosine) against onnxruntime on the original."""
    axes = MODELS[name][2]
    before, after = _session(original), _session(optimized)
    names = [o.name for o in before.get_outputs()]
    result = {}
    for out, a, b in zip(names, before.run(None, feeds), after.run(names, feeds)):
        assert a.shape == b.shape, (out, a.shape, b.shape)
        rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
        result[out] = (rel, _per_sample_cosine(a, b, axes[out]))
    return result


def test_natural_layout_data_has_its_rows_on_the_state_batch_axis(corpus):
    from graphc.data import load_dataset, model_signature
    from graphc.model_io import load_model

    path, data, arrays = corpus("silero-vad-op15")
    assert arrays["input"].shape == (ROWS, 512) and arrays["state"].shape == (2, ROWS, 128)
    assert arrays["sr"].shape == ()
    dataset = load_dataset(data, model_signature(load_model(path)))
    assert len(dataset) == ROWS and dataset.axes == {"input": 0, "state": 1, "sr": None}
    pieces = list(dataset.batches(5))
    assert [f["state"].shape for f, _ in pieces] == [(2, 5, 128), (2, 5, 128), (2, 2, 128)]
    np.testing.assert_array_equal(pieces[1][0]["state"], arrays["state"][:, 5:10])
    assert all(f["sr"] == 16000 for f, _ in pieces)


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_on_natural_layout_data_is_exact(name, corpus, tmp_path):
    path, data, arrays = corpus(name)
    out = tmp_path / "fold.onnx"
    assert _optimize(path, out, "fold", "--data", data, "--verify") == 0
    for output, (rel, cosine) in _compare(name, path, out, arrays).items():
        assert rel <= 1e-5 and cosine >= 0.99999, (output, rel, cosine)


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_on_natural_layout_data_within_its_tolerance(name, corpus, tmp_path):
    path, data, arrays = corpus(name)
    out = tmp_path / "int8.onnx"
    assert _optimize(path, out, "fold,int8", "--data", data, "--verify") == 0
    for output, (rel, cosine) in _compare(name, path, out, arrays).items():
        assert cosine >= 0.99, (output, rel, cosine)


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_on_synthetic_inputs_is_exact(name, corpus, tmp_path):
    path, _, arrays = corpus(name)
    out = tmp_path / "fold.onnx"
    assert _optimize(path, out, "fold", "--verify", *[f"--shape={s}" for s in MODELS[name][1]]) == 0
    for output, (rel, cosine) in _compare(name, path, out, arrays).items():
        assert rel <= 1e-5 and cosine >= 0.99999, (output, rel, cosine)


SYNTHETIC_INT8_REFUSED = {
    # calibrated on standard-normal audio and state, int8 moves stateN to a per-sample cosine of
    # 0.9898 on the synthetic sample (calibrated on streamed audio: 0.9995): --verify stops it
    "silero-vad-op15": "int8 calibrated on synthetic inputs: stateN cosine 0.9898 < 0.99 under --verify",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=SYNTHETIC_INT8_REFUSED[n], strict=True))
                                  if n in SYNTHETIC_INT8_REFUSED else n for n in MODELS])
def test_int8_on_synthetic_inputs_within_its_tolerance(name, corpus, tmp_path):
    path, _, arrays = corpus(name)
    out = tmp_path / "int8.onnx"
    assert _optimize(path, out, "fold,int8", "--verify", *[f"--shape={s}" for s in MODELS[name][1]]) == 0
    for output, (rel, cosine) in _compare(name, path, out, arrays).items():
        assert cosine >= 0.99, (output, rel, cosine)


def test_synthetic_int8_model_runs_on_streamed_data(corpus, tmp_path):
    """Without --verify the synthetic-calibrated silero int8 model is written, opens (the shape
    probe of the report used to abort onnxruntime on it) and runs on natural-layout rows."""
    path, _, arrays = corpus("silero-vad-op15")
    out = tmp_path / "int8.onnx"
    assert _optimize(path, out, "fold,int8", "--shape=sequence=512") == 0
    assert _compare("silero-vad-op15", path, out, arrays)["stateN"][1] >= 0.99
