"""graphc's ONNX-on-PyTorch executor (graphc.torch_executor) against onnxruntime on the CPU.

- Every topology fixture, both exporters: outputs equal onnxruntime's within float tolerance.
- graphc ``int8`` outputs (dynamic and static QDQ) on several topologies and the bundled CNN:
  equal to onnxruntime with its graph optimizations off (the same operators, the same integers;
  float rounding aside), and within INT8 tolerance of onnxruntime's fused kernels.
- ``fuse``'s outputs (GroupQueryAttention with padded rows, MultiHeadAttention causal and
  unmasked, SkipLayerNormalization, BiasGelu), FP32 and int8: equal to onnxruntime's.
- MatMulInteger on graphc's Triton kernel (under ``TRITON_INTERPRET=1`` here) gives exactly the
  float64 path's integers.
- float16 runs keep Q/DQ scales in float32 and stay near the float32 outputs.
- Shape arithmetic runs on the host: the models run on torch's data-less ``meta`` device.
- Single-operator models for the forms that are easy to get wrong (negative Slice steps,
  asymmetric pads, ceil mode, ties in QuantizeLinear, zero points in integer convolutions, ...).
- Unsupported operators are named in one error before anything runs; an unsupported form of a
  supported operator is refused when it runs.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from graphc import torch_quant_ops  # noqa: E402
from graphc.cli import main  # noqa: E402
from graphc.torch_executor import TorchExecutor, UnsupportedModel  # noqa: E402

TOPOLOGIES = ["resnet", "depthwise", "concat", "mlp_bn", "se", "convnext", "bert", "gpt", "vit"]
CNN = "models/fashion_cnn.onnx"


def onnxruntime_outputs(model, feeds, optimize=True):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(got, want, rtol=1e-5, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        scale = max(float(np.max(np.abs(w))), 1.0) if w.size else 1.0
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topologies_match_onnxruntime(onnx_model, sample_inputs, name, dynamo):
    path = onnx_model(name, dynamo=dynamo)
    feeds = sample_inputs(name)
    assert_close(TorchExecutor(path).run_numpy(feeds), onnxruntime_outputs(path, feeds))


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topologies_in_float16_stay_finite_and_close(onnx_model, sample_inputs, name):
    """float16 runs (float32 constants clamped to float16's finite range on the way) stay finite and
    near onnxruntime's float32 outputs."""
    path = onnx_model(name)
    feeds = sample_inputs(name)
    for got, want in zip(TorchExecutor(path, half=True).run_numpy(feeds), onnxruntime_outputs(path, feeds)):
        assert np.isfinite(got).all() and cosine(got, want) > 0.999, name


_OPTIMIZED: dict[tuple[str, str], pathlib.Path] = {}


def optimized(path, tmp_path, passes):
    """``path`` after ``graphc optimize --passes passes``, made once per session and model."""
    key = (str(path), passes)
    if key not in _OPTIMIZED or not _OPTIMIZED[key].exists():
        out = tmp_path / f"{pathlib.Path(path).stem}.{re.sub('[^A-Za-z0-9]+', '_', passes)}.onnx"
        assert main(["optimize", str(path), "--passes", passes, "-o", str(out)]) == 0
        _OPTIMIZED[key] = out
    return _OPTIMIZED[key]


def cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


QUANTIZERS = ("QuantizeLinear", "DynamicQuantizeLinear")


def assert_int8_matches_onnxruntime(path, feeds, device="cpu", rtol=1e-5, atol=1e-6):
    """A graphc int8 model on TorchExecutor against onnxruntime with its graph optimizations off
    (the same operators, so the same integers, float rounding aside). Each engine computes a
    QuantizeLinear's float input in its own summation order (torch's, or MLAS's, which follows the
    CPU's vector width), so a value within an ulp of a rounding tie can land one step apart: seen on
    an AMD Zen 4 with AVX-512, one row of the bundled CNN and one ViT row moved by up to 5e-3, and
    such a step in one layer can move a few values of the next ones by a step too (one flip in the
    bundled CNN's fifth layer became 249 values, 0.5%, five layers on), or by two after an Add of
    two such tensors. So every quantized tensor is compared as integers: equal, or at most two steps
    apart at no more than 1% of its elements (at least 1; a wrong scale or zero point moves most
    values, and by more). The model's outputs are then within float tolerance where no quantized
    tensor differs, and else within 1% of their largest magnitude with a cosine above 0.9999 (a
    flipped step moves an output by a few thousandths)."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    quantized = [n.output[0] for n in model.graph.node if n.op_type in QUANTIZERS]
    outputs = len(model.graph.output)
    model.graph.output.extend(helper.make_tensor_value_info(name, types.get(name, TensorProto.UINT8), None)
                              for name in quantized)
    got = TorchExecutor(model, device=device).run_numpy(feeds)
    want = onnxruntime_outputs(model, feeds, optimize=False)
    flipped = 0
    for name, g, w in zip(quantized, got[outputs:], want[outputs:]):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
        steps = np.abs(g.astype(np.int64) - w.astype(np.int64))
        assert steps.max(initial=0) <= 2, f"{name}: integers {steps.max()} steps apart"
        assert np.count_nonzero(steps) <= max(1, steps.size // 100), f"{name}: {np.count_nonzero(steps)} of {steps.size} differ"
        flipped += int(np.count_nonzero(steps))
    if not flipped:
        assert_close(got[:outputs], want[:outputs], rtol=rtol, atol=atol)
        return
    for g, w in zip(got[:outputs], want[:outputs]):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=0, atol=0.01 * max(float(np.abs(w).max(initial=0)), 1.0))
        assert cosine(g, w) > 0.9999


@pytest.mark.parametrize("passes", ["fold,int8", "fold,int8:mode=static"])
@pytest.mark.parametrize("name", ["resnet", "depthwise", "bert", "gpt", "vit"])
def test_int8_models_match_onnxruntime(onnx_model, sample_inputs, tmp_path, name, passes):
    path = optimized(onnx_model(name), tmp_path, passes)
    feeds = sample_inputs(name)
    assert_int8_matches_onnxruntime(path, feeds)
    got = TorchExecutor(path).run_numpy(feeds)
    for g, w in zip(got, onnxruntime_outputs(path, feeds)):  # onnxruntime's fused INT8 kernels
        assert cosine(g, w) > 0.999


def cnn_feeds(rows=16):
    data = np.load("models/fashion_mnist_test.npz")
    name = onnx.load(CNN).graph.input[0].name
    key = name if name in data else data.files[0]
    return {name: data[key][:rows]}


def test_bundled_cnn_fp32_int8_and_half(tmp_path):
    feeds = cnn_feeds()
    assert_close(TorchExecutor(CNN).run_numpy(feeds), onnxruntime_outputs(CNN, feeds))
    int8 = optimized(CNN, tmp_path, "fold,int8")
    assert_int8_matches_onnxruntime(int8, feeds)
    half = TorchExecutor(CNN, half=True)
    assert half.context.float_dtype == torch.float16
    got, want = half.run_numpy(feeds)[0], onnxruntime_outputs(CNN, feeds)[0]
    assert got.dtype == np.float32 and np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))
    half_int8 = TorchExecutor(int8, half=True)
    scales = [node.input[1] for node in onnx.load(int8).graph.node if node.op_type == "DequantizeLinear"]
    assert scales and all(half_int8.constants[s].dtype == torch.float32 for s in scales if s in half_int8.constants)
    assert cosine(half_int8.run_numpy(feeds)[0], onnxruntime_outputs(int8, feeds)[0]) > 0.999


@pytest.mark.parametrize("passes", [None, "fold,int8", "fold,fuse,int8"])
@pytest.mark.parametrize("name", ["bert", "gpt", "vit"])
def test_shape_arithmetic_stays_on_the_host(onnx_model, sample_inputs, tmp_path, name, passes):
    """Rule 5, checked on torch's meta device, which holds no data: a model runs there only if no
    shape value, axis or size is ever read back from the device (each read would be a GPU sync)."""
    path = onnx_model(name) if passes is None else optimized(onnx_model(name), tmp_path, passes)
    feeds = sample_inputs(name)
    executor = TorchExecutor(path, device="meta")
    shapes = {i for i, step in enumerate(executor.steps) if step.op_type == "Shape"}
    assert shapes <= executor.host_nodes
    with torch.inference_mode():
        got = executor.run(feeds)
    want = onnxruntime_outputs(path, feeds)
    assert [tuple(g.shape) for g in got] == [w.shape for w in want] and all(g.device.type == "meta" for g in got)


def test_matmul_integer_on_the_triton_kernel_is_exact(onnx_model, sample_inputs, tmp_path, monkeypatch):
    path = optimized(onnx_model("bert"), tmp_path, "fold,int8")
    feeds = sample_inputs("bert")
    calls = []
    launch = torch_quant_ops.triton_matmul_integer
    monkeypatch.setattr(torch_quant_ops, "triton_matmul_integer", lambda *a: calls.append(1) or launch(*a))
    on_triton = TorchExecutor(path, triton_int8=True).run_numpy(feeds)
    matmuls = sum(node.op_type == "MatMulInteger" for node in onnx.load(path).graph.node)
    assert matmuls > 0 and len(calls) == matmuls
    assert all(np.array_equal(a, b) for a, b in zip(on_triton, TorchExecutor(path, triton_int8=False).run_numpy(feeds)))


# --- single operators ----------------------------------------------------------------------------

def single(op_type, inputs, attrs=None, outputs=1, opset=17, initializers=(), domain=""):
    """A one-node model: ``inputs`` is a list of (name, numpy array); arrays named in
    ``initializers`` become constants, the others are fed."""
    feeds, inits, infos = {}, [], []
    for name, array in inputs:
        if name in initializers:
            inits.append(numpy_helper.from_array(array, name))
        elif name:
            feeds[name] = array
            infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
    names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op_type, [name for name, _ in inputs], names, domain=domain, **(attrs or {}))
    graph = helper.make_graph([node], "single", infos, [helper.make_value_info(n, onnx.TypeProto()) for n in names], inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=8), feeds


RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
I64 = lambda *v: np.array(v, np.int64)  # noqa: E731
U8 = RNG.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
# 7-bit weights where onnxruntime is the reference: its u8 x s8 kernels saturate in int16 on AVX2
# CPUs without VNNI (vpmaddubsw); full 8-bit ones are checked against the int64 reference below
W7 = RNG.integers(-64, 64, (4, 3, 3, 3)).astype(np.int8)

CASES = {
    "slice-negative-steps": ("Slice", [("x", X4), ("s", I64(-1, 5)), ("e", I64(-100, 0)), ("a", I64(2, 3)), ("st", I64(-2, -1))], {}, 1, 17, ("s", "e", "a", "st")),
    "slice-clamped": ("Slice", [("x", X4), ("s", I64(1, -3)), ("e", I64(2**62, 100)), ("a", I64(0, -1))], {}, 1, 17, ("s", "e", "a")),
    "pad-reflect": ("Pad", [("x", X4), ("p", I64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "reflect"}, 1, 17, ("p",)),
    "pad-edge": ("Pad", [("x", X4), ("p", I64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "edge"}, 1, 17, ("p",)),
    "pad-constant-negative": ("Pad", [("x", X4), ("p", I64(0, 1, -2, 1, 0, 0, 1, -3)), ("v", np.array(1.5, np.float32))], {}, 1, 17, ("p", "v")),
    "maxpool-asymmetric-ceil": ("MaxPool", [("x", X4)], {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 0], "ceil_mode": 1}, 1, 17, ()),
    "maxpool-same-upper": ("MaxPool", [("x", X4)], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 1, 17, ()),
    "avgpool-exclude-pad": ("AveragePool", [("x", X4)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 1, 17, ()),
    "conv-dilated-asymmetric": ("Conv", [("x", X4), ("w", RNG.standard_normal((3, 1, 3, 2)).astype(np.float32))], {"dilations": [2, 1], "pads": [0, 1, 2, 0], "group": 3}, 1, 17, ("w",)),
    "avgpool-asymmetric": ("AveragePool", [("x", X4)], {"kernel_shape": [2, 3], "pads": [1, 0, 0, 2]}, 1, 17, ()),
    "avgpool-include-pad": ("AveragePool", [("x", X4)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, 1, 17, ()),
    "conv-same-lower": ("Conv", [("x", X4), ("w", RNG.standard_normal((4, 3, 3, 2)).astype(np.float32))], {"auto_pad": "SAME_LOWER", "strides": [2, 1]}, 1, 17, ("w",)),
    "softmax-opset11": ("Softmax", [("x", X4)], {"axis": 2}, 1, 11, ()),
    "split-num-outputs": ("Split", [("x", X4)], {"axis": 2, "num_outputs": 3}, 3, 18, ()),
    "gathernd-batch": ("GatherND", [("x", X4), ("i", I64(0, -1, 2, 1, 1, 0, 2, 0, -1, 1, 0, 2).reshape(2, 3, 2))], {"batch_dims": 1}, 1, 17, ("i",)),
    "gather-negative": ("Gather", [("x", X4), ("i", I64(-1, 0, 2, -2).reshape(2, 2))], {"axis": 3}, 1, 17, ("i",)),
    "reduce-sum-noop": ("ReduceSum", [("x", X4), ("a", np.zeros(0, np.int64))], {"noop_with_empty_axes": 1}, 1, 17, ("a",)),
    "reduce-max-attr": ("ReduceMax", [("x", X4)], {"axes": [1, 3], "keepdims": 0}, 1, 17, ()),
    "integer-div": ("Div", [("a", I64(7, -7, 7, -7)), ("b", I64(2, 2, -2, -2))], {}, 1, 17, ()),
    "cast-float-to-int": ("Cast", [("x", np.array([2.7, -2.7, 0.5, -0.5], np.float32))], {"to": TensorProto.INT32}, 1, 17, ()),
    "mod-sign-of-divisor": ("Mod", [("a", I64(7, -7, 7, -7)), ("b", I64(3, 3, -3, -3))], {}, 1, 17, ()),
    "layernorm-axis1": ("LayerNormalization", [("x", X4), ("s", RNG.standard_normal((7, 6)).astype(np.float32)), ("b", RNG.standard_normal((7, 6)).astype(np.float32))], {"axis": 2, "epsilon": 1e-3}, 1, 17, ("s", "b")),
    "quantize-ties-per-axis": ("QuantizeLinear", [("x", np.array([[0.5, 1.5, 2.5, -0.5], [-1.5, 300.0, -300.0, 7.0]], np.float32)), ("s", np.array([1.0, 0.5], np.float32)), ("z", np.array([3, 0], np.uint8))], {"axis": 0}, 1, 17, ("s", "z")),
    "quantize-int8": ("QuantizeLinear", [("x", X4), ("s", np.array(0.01, np.float32)), ("z", np.array(-3, np.int8))], {}, 1, 17, ("s", "z")),
    "dequantize-per-axis": ("DequantizeLinear", [("x", W7), ("s", np.array([0.1, 0.2, 0.3, 0.4], np.float32)), ("z", np.zeros(4, np.int8))], {"axis": 0}, 1, 17, ("s", "z")),
    "dynamic-quantize": ("DynamicQuantizeLinear", [("x", X4 * 3 + 1)], {}, 3, 17, ()),
    "dynamic-quantize-zero": ("DynamicQuantizeLinear", [("x", np.zeros((3, 4), np.float32))], {}, 3, 17, ()),
    "dynamic-quantize-positive": ("DynamicQuantizeLinear", [("x", np.abs(X4) + 0.25)], {}, 3, 17, ()),
    "matmul-integer-per-column": ("MatMulInteger", [("a", RNG.integers(0, 256, (5, 70)).astype(np.uint8)), ("b", RNG.integers(-64, 64, (70, 9)).astype(np.int8)), ("az", np.array(131, np.uint8)), ("bz", RNG.integers(-5, 5, 9).astype(np.int8))], {}, 1, 17, ("b", "az", "bz")),
    "conv-integer-padded": ("ConvInteger", [("x", U8), ("w", W7), ("xz", np.array(17, np.uint8)), ("wz", np.array(0, np.int8))], {"pads": [1, 0, 1, 2]}, 1, 17, ("w", "xz", "wz")),
    "qlinear-conv": ("QLinearConv", [("x", U8), ("xs", np.array(0.02, np.float32)), ("xz", np.array(120, np.uint8)), ("w", W7), ("ws", np.array([0.01, 0.02, 0.015, 0.03], np.float32)), ("wz", np.zeros(4, np.int8)), ("ys", np.array(0.05, np.float32)), ("yz", np.array(100, np.uint8)), ("b", RNG.integers(-500, 500, 4).astype(np.int32))], {"pads": [1, 1, 1, 1]}, 1, 17, ("xs", "xz", "w", "ws", "wz", "ys", "yz", "b")),
    "qlinear-matmul": ("QLinearMatMul", [("a", RNG.integers(0, 256, (5, 70)).astype(np.uint8)), ("as", np.array(0.02, np.float32)), ("az", np.array(128, np.uint8)), ("b", RNG.integers(-64, 64, (70, 9)).astype(np.int8)), ("bs", np.array(0.01, np.float32)), ("bz", np.array(0, np.int8)), ("ys", np.array(0.3, np.float32)), ("yz", np.array(120, np.uint8))], {}, 1, 17, ("as", "az", "b", "bs", "bz", "ys", "yz")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_operators_match_onnxruntime(case):
    op_type, inputs, attrs, outputs, opset, initializers = CASES[case]
    model, feeds = single(op_type, inputs, attrs, outputs, opset, initializers)
    got = TorchExecutor(model).run_numpy(feeds)
    want = onnxruntime_outputs(model, feeds, optimize=False)
    if case.startswith("qlinear"):  # rule 5: onnxruntime's kernels may round a value one level apart
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and np.max(np.abs(g.astype(int) - w.astype(int))) <= 1
            assert np.mean(g == w) > 0.95
        return
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (case, g.shape, w.shape, g.dtype, w.dtype)
        if w.dtype.kind in "iub":
            np.testing.assert_array_equal(g, w, err_msg=case)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=case)


@pytest.mark.parametrize("zero_point", [0, 77, 255])
def test_integer_products_with_8_bit_weights_equal_the_int64_reference(zero_point):
    a = RNG.integers(0, 256, (2, 3, 9, 8)).astype(np.uint8)
    a[0, 0, 0] = 255
    w = np.where(RNG.random((5, 3, 3, 3)) < 0.5, -128, 127).astype(np.int8)
    model, feeds = single("ConvInteger", [("x", a), ("w", w), ("xz", np.array(zero_point, np.uint8))],
                          {"pads": [1, 1, 1, 1]}, 1, 17, ("w", "xz"))
    got = TorchExecutor(model).run_numpy(feeds)[0]
    padded = np.pad(a.astype(np.int64) - zero_point, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w kh kw
    want = np.einsum("nchwij,ocij->nohw", windows, w.astype(np.int64))
    np.testing.assert_array_equal(got, want)
    b = np.where(RNG.random((200, 7)) < 0.5, -128, 127).astype(np.int8)
    rows = RNG.integers(0, 256, (4, 200)).astype(np.uint8)
    model, feeds = single("MatMulInteger", [("a", rows), ("b", b), ("az", np.array(zero_point, np.uint8)),
                                            ("bz", np.arange(-3, 4).astype(np.int8))], {}, 1, 17, ("b", "az", "bz"))
    want = (rows.astype(np.int64) - zero_point) @ (b.astype(np.int64) - np.arange(-3, 4))
    np.testing.assert_array_equal(TorchExecutor(model).run_numpy(feeds)[0], want)


@pytest.mark.parametrize("passes", ["fold,fuse:norms=on", "fold,fuse:norms=off", "fold,fuse:norms=off,int8"])
@pytest.mark.parametrize("name", ["bert", "gpt", "vit"])
def test_fused_attention_matches_onnxruntime(onnx_model, sample_inputs, tmp_path, name, passes):
    """fuse's com.microsoft ops: GroupQueryAttention on BERT's padding mask (rows padded on
    the right and on the left), MultiHeadAttention causal (GPT-2) and unmasked (ViT), and
    SkipLayerNormalization / BiasGelu / FastGelu (norms=on; fuse's default, auto, keeps them by a
    timing here, so a plain "fuse" made a different graph on a loaded machine). int8 runs on the
    graph without the norm ops: onnxruntime's SkipLayerNormalization and FastGelu (MLAS tanh)
    differ from torch's by an ulp or two (fp32 above: within 1e-5), and on GPT-2 such a difference
    before a DynamicQuantizeLinear flipped one value's rounding, moving one token's logits by 5e-3."""
    path = optimized(onnx_model(name), tmp_path, passes)
    fused = {n.op_type for n in onnx.load(path).graph.node if n.domain == "com.microsoft"}
    assert fused & {"GroupQueryAttention", "MultiHeadAttention"}
    feeds = sample_inputs(name)
    if "attention_mask" in feeds:
        feeds["attention_mask"][0, 11:] = 0
        feeds["attention_mask"][1, :3] = 0
    assert_int8_matches_onnxruntime(path, feeds)  # float tolerance alone where nothing is quantized


def test_unsupported_operators_are_named_before_anything_runs():
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "b", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node, helper.make_node("Relu", ["y"], ["z"]),
                               helper.make_node("SparseMatMulInteger", ["z"], ["w"], domain="ai.graphc")], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])])
    with pytest.raises(UnsupportedModel, match=r"has no implementation of ai.graphc::SparseMatMulInteger, ai.onnx::If$"):
        TorchExecutor(helper.make_model(graph))
    q = RNG.standard_normal((1, 4, 8)).astype(np.float32)
    model, feeds = single("GroupQueryAttention", [("q", q), ("k", q), ("v", q), ("pk", q.reshape(1, 2, 4, 4)),
                                                  ("pv", q.reshape(1, 2, 4, 4))],
                          {"num_heads": 2, "kv_num_heads": 2}, 1, 17, domain="com.microsoft")
    with pytest.raises(UnsupportedModel, match="GroupQueryAttention with a past"):
        TorchExecutor(model).run_numpy(feeds)
    ok, _ = single("Relu", [("x", X4)])
    with pytest.raises(Exception, match="no value given for input"):
        TorchExecutor(ok).run_numpy({})


@pytest.mark.gpu
def test_int8_bert_on_the_gpu(onnx_model, sample_inputs, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    path = optimized(onnx_model("bert"), tmp_path, "fold,int8")
    feeds = sample_inputs("bert")
    assert_int8_matches_onnxruntime(path, feeds, device="cuda", rtol=1e-4, atol=1e-5)
