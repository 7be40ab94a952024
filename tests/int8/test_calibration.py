"""Streamed calibration (graphc.passes.int8.calibration) and CPU feature detection (graphc.cpu_features)."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphc.passes.int8.calibration import BINS, StreamingHistogram, _mse_threshold, collect, tensor_range
from graphc.cpu_features import CpuFeatures, features_from_flags, parse_flags
from graphc.data import validate, model_signature
from graphc.errors import GraphcError


# ------------------------------------------------------------------------ cpu features
def test_cpu_flags_decide_saturation():
    text = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: avx512_vnni\n"
    features = features_from_flags(parse_flags(text))
    assert features == CpuFeatures(avx2=True, avx512_vnni=False, avx_vnni=False)
    assert features.u8s8_saturates and features.describe() == "AVX2 without VNNI"
    vnni = features_from_flags({"avx2", "avx512_vnni"})
    assert vnni.vnni and not vnni.u8s8_saturates and vnni.describe() == "AVX512-VNNI"
    assert features_from_flags({"avx2", "avx_vnni"}).vnni
    assert not features_from_flags(parse_flags("Features\t: fp asimd\n")).u8s8_saturates  # ARM


# -------------------------------------------------------------------------- histogram
def _reference_counts(values: np.ndarray, radius: float) -> np.ndarray:
    half = BINS // 2
    index = np.floor(values.astype(np.float64) * (half / radius)).astype(np.int64) + half
    return np.bincount(np.clip(index, 0, BINS - 1), minlength=BINS)


def test_rebinning_is_exact_and_state_is_fixed_size():
    rng = np.random.default_rng(0)
    state = StreamingHistogram()
    size = state.state_bytes()
    seen = []
    for k in range(12):  # growing spread: the range doubles several times
        x = (rng.standard_normal(5000) * 2.0 ** (k / 2)).astype(np.float32)
        seen.append(x)
        state.update(x)
        assert state.state_bytes() == size
    allx = np.concatenate(seen)
    assert state.min == allx.min() and state.max == allx.max() and state.seen == allx.size
    assert state.radius >= np.abs(allx).max()
    ref = _reference_counts(allx, state.radius)
    assert np.abs(ref - state.counts).sum() <= 4  # float rounding at bin edges only
    assert state.counts.sum() == allx.size


def test_growth_beyond_the_bin_count_keeps_every_count():
    state = StreamingHistogram()
    state.update(np.zeros(10, dtype=np.float32))
    state.update(np.array([1e6, -1e6], dtype=np.float32))
    assert state.counts.sum() == 12 and state.radius >= 1e6 and state.zeros == 10


def _state(values) -> StreamingHistogram:
    state = StreamingHistogram()
    for chunk in np.array_split(np.asarray(values, dtype=np.float32), 7):
        state.update(chunk)
    return state


def test_minmax_and_percentile():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000)
    state = _state(x)
    assert tensor_range(state, "minmax") == (pytest.approx(x.min(), rel=1e-6), pytest.approx(x.max(), rel=1e-6))
    lo, hi = tensor_range(state, "percentile", 99.0)
    width = state.radius / (BINS // 2)
    assert hi == -lo and abs(hi - np.percentile(np.abs(x), 99.0)) <= 2 * width
    lo, hi = tensor_range(state, "percentile", 99.0, symmetric=False)  # one threshold per side
    assert abs(hi - np.percentile(x[x > 0], 99.0)) <= 2 * width
    assert abs(-lo - np.percentile(-x[x < 0], 99.0)) <= 2 * width


def test_entropy_clips_outliers_and_ignores_the_zero_spike():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(100_000), [40.0, -40.0]])
    lo, hi = tensor_range(_state(x), "entropy")
    assert 2.0 < hi < 10.0 and lo == -hi  # outliers clipped, the bulk kept
    relu = np.maximum(rng.standard_normal(100_000), 0)  # half exact zeros
    lo, hi = tensor_range(_state(relu), "entropy", symmetric=False)
    assert lo == 0.0 and hi > 2.5  # without leaving out the zeros KL picks ~128 bins (~0.3)


def test_entropy_per_side_keeps_the_long_side_of_a_lopsided_tensor():
    rng = np.random.default_rng(3)
    pixels = np.concatenate([np.full(60_000, -0.8), rng.uniform(-0.8, 2.0, 40_000)])  # background spike
    lo, hi = tensor_range(_state(pixels), "entropy", symmetric=False)
    assert lo == pytest.approx(-0.8) and hi > 1.5
    _, folded = tensor_range(_state(pixels), "entropy", symmetric=True)
    assert folded < 1.0  # folding |x| clips the bright side at the spike: why sides are separate


def _true_mse(x: np.ndarray, threshold: float, levels: int) -> float:
    step = threshold / levels
    q = np.clip(np.round(x / step), -levels, levels) * step
    return float(np.mean((q - x) ** 2))


@pytest.mark.parametrize("levels", [127, 15])
def test_mse_threshold_is_near_the_true_optimum(levels):
    rng = np.random.default_rng(4)
    x = rng.laplace(size=200_000)
    state = _state(x)
    hist, width = state.magnitudes()
    chosen = _mse_threshold(hist, width, levels)
    grid = np.linspace(0.05, 1.0, 200) * np.abs(x).max()
    best = min(_true_mse(x, t, levels) for t in grid)
    assert _true_mse(x, chosen, levels) <= 1.05 * best
    assert chosen < 0.9 * np.abs(x).max()  # heavy tails are clipped
    uniform = rng.uniform(-1, 1, 200_000)
    _, hi = tensor_range(_state(uniform), "mse")
    assert hi > 0.97  # nothing to clip in a uniform tensor


def test_unknown_method_and_empty_state_are_errors():
    with pytest.raises(GraphcError, match="unknown calibration method"):
        tensor_range(_state([1.0, 2.0]), "kl")
    with pytest.raises(GraphcError, match="no values"):
        tensor_range(StreamingHistogram(), "minmax")


# ------------------------------------------------------------------------ collection
def _relu_model() -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], ["y"])], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 8])],
        [onnx.numpy_helper.from_array(w, "w")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_collect_streams_one_session_and_memory_does_not_grow():
    model = _relu_model()
    x = np.random.default_rng(0).standard_normal((1024, 8)).astype(np.float32)
    data = validate({"x": x}, model_signature(model), "test data")
    small = collect(model, ["x", "h", "y"], data, samples=16, batch_size=8)
    large = collect(model, ["x", "h", "y"], data, samples=1024, batch_size=8)
    assert small.samples == 16 and large.samples == 1024 and large.batches == 128
    assert small.state_bytes() == large.state_bytes()  # memory independent of the sample count
    h = x @ onnx.numpy_helper.to_array(model.graph.initializer[0])
    assert large.states["h"].min == pytest.approx(h.min(), rel=1e-5)
    assert large.states["y"].min == 0 and large.states["y"].max == pytest.approx(h.max(), rel=1e-5)
    assert large.states["y"].counts.sum() == h.size


def test_collect_refuses_non_finite_activations():
    model = _relu_model()
    x = np.ones((4, 8), dtype=np.float32)
    x[2, 3] = np.inf
    data = validate({"x": x}, model_signature(model), "bad.npz")
    with pytest.raises(GraphcError, match=r"bad.npz: tensor 'h' is NaN or infinite in batch 2"):
        collect(model, ["h"], data, batch_size=2)


def test_collect_runs_batches_in_pieces_of_bounded_bytes_with_the_same_statistics():
    model = _relu_model()
    x = np.random.default_rng(3).standard_normal((64, 8)).astype(np.float32)
    data = validate({"x": x}, model_signature(model), "test data")
    whole = collect(model, ["x", "h", "y"], data, batch_size=16)
    # 3 exposed tensors of 8 floats: 96 bytes a row; 200 bytes a run: 2 rows a run after the 1-row probe
    pieces = collect(model, ["x", "h", "y"], data, batch_size=16, run_bytes=200)
    assert whole.batches == pieces.batches == 4 and whole.runs == 5 and pieces.runs > 4 * 16 // 2
    assert [o.name for o in model.graph.output] == ["y"]  # outputs exposed only while the session opened
    for name in ("x", "h", "y"):
        a, b = whole.states[name], pieces.states[name]
        assert (a.min, a.max, a.seen, a.zeros) == (b.min, b.max, b.seen, b.zeros)
        assert b.state_bytes() == a.state_bytes()
        assert tensor_range(b, "percentile", 99.0) == pytest.approx(tensor_range(a, "percentile", 99.0), rel=0.02)


def test_collect_iterates_rows_on_each_inputs_batch_axis():
    """Calibration ranges over state rows on axis 1 and a 0-d input equal numpy's over the
    whole data, in batches and pieces (wrong slicing mixes state rows: other ranges)."""
    from tests.corpus.stateful_rnn import toy_state_model

    model = toy_state_model()
    rng = np.random.default_rng(5)
    x, s = rng.standard_normal((9, 4)).astype(np.float32), rng.standard_normal((2, 9, 4)).astype(np.float32)
    data = validate({"x": x, "s": s, "k": np.float32(-2.0)}, model_signature(model), "test data")
    result = collect(model, ["h", "y"], data, batch_size=4, run_bytes=40)
    h = x * (s[0] + s[1])
    assert result.samples == 9 and result.batches == 3
    assert (result.states["h"].min, result.states["h"].max) == pytest.approx((h.min(), h.max()), rel=1e-6)
    assert (result.states["y"].min, result.states["y"].max) == pytest.approx((-2 * h.max(), -2 * h.min()), rel=1e-6)
    assert result.states["y"].seen == h.size
