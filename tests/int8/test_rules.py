"""int8 rules on small graphs, each checked against onnxruntime's execution of the output.

Numerical references are integer arithmetic in numpy (int64): what the quantized model must
compute if the CPU kernels are exact.
"""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch

from graphc.cpu_features import cpu_features
from graphc.context import Context
from graphc.errors import GraphcError
from graphc.graph import to_graph
from graphc.passes.int8 import Int8Pass
from graphc.pipeline import OptimizeRequest, optimize
from graphc.runtime import open_session
from graphc.spec import parse_spec
from graphc.passes import build_passes
from tests.int8 import no_speed_guard

FLOAT = onnx.TensorProto.FLOAT


def _save(tmp_path, nodes, inputs, outputs, inits, name="m.onnx", opset=17):
    graph = oh.make_graph(nodes, "g", inputs, outputs, [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / name
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)]), path)
    return path


def _quantize(tmp_path, model, spec, data=None, out="q.onnx"):
    data_path = None
    if data is not None:
        data_path = tmp_path / "calib.npz"
        np.savez(data_path, **data)
    output = tmp_path / out
    report = optimize(OptimizeRequest(model=model, passes=no_speed_guard(spec), output=output, data=data_path,
                                      progress=False))
    model = onnx.load(output)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return output, model, inits, report.passes[-1].stats


def _nodes(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def _qparams(model, inits, tensor):
    """(scale, zero point) of the QuantizeLinear reading ``tensor``."""
    (q,) = [n for n in _nodes(model, "QuantizeLinear") if n.input[0] == tensor]
    return float(inits[q.input[1]]), int(inits[q.input[2]])


def _matmul_model(tmp_path, rng, k=64, n=16, positive=False):
    w = (rng.uniform(0.5, 1.0, (k, n)) if positive else rng.standard_normal((k, n))).astype(np.float32)
    return _save(tmp_path, [oh.make_node("MatMul", ["x", "w"], ["y"])],
                 [oh.make_tensor_value_info("x", FLOAT, ["b", k])], [oh.make_tensor_value_info("y", FLOAT, ["b", n])],
                 {"w": w}), w


def _int_matmul_reference(x, xs, xzp, wq, ws):
    xq = np.clip(np.round(x / xs) + xzp, 0, 255).astype(np.int64)
    return ((xq - xzp) @ wq.astype(np.int64)) * xs * ws.astype(np.float64)


# --------------------------------------------------------------------------- weights
@pytest.mark.parametrize("bits,qmax", [("7", 63), ("8", 127)])
def test_weight_scales_are_per_channel_max_over_qmax(tmp_path, bits, qmax):
    rng = np.random.default_rng(0)
    model, w = _matmul_model(tmp_path, rng)
    w[:, 3] = 0  # an all-zero channel gets scale 1, not 0
    model = _save(tmp_path, [oh.make_node("MatMul", ["x", "w"], ["y"])],
                  [oh.make_tensor_value_info("x", FLOAT, ["b", 64])], [oh.make_tensor_value_info("y", FLOAT, ["b", 16])],
                  {"w": w})
    x = rng.standard_normal((32, 64)).astype(np.float32)
    _, q, inits, stats = _quantize(tmp_path, model, f"int8:mode=static:weight_bits={bits}", {"x": x})
    assert stats["weight_bits"] == int(bits)
    (dq,) = [n for n in _nodes(q, "DequantizeLinear") if getattr(inits.get(n.input[0]), "dtype", None) == np.int8]
    wq, scale, zero = (inits[i] for i in dq.input)
    assert dq.attribute[0].name == "axis" and dq.attribute[0].i == 1 and scale.shape == (16,)
    expected = np.abs(w).max(axis=0) / qmax
    expected[3] = 1.0
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    assert not zero.any() and zero.dtype == np.int8
    assert np.abs(wq).max() == qmax and np.abs(wq.astype(np.int64)).max(axis=0)[3] == 0
    assert np.abs(wq * scale - w).max() <= scale.max() / 2 + 1e-7  # round to nearest


def test_per_tensor_weights_with_per_channel_false(tmp_path):
    rng = np.random.default_rng(1)
    model, w = _matmul_model(tmp_path, rng)
    _, q, inits, _ = _quantize(tmp_path, model, "int8:mode=static:per_channel=false:weight_bits=7",
                               {"x": rng.standard_normal((8, 64)).astype(np.float32)})
    (dq,) = [n for n in _nodes(q, "DequantizeLinear") if getattr(inits.get(n.input[0]), "dtype", None) == np.int8]
    assert inits[dq.input[1]].shape == () and float(inits[dq.input[1]]) == pytest.approx(np.abs(w).max() / 63)


# ------------------------------------------------------ activations, ort saturation
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_7bit_weights_match_integer_reference(tmp_path, mode):
    rng = np.random.default_rng(2)
    model, w = _matmul_model(tmp_path, rng, positive=True)
    x = rng.uniform(0.5, 1.0, (32, 64)).astype(np.float32)  # u8 codes near 255: the worst case
    out, q, inits, _ = _quantize(tmp_path, model, f"int8:mode={mode}:weight_bits=7", {"x": x})
    wq = next(v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2)
    ws = next(v for k, v in inits.items() if v.dtype == np.float32 and v.shape == (16,))
    if mode == "static":
        xs, xzp = _qparams(q, inits, "x")
        assert xzp == 0 and xs == pytest.approx(x.max() / 255, rel=1e-6)  # range widened to include 0
    else:  # DynamicQuantizeLinear's own rule: range of this batch, widened to include 0
        xs, xzp = float(x.max()) / 255, 0
    got = open_session(out).run(None, {"x": x})[0]
    ref = _int_matmul_reference(x, xs, xzp, wq, ws)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()  # exact but for float rounding
    # and the quantization's own error, predicted by the reference, is small
    assert np.abs(ref - x @ w).max() <= 0.01 * np.abs(x @ w).max()


@pytest.mark.skipif(not cpu_features().u8s8_saturates, reason="needs a CPU whose u8 x s8 products saturate")
def test_8bit_weights_saturate_on_this_cpu(tmp_path):
    """Why weight_bits=auto picks 7 here: full-range weights leave the integer reference."""
    rng = np.random.default_rng(2)
    model, w = _matmul_model(tmp_path, rng, positive=True)
    x = rng.uniform(0.5, 1.0, (32, 64)).astype(np.float32)
    out, q, inits, stats = _quantize(tmp_path, model, "int8:mode=static:weight_bits=8", {"x": x})
    wq = next(v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2)
    ws = next(v for k, v in inits.items() if v.dtype == np.float32 and v.shape == (16,))
    ref = _int_matmul_reference(x, *_qparams(q, inits, "x"), wq, ws)
    got = open_session(out).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() > 0.05 * np.abs(ref).max()
    _, _, _, auto = _quantize(tmp_path, model, "int8", {"x": x}, out="auto.onnx")
    assert auto["weight_bits"] == 7


def test_static_activation_params_are_u8_asymmetric(tmp_path):
    rng = np.random.default_rng(3)
    model, _ = _matmul_model(tmp_path, rng)
    x = (rng.standard_normal((64, 64)) * 2 + 1).astype(np.float32)
    _, q, inits, stats = _quantize(tmp_path, model, "int8:mode=static", {"x": x})
    scale, zero = _qparams(q, inits, "x")
    lo, hi = float(x.min()), float(x.max())
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert zero == round(-lo / scale) and 0 < zero < 255
    assert "64 rows of --data" in stats["calibration"]


# ---------------------------------------------------------------------- conv and bias
def _conv_model(tmp_path, rng, groups=1):
    w = rng.standard_normal((8, 4 // groups if groups > 1 else 4, 3, 3)).astype(np.float32)
    if groups > 1:
        w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=groups),
             oh.make_node("Relu", ["c"], ["r"]),
             oh.make_node("Conv", ["r", "w2"], ["y"])]
    w2 = rng.standard_normal((2, w.shape[0], 1, 1)).astype(np.float32)
    return _save(tmp_path, nodes, [oh.make_tensor_value_info("x", FLOAT, ["n", 4, 8, 8])],
                 [oh.make_tensor_value_info("y", FLOAT, ["n", 2, 8, 8])], {"w": w, "b": b, "w2": w2}), w, b


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_bias_int32_and_fake_quant_reference(tmp_path, groups):
    rng = np.random.default_rng(4)
    model, w, b = _conv_model(tmp_path, rng, groups)
    x = rng.standard_normal((16, 4, 8, 8)).astype(np.float32)
    out, q, inits, stats = _quantize(tmp_path, model, "int8:mode=static", {"x": x})
    conv = next(n for n in _nodes(q, "Conv") if n.input[0].startswith("x"))
    wdq, bdq = (next(n for n in _nodes(q, "DequantizeLinear") if n.output[0] == conv.input[i]) for i in (1, 2))
    wq, ws = inits[wdq.input[0]], inits[wdq.input[1]]
    bq, bs, bz = (inits[i] for i in bdq.input)
    xs, xzp = _qparams(q, inits, "x")
    assert bq.dtype == np.int32 and not bz.any()
    np.testing.assert_allclose(bs, xs * ws, rtol=1e-6)  # bias scale = s_x * s_w per channel
    assert np.abs(bq * bs - b).max() <= bs.max() / 2 * (1 + 1e-5)
    # the Relu is absorbed: the Conv output's Q range starts at 0
    cs, czp = _qparams(q, inits, "c")
    assert czp == 0 and stats["activations_absorbed"] == 1 and not _nodes(q, "Relu")
    # fake-quant numpy/torch reference of the first Conv + Relu, requantized like onnxruntime
    xq = np.clip(np.round(x / xs) + xzp, 0, 255)
    xd = torch.from_numpy((xq - xzp).astype(np.float64) * xs)
    wd = torch.from_numpy(wq.astype(np.float64) * ws.astype(np.float64).reshape(-1, 1, 1, 1))
    conv_ref = torch.nn.functional.conv2d(xd, wd, torch.from_numpy(bq * bs.astype(np.float64)),
                                          padding=1, groups=groups).numpy()
    c_ref = np.clip(np.round(conv_ref / cs) + czp, 0, 255)
    # expose the quantized Conv output through a probe of the produced model
    probe = onnx.load(out)
    q_c = next(n for n in _nodes(probe, "QuantizeLinear") if n.input[0] == "c").output[0]
    probe.graph.output.append(onnx.ValueInfoProto(name=q_c))
    got = open_session(probe).run([q_c], {"x": x})[0].astype(np.int64)
    assert np.abs(got - c_ref).max() <= 1  # within one quantization step (float rounding ties)
    assert np.mean(got != c_ref) < 0.01


# ------------------------------------------------------------ ceil-mode AveragePool
@pytest.mark.parametrize("pads", [0, 1])
def test_ceil_mode_average_pool_counts_like_the_float_pool(tmp_path, pads):
    """Conv -> AveragePool(3x3, stride 2, ceil_mode=1, count_include_pad=1) on 8x8 -> Conv:
    the ceil windows overhang the input. onnxruntime's QLinearAveragePool divides them by
    another count than AveragePool (transformers' EfficientNet pooler: int8 cosine 0.54), so
    rule 3 sets count_include_pad=0 on an unpadded pool (the same float result) and keeps a
    padded one float, reading its input's float tensor, not the DQ."""
    rng = np.random.default_rng(11)
    w1 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), oh.make_node("Relu", ["c"], ["r"]),
             oh.make_node("AveragePool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                          count_include_pad=1, pads=[pads] * 4, name="pool"),
             oh.make_node("Conv", ["p", "w2"], ["y"])]
    side = 5 if pads else 4  # ceil((8 + 2 * pads - 3) / 2) + 1
    model = _save(tmp_path, nodes, [oh.make_tensor_value_info("x", FLOAT, ["n", 4, 8, 8])],
                  [oh.make_tensor_value_info("y", FLOAT, ["n", 4, side, side])], {"w1": w1, "w2": w2})
    x = rng.standard_normal((16, 4, 8, 8)).astype(np.float32)
    out, q, _, stats = _quantize(tmp_path, model, "int8:mode=static", {"x": x})
    want = open_session(model).run(None, {"x": x})[0]
    got = open_session(out).run(None, {"x": x})[0]
    assert got.shape == want.shape
    # int8 noise is about 1% of the range here; the miscounted windows were off by 10-70%
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    (pool,) = _nodes(q, "AveragePool")
    attrs = {a.name: oh.get_attribute_value(a) for a in pool.attribute}
    reads_dq = pool.input[0] in {n.output[0] for n in _nodes(q, "DequantizeLinear")}
    if pads:  # float: onnxruntime finds no DQ -> AveragePool -> Q to fuse
        assert attrs["count_include_pad"] == 1 and stats["ceil_pools_uncounted"] == 0 and not reads_dq
    else:  # integer: DQ -> AveragePool -> Q, fused into QLinearAveragePool
        assert attrs["count_include_pad"] == 0 and stats["ceil_pools_uncounted"] == 1 and reads_dq
        assert any(n.input[0] == "p" for n in _nodes(q, "QuantizeLinear"))


# ------------------------------------------------------------------------- Gemm bias
def test_gemm_bias_beta_and_transb(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 16)).astype(np.float32)
    c = rng.standard_normal(10).astype(np.float32)
    model = _save(tmp_path, [oh.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, beta=0.5)],
                  [oh.make_tensor_value_info("x", FLOAT, ["n", 16])], [oh.make_tensor_value_info("y", FLOAT, ["n", 10])],
                  {"w": w, "c": c})
    x = rng.standard_normal((32, 16)).astype(np.float32)
    for mode in ("static", "dynamic"):
        out, q, inits, _ = _quantize(tmp_path, model, f"int8:mode={mode}", {"x": x}, out=f"{mode}.onnx")
        got = open_session(out).run(None, {"x": x})[0]
        want = x @ w.T + 0.5 * c
        assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
        if mode == "static":
            (gemm,) = _nodes(q, "Gemm")
            assert next(a.f for a in gemm.attribute if a.name == "beta") == 1.0
            bdq = next(n for n in _nodes(q, "DequantizeLinear") if n.output[0] == gemm.input[2])
            assert inits[bdq.input[0]].dtype == np.int32
            np.testing.assert_allclose(inits[bdq.input[0]] * inits[bdq.input[1]], 0.5 * c,
                                       atol=float(inits[bdq.input[1]].max()))


# ---------------------------------------------------------------------- mode and exclude
def test_exclude_keeps_matching_nodes_fp32(tmp_path):
    rng = np.random.default_rng(6)
    model, _, _ = _conv_model(tmp_path, rng)
    x = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    onnx_model = onnx.load(model)
    onnx_model.graph.node[2].name = "head/conv"
    onnx.save(onnx_model, model)
    _, q, inits, stats = _quantize(tmp_path, model, "int8:exclude=head/*", {"x": x})
    assert stats["static_nodes"] == 1 and stats["fp32_reasons"] == {"head/conv": "excluded by 'head/*'"}
    head = next(n for n in q.graph.node if n.name == "head/conv")
    assert head.input[1] == "w2"  # the float weight, no DequantizeLinear
    out, q, _, stats = _quantize(tmp_path, model, "int8:exclude=Conv+head/*", {"x": x}, out="none.onnx")
    assert stats["static_nodes"] == 0 and len(stats["fp32_reasons"]) == 2
    assert not _nodes(q, "QuantizeLinear") and not _nodes(q, "DequantizeLinear")


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("spec,message", [
    ("int8:calib=kl", "int8:calib: 'kl' is not one of minmax, percentile, entropy, mse"),
    ("int8:kl", "int8:calib: 'kl' is not one of"),
    ("int8:percentile=200", "int8:percentile: 200 is out of range"),
    ("int8:samples=0", "int8:samples: 0 is out of range"),
    ("int8:weight_bits=4", "int8:weight_bits: '4' is not one of auto, 7, 8"),
    ("int8:target=gpu", "int8:target: 'gpu' is not one of ort, tensorrt"),
    ("int8:exclude=a++b", "exclude='a++b' has an empty pattern"),
    ("int8:per_channel=maybe", "int8:per_channel: 'maybe' is not a valid bool"),
])
def test_bad_options_are_one_line_errors(spec, message):
    with pytest.raises(GraphcError) as info:
        build_passes(parse_spec(spec))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_exclude_pattern_matching_nothing_is_an_error(tmp_path):
    rng = np.random.default_rng(7)
    model, _ = _matmul_model(tmp_path, rng)
    with pytest.raises(GraphcError, match="exclude pattern 'Conv' matches no"):
        _quantize(tmp_path, model, "int8:exclude=Conv", {"x": np.ones((2, 64), np.float32)})


def test_bad_calibration_data_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(8)
    model, _ = _matmul_model(tmp_path, rng)
    with pytest.raises(GraphcError, match="input 'x' has dtype float64, the model expects float32"):
        _quantize(tmp_path, model, "int8", {"x": np.ones((2, 64))})
    with pytest.raises(GraphcError, match="'image' is not an input of the model"):
        _quantize(tmp_path, model, "int8", {"image": np.ones((2, 64), np.float32)})
    bad = np.ones((4, 64), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(GraphcError, match="tensor 'x' is NaN or infinite"):
        _quantize(tmp_path, model, "int8:mode=static", {"x": bad})
    assert not (tmp_path / "q.onnx").exists()  # nothing written


def test_old_opset_is_converted_by_the_pipeline_and_refused_by_the_pass_alone(tmp_path):
    w = np.ones((4, 4), np.float32)
    model = _save(tmp_path, [oh.make_node("MatMul", ["x", "w"], ["y"])],
                  [oh.make_tensor_value_info("x", FLOAT, ["n", 4])], [oh.make_tensor_value_info("y", FLOAT, ["n", 4])],
                  {"w": w}, opset=11)
    _, quantized, _, stats = _quantize(tmp_path, model, "int8", {"x": np.ones((2, 4), np.float32)})
    assert quantized.opset_import[0].version == 13 and stats["static_nodes"] == 1  # graphc.opsets converted it
    graph = to_graph(onnx.load(model))
    with pytest.raises(GraphcError, match="int8 needs opset 13 or newer .* opset 11"):
        Int8Pass().run(graph, Context.for_model(onnx.load(model)))


def test_without_data_calibration_uses_synthetic_inputs(tmp_path):
    rng = np.random.default_rng(9)
    model, _ = _matmul_model(tmp_path, rng)
    _, _, _, stats = _quantize(tmp_path, model, "int8:mode=static:samples=8")
    assert stats["calibration"] == "minmax on 8 rows of synthetic inputs (no --data)"
