"""int8 smoothing (``smooth=<alpha>``, graphc.passes.int8.smoothing) and per-channel calibration maxima.

- exactness: the smoothed FP32 graph (before any Q/DQ) equals the original under
  onnxruntime on the BERT (post-LN: LayerNorms cloned) and ViT (pre-LN: edited in place)
  fixtures and on a toy MatMul/Gemm chain (a MatMul producer's columns absorb ``1/s``);
- the scales follow ``s_j = max|X_j|^a / max|W_j|^(1-a)``;
- with outlier channels injected into the ViT's LayerNorms, smoothing shrinks the per-tensor
  range of every smoothed activation and its channel spread, and the INT8 model is closer to
  FP32 than without smoothing.
"""


import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs
import pytest

from graphc.passes.int8 import smoothing
from graphc.passes.int8.calibration import collect
from graphc.data import model_signature, validate
from graphc.errors import GraphcError
from graphc.graph import to_model
from graphc.metrics import cosine_per_sample
from graphc.pipeline import OptimizeRequest, optimize
from graphc.runtime import open_session
from tests.int8 import no_speed_guard

FLOAT = onnx.TensorProto.FLOAT
OUTLIERS = [3, 17]


def _folded(onnx_model, name, tmp_path) -> onnx.ModelProto:
    out = tmp_path / f"{name}-fold.onnx"
    optimize(OptimizeRequest(model=onnx_model(name), passes="fold", output=out, progress=False))
    return onnx.load(out)


def _smoothed(model: onnx.ModelProto, feeds, alpha=0.5):
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    sites = smoothing.find_sites(graph, [n for n in graph.nodes if n.op in ("MatMul", "Gemm")])
    data = validate(feeds, model_signature(model), "calibration rows")
    maxima = collect(model, [], data, channel_names=[s.tensor.name for s in sites]).channel_max
    stats = smoothing.smooth(graph, sites, maxima, alpha)
    return to_model(graph, model), stats, sites, maxima


@pytest.mark.parametrize("name,cloned", [("bert", 4), ("vit", 0)])
def test_smoothing_is_exact_in_fp32(name, cloned, onnx_model, sample_inputs, tmp_path):
    model = _folded(onnx_model, name, tmp_path)
    smoothed, stats, _, _ = _smoothed(model, sample_inputs(name, batch=8, seed=0))
    # QKV (3) and FFN-in (1) per layer, 2 layers
    assert stats == {"smoothed_matmuls": 8, "smoothed_sites": 4, "cloned_layernorms": cloned}
    feeds = sample_inputs(name, batch=8, seed=1)
    ref = open_session(model).run(None, feeds)[0]
    got = open_session(smoothed).run(None, feeds)[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    changed = {t.name for t in smoothed.graph.initializer if t.name.endswith("_smoothed")}
    assert len(changed) >= 8  # the weights really were rescaled (not a no-op)


def _chain_model(tmp_path, rng):
    """x -> MatMul(w1) + b1 -> MatMul(w2) -> Gemm(transB=1, w3, c3) -> Gemm(transB=1, w4) -> y;
    channel 5 of w1 is an outlier."""
    w1 = rng.standard_normal((8, 12)).astype(np.float32)
    w1[:, 5] *= 50
    inits = {"w1": w1, "b1": rng.standard_normal(12).astype(np.float32),
             "w2": rng.standard_normal((12, 10)).astype(np.float32),
             "w3": rng.standard_normal((6, 10)).astype(np.float32), "c3": rng.standard_normal(6).astype(np.float32),
             "w4": rng.standard_normal((4, 6)).astype(np.float32)}
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h1"]), oh.make_node("Add", ["h1", "b1"], ["a1"]),
             oh.make_node("MatMul", ["a1", "w2"], ["h2"]),
             oh.make_node("Gemm", ["h2", "w3", "c3"], ["h3"], transB=1),
             oh.make_node("Gemm", ["h3", "w4"], ["y"], transB=1)]
    graph = oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("x", FLOAT, ["b", 8])],
                          [oh.make_tensor_value_info("y", FLOAT, ["b", 4])],
                          [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), inits


def test_matmul_producers_absorb_the_scale_and_scales_follow_the_formula(tmp_path):
    rng = np.random.default_rng(0)
    model, inits = _chain_model(tmp_path, rng)
    x = rng.standard_normal((32, 8)).astype(np.float32)
    smoothed, stats, sites, maxima = _smoothed(model, {"x": x}, alpha=0.75)
    # a1 (MatMul + bias Add) -> w2, h2 (MatMul) -> Gemm w3, h3 (Gemm + bias) -> Gemm w4
    assert {s.tensor.name for s in sites} == {"a1", "h2", "h3"} and stats["smoothed_matmuls"] == 3
    fp = {"a1": x @ inits["w1"] + inits["b1"]}
    np.testing.assert_allclose(maxima["a1"], np.abs(fp["a1"]).max(0), rtol=1e-5)
    s = maxima["a1"] ** 0.75 / np.abs(inits["w2"]).max(1) ** 0.25  # w2 [K, N]: input rows
    s2 = maxima["h2"] ** 0.75 / np.abs(inits["w3"]).max(0) ** 0.25  # w3 [N, K] (transB=1): columns
    new = {t.name: onnx.numpy_helper.to_array(t) for t in smoothed.graph.initializer}
    (w2,) = [v for k, v in new.items() if k.startswith("w2")]
    (b1,) = [v for k, v in new.items() if k.startswith("b1")]
    # w2: input rows times s (site a1), output columns over s2 (it produces site h2)
    np.testing.assert_allclose(w2, inits["w2"] * s[:, None] / s2[None, :], rtol=1e-5)
    np.testing.assert_allclose(b1, inits["b1"] / s, rtol=1e-5)
    assert s[5] > 5 * np.median(s)  # the outlier channel moved into w2
    xs = rng.standard_normal((16, 8)).astype(np.float32)
    ref = open_session(model).run(None, {"x": xs})[0]
    got = open_session(smoothed).run(None, {"x": xs})[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_a_producer_with_other_readers_is_left_alone(tmp_path):
    """h1 also feeds the output through a residual Add: a MatMul producer is never cloned."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h1"]), oh.make_node("MatMul", ["h1", "w2"], ["h2"]),
             oh.make_node("Add", ["h1", "h2"], ["y"])]
    graph = oh.make_graph(nodes, "res", [oh.make_tensor_value_info("x", FLOAT, ["b", 8])],
                          [oh.make_tensor_value_info("y", FLOAT, ["b", 8])],
                          [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    _, stats, sites, _ = _smoothed(model, {"x": rng.standard_normal((4, 8)).astype(np.float32)})
    assert sites == [] and stats["smoothed_matmuls"] == 0


def _with_outliers(model: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in model.graph.initializer:
        if "layernorm" in tensor.name.lower():
            values = onnx.numpy_helper.to_array(tensor).copy()
            values[OUTLIERS] *= 40.0
            tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    return model


def _channel_max(model, names, feeds):
    data = validate(feeds, model_signature(model), "rows")
    return collect(model, [], data, channel_names=names).channel_max


def test_smoothing_shrinks_outlier_ranges_and_int8_error(onnx_model, sample_inputs, tmp_path):
    model = _with_outliers(_folded(onnx_model, "vit", tmp_path))
    calib, held_out = sample_inputs("vit", batch=64, seed=2), sample_inputs("vit", batch=64, seed=3)
    smoothed, stats, sites, before = _smoothed(model, calib)
    assert stats["smoothed_matmuls"] == 8
    after = _channel_max(smoothed, list(before), held_out)
    original = _channel_max(model, list(before), held_out)
    for name in before:  # per-tensor range and channel spread both shrink on fresh inputs
        assert after[name].max() < 0.5 * original[name].max()
        spread = lambda m: m.max() / np.median(m)  # noqa: E731
        assert spread(after[name]) < 0.5 * spread(original[name])

    source = tmp_path / "vit-outliers.onnx"
    onnx.save(model, source)
    np.savez(tmp_path / "calib.npz", **calib)
    ref = open_session(model).run(None, held_out)[0]
    errors = {}
    for spec in ("int8", "int8:smooth=0.5"):
        out = tmp_path / "q.onnx"
        report = optimize(OptimizeRequest(model=source, passes=no_speed_guard(spec), output=out,
                                          data=tmp_path / "calib.npz", progress=False))
        got = open_session(out).run(None, held_out)[0]
        errors[spec] = 1 - cosine_per_sample(got, ref).mean()
    assert report.passes[-1].stats["smoothed_matmuls"] == 8
    assert errors["int8:smooth=0.5"] < 0.5 * errors["int8"]


def test_channel_maxima_are_merged_across_batches():
    model = oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                                        [oh.make_tensor_value_info("x", FLOAT, ["b", 3, 5])],
                                        [oh.make_tensor_value_info("y", FLOAT, ["b", 3, 5])]),
                          opset_imports=[oh.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((20, 3, 5)).astype(np.float32)
    result = collect(model, ["y"], validate({"x": x}, model_signature(model), "x"), batch_size=3,
                     channel_names=["x", "y"])
    np.testing.assert_allclose(result.channel_max["x"], np.abs(x).max((0, 1)))
    np.testing.assert_allclose(result.channel_max["y"], np.maximum(x, 0).max((0, 1)))
    assert set(result.states) == {"y"} and result.batches == 7  # histograms only for ``names``


@pytest.mark.parametrize("value", ["1.5", "-0.1", "x"])
def test_bad_smooth_values_are_refused(tmp_path, value):
    model = tmp_path / "m.onnx"
    onnx.save(_chain_model(tmp_path, np.random.default_rng(0))[0], model)
    with pytest.raises(GraphcError, match="int8:smooth"):
        optimize(OptimizeRequest(model=model, passes=f"int8:smooth={value}", output=tmp_path / "o.onnx",
                                 progress=False))
