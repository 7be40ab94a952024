"""graphc inspect --quant: quantized and FP32 compute nodes of a model."""

import json

from graphc.cli import main
from graphc.pipeline import OptimizeRequest, optimize


def _inspect(path, capsys, *extra):
    assert main(["inspect", str(path), "--quant", *extra]) == 0
    return capsys.readouterr().out


def test_inspect_quant_lists_static_dynamic_and_fp32_nodes(onnx_model, tmp_path, capsys):
    cnn = tmp_path / "resnet_int8.onnx"
    optimize(OptimizeRequest(model=onnx_model("resnet"), passes="fold,int8:exclude=Gemm:speed_guard=false", output=cnn, progress=False))
    text = _inspect(cnn, capsys)
    assert "quantization: 1 fp32, 8 static" in text
    rows = json.loads(_inspect(cnn, capsys, "--json"))["quant"]
    assert {(r["op"], r["state"]) for r in rows} == {("Conv", "static"), ("Gemm", "fp32")}
    assert all(r["weight_bits"] in (7, 8) and r["activation"] == "uint8" for r in rows if r["state"] == "static")

    bert = tmp_path / "bert_int8.onnx"
    optimize(OptimizeRequest(model=onnx_model("bert"), passes="fold,int8:weight_bits=8:speed_guard=false", output=bert,
                             progress=False))
    rows = json.loads(_inspect(bert, capsys, "--json"))["quant"]
    states = [r["state"] for r in rows]
    assert states.count("dynamic") == 14 and states.count("fp32") == 4
    assert all(r["weight_bits"] == 8 for r in rows if r["state"] == "dynamic")
    assert all(r.get("reason") == "weight is an activation" for r in rows if r["state"] == "fp32")

    fp32 = _inspect(onnx_model("mlp_bn"), capsys)
    assert "quantization: 2 fp32" in fp32
