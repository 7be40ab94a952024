"""int8:target=tensorrt: the structural rules of TensorRT explicit quantization (rule 6).

The checker ``tensorrt_violations`` is tested both ways: clean on graphc's TensorRT output
for several topologies, and catching each broken rule on models that break it.
"""

import numpy as np
import onnx
import pytest

from graphc.pipeline import OptimizeRequest, optimize
from graphc.passes.int8 import tensorrt_violations


def quantize(source, tmp_path, spec):
    out = tmp_path / "trt.onnx"
    report = optimize(OptimizeRequest(model=source, passes=spec, output=out, verify=True, progress=False))
    return onnx.load(out), report.passes[-1]


@pytest.mark.parametrize("name", ["resnet", "depthwise", "bert", "vit"])
def test_tensorrt_output_follows_the_rules(name, onnx_model, tmp_path):
    model, step = quantize(onnx_model(name), tmp_path, "fold,int8:target=tensorrt")
    assert tensorrt_violations(model) == []
    assert step.stats["dynamic_nodes"] == 0 and step.stats["static_nodes"] > 0  # no dynamic form on TensorRT
    assert step.stats["weight_bits"] == 8 and step.verify[0].cosine >= 0.99
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in qdq)
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        source = producers.get(q.input[0])
        (dq,) = readers[q.output[0]]
        assert {r.op_type for r in readers[dq.output[0]]} <= {"Add", "Conv", "Gemm", "MatMul"}
        if source is not None and source.op_type in ("Conv", "Gemm", "MatMul"):  # a residual Add's input
            assert "Add" in {r.op_type for r in readers[dq.output[0]]}
    if name == "resnet":  # the three residual Adds read DQ on both inputs
        adds = [n for n in model.graph.node if n.op_type == "Add"]
        assert len(adds) == 3
        assert all(producers[i].op_type == "DequantizeLinear" for n in adds for i in n.input)


def test_checker_catches_each_broken_rule(onnx_model, tmp_path):
    source = onnx_model("resnet")
    ort_model, _ = quantize(source, tmp_path, "fold,int8:target=ort:speed_guard=false")
    problems = tensorrt_violations(ort_model)
    assert any("is not int8 0" in p for p in problems)  # u8 activations, int32 bias zero points
    assert any("bias is dequantized int32" in p for p in problems)

    model, _ = quantize(source, tmp_path, "fold,int8:target=tensorrt")
    producers = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    dq = producers[add.input[1]]
    q = producers[dq.input[0]]
    add.input[1] = q.input[0]  # the residual branch bypasses its Q/DQ pair
    problems = tensorrt_violations(model)
    assert any("residual Add" in p for p in problems)

    model, _ = quantize(source, tmp_path, "fold,int8:target=tensorrt")
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    producers = {o: n for n in model.graph.node for o in n.output}
    conv.input[0] = producers[producers[conv.input[0]].input[0]].input[0]  # data input unquantized
    assert any("data input" in p for p in tensorrt_violations(model))
