"""Rule 10: activation chains stay integer through onnxruntime's QLinear element-wise kernels.

Each block sits between two Convs (so the chain starts and ends quantized); the output model
is checked against onnxruntime on the original (cosine), and onnxruntime's optimized graph
(``optimized_model_filepath``) must hold the fused QLinear* kernels and none of the block's
float ops. The speed guard is off: placement, not speed, is under test.
"""

import collections

import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from graphc.metrics import cosine_per_sample
from graphc.passes.int8.activation_chains import constant_qparams, drop_rescales
from graphc.pipeline import OptimizeRequest, optimize
from graphc.runtime import open_session, session_options

FLOAT = onnx.TensorProto.FLOAT
C = 16


def _block(kind: str):
    """(nodes, initializers) from tensor ``c`` (the first Conv's output) to tensor ``a``."""
    rng = np.random.default_rng(1)
    inits = {}
    if kind == "silu":
        return [oh.make_node("Sigmoid", ["c"], ["s"]), oh.make_node("Mul", ["c", "s"], ["a"])], inits
    if kind == "hardswish":
        return [oh.make_node("HardSwish", ["c"], ["a"])], inits
    if kind == "paddle_hardswish":  # x * Clip(x + 3, 0, 6) / 6, as Paddle exports it
        inits.update(three=np.array(3, np.float32), zero=np.array(0, np.float32), six=np.array(6, np.float32))
        return [oh.make_node("Add", ["c", "three"], ["p"]), oh.make_node("Clip", ["p", "zero", "six"], ["r"]),
                oh.make_node("Mul", ["c", "r"], ["m"]), oh.make_node("Div", ["m", "six"], ["a"])], inits
    if kind == "se_hardsigmoid":  # squeeze-excite with a HardSigmoid gate and a per-channel bias Add
        inits.update(w1=rng.standard_normal((4, C, 1, 1)).astype(np.float32) * 0.3,
                     w2=rng.standard_normal((C, 4, 1, 1)).astype(np.float32) * 0.3,
                     bias=rng.standard_normal((1, C, 1, 1)).astype(np.float32) * 0.2)
        return [oh.make_node("GlobalAveragePool", ["c"], ["g"]), oh.make_node("Conv", ["g", "w1"], ["g1"]),
                oh.make_node("Relu", ["g1"], ["g2"]), oh.make_node("Conv", ["g2", "w2"], ["g3"]),
                oh.make_node("Add", ["g3", "bias"], ["g4"]),
                oh.make_node("HardSigmoid", ["g4"], ["gate"], alpha=0.2, beta=0.5),
                oh.make_node("Mul", ["c", "gate"], ["a"])], inits
    if kind == "leaky":
        return [oh.make_node("LeakyRelu", ["c"], ["a"], alpha=0.1)], inits
    if kind == "split":  # C2f-style: Split, a SiLU on one half, Concat
        inits["sizes"] = np.array([C // 2, C // 2], np.int64)
        return [oh.make_node("Split", ["c", "sizes"], ["h0", "h1"], axis=1), oh.make_node("Sigmoid", ["h1"], ["s"]),
                oh.make_node("Mul", ["h1", "s"], ["m"]),
                oh.make_node("Concat", ["h0", "h1", "m"], ["a"], axis=1)], inits
    if kind == "resize":  # an FPN-style nearest upsampling
        inits["scales"] = np.array([1, 1, 2, 2], np.float32)
        return [oh.make_node("Resize", ["c", "", "scales"], ["a"], mode="nearest")], inits
    raise ValueError(kind)


def _model(tmp_path, kind: str):
    rng = np.random.default_rng(0)
    nodes, inits = _block(kind)
    cin = 3 * C // 2 if kind == "split" else C
    inits.update(w0=rng.standard_normal((C, 8, 3, 3)).astype(np.float32) * 0.3,
                 b0=rng.standard_normal(C).astype(np.float32) * 0.3,
                 w3=rng.standard_normal((8, cin, 1, 1)).astype(np.float32) * 0.3)
    graph = oh.make_graph(
        [oh.make_node("Conv", ["x", "w0", "b0"], ["c"], pads=[1, 1, 1, 1]), *nodes,
         oh.make_node("Conv", ["a", "w3"], ["y"])],
        kind, [oh.make_tensor_value_info("x", FLOAT, [1, 8, 16, 16])],
        [oh.make_tensor_value_info("y", FLOAT, [1, 8, "h", "w"])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / f"{kind}.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def _optimized_ops(path, tmp_path) -> collections.Counter:
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _quantize(tmp_path, source):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 8, 16, 16)).astype(np.float32))
    out = tmp_path / "int8.onnx"
    report = optimize(OptimizeRequest(model=source, passes="int8:speed_guard=false", output=out,
                                      data=tmp_path / "calib.npz", verify=True, progress=False))
    feeds = {"x": rng.standard_normal((1, 8, 16, 16)).astype(np.float32)}
    want, got = open_session(source).run(None, feeds)[0], open_session(out).run(None, feeds)[0]
    cosine = cosine_per_sample(want.reshape(1, -1).astype(np.float64), got.reshape(1, -1).astype(np.float64))
    return out, report.passes[-1].stats, float(cosine.min())


# kind, fused kernels that must appear, float ops that must be gone from onnxruntime's graph
CASES = [
    ("silu", {"QLinearSigmoid", "QLinearMul"}, {"Sigmoid", "Mul", "QuickGelu"}),
    ("hardswish", {"QLinearAdd", "QLinearMul"}, {"HardSwish", "HardSigmoid", "Add", "Mul", "Clip"}),
    ("paddle_hardswish", {"QLinearAdd", "QLinearMul"}, {"Add", "Clip", "Mul", "Div"}),
    ("se_hardsigmoid", {"QLinearGlobalAveragePool", "QLinearAdd", "QLinearMul"}, {"HardSigmoid", "Mul", "Add"}),
    ("leaky", {"QLinearLeakyRelu"}, {"LeakyRelu"}),
    ("split", {"QLinearSigmoid", "QLinearMul", "QLinearConcat"}, {"Sigmoid", "Mul", "Concat"}),
    ("resize", {"Resize"}, set()),  # on the integers: no Q/DQ around it (counted below)
]


@pytest.mark.parametrize("kind,fused,gone", CASES, ids=[c[0] for c in CASES])
def test_chain_runs_in_fused_integer_kernels(kind, fused, gone, tmp_path):
    source = _model(tmp_path, kind)
    out, stats, cosine = _quantize(tmp_path, source)
    assert cosine >= 0.99, cosine
    ops = _optimized_ops(out, tmp_path)
    assert fused <= set(ops), ops
    assert not gone & set(ops), ops
    # every Conv fused but the last (its output is the graph output: rule 3 leaves it float)
    assert ops["QLinearConv"] == sum(1 for n in onnx.load(source).graph.node if n.op_type == "Conv") - 1
    assert ops["Conv"] == 1 and ops["QuantizeLinear"] == 1  # the graph input's Q
    assert ops["DequantizeLinear"] == 2  # the last Conv's input and weight


def test_rescales_are_dropped_and_constants_quantized(tmp_path):
    _, stats, _ = _quantize(tmp_path, _model(tmp_path, "paddle_hardswish"))
    assert stats["rescales_dropped"] == 1 and stats["chain_constants_quantized"] == 1  # the / 6; the + 3
    _, stats, _ = _quantize(tmp_path, _model(tmp_path, "hardswish"))
    assert stats["rescales_dropped"] == 1 and stats["chain_constants_quantized"] == 1  # * 1/6; + 3


def test_scalar_constant_is_exact_in_u8():
    for value in (3.0, 2.5, -0.75, 1e-3):
        qp = constant_qparams(np.array(value, np.float32))
        q = np.clip(np.round(value / float(qp.scale)) + int(qp.zero_point), 0, 255)
        assert abs((q - int(qp.zero_point)) * float(qp.scale) - value) <= 1e-6 * abs(value)


def _qdq_div(scale_in: float, scale_out: float, zero_out: int = 128):
    x = gs.Variable("x", np.float32, [4])
    tensors = {}

    def q(name, src, scale, zero):
        out = gs.Variable(f"{name}_q", np.uint8, [4])
        deq = gs.Variable(f"{name}_dq", np.float32, [4])
        consts = [gs.Constant(f"{name}_s", np.array(scale, np.float32)),
                  gs.Constant(f"{name}_z", np.array(zero, np.uint8))]
        tensors[name] = deq
        return [gs.Node("QuantizeLinear", f"{name}_Q", {}, [src, *consts], [out]),
                gs.Node("DequantizeLinear", f"{name}_DQ", {}, [out, *consts], [deq])]

    nodes = q("m", x, scale_in, 128)
    h = gs.Variable("h", np.float32, [4])
    nodes.append(gs.Node("Div", "div", {}, [tensors["m"], gs.Constant("six", np.array(6, np.float32))], [h]))
    nodes += q("h", h, scale_out, zero_out)
    y = gs.Variable("y", np.float32, [4])
    nodes.append(gs.Node("Relu", "relu", {}, [tensors["h"]], [y]))
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)


def test_drop_rescales_only_when_parameters_agree():
    graph = _qdq_div(0.06, 0.01)
    assert drop_rescales(graph) == 1 and "Div" not in {n.op for n in graph.nodes}
    feeds = {"x": np.array([-3.0, 0.0, 1.5, 6.0], np.float32)}
    got = open_session(gs.export_onnx(graph)).run(None, feeds)[0]
    assert np.allclose(got, np.maximum(feeds["x"], 0) / 6, atol=0.02)
    for mismatched in (_qdq_div(0.06, 0.02), _qdq_div(0.06, 0.01, zero_out=100)):
        assert drop_rescales(mismatched) == 0 and "Div" in {n.op for n in mismatched.nodes}
