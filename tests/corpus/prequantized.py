"""Corpus models that are already INT8, written here with onnxruntime's own quantizer from a
small float CNN + MLP head (onnx.helper): one in QDQ format (QuantizeLinear/DequantizeLinear
around float ops) and one in QOperator format (QLinearConv, QLinearMatMul...). The float
model's ``Gemm`` head is excluded from quantization, so each model still has float compute
left for graphc's int8 to quantize."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.corpus import corpus_model

SHAPE = (1, 3, 12, 12)
CALIBRATION_ROWS = 8


def float_model(path: pathlib.Path) -> pathlib.Path:
    """image -> Conv(8) -> Relu -> Conv(8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4)."""
    rng = np.random.default_rng(7)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32),
                                       name)

    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], name="head", transB=1)]
    inits = [weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 8, 8, 3, 3), weight("b2", 8),
             weight("w3", 4, 8), weight("b3", 4)]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                 ["batch", *SHAPE[1:]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _quantize(directory: pathlib.Path, name: str, qdq: bool) -> pathlib.Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.rows = iter([{"image": rng.standard_normal(SHAPE).astype(np.float32)}
                              for _ in range(CALIBRATION_ROWS)])

        def get_next(self):
            return next(self.rows, None)

    source = float_model(directory / f"{name}.float.onnx")
    path = directory / f"{name}.onnx"
    quantize_static(str(source), str(path), Reader(), quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=["head"])
    return path


@corpus_model("small-cnn-qdq", origin="written in tests/corpus/prequantized.py (onnxruntime.quantization, QDQ)",
              tags=("prequantized", "qdq", "cnn"))
def build_qdq(directory: pathlib.Path) -> pathlib.Path:
    return _quantize(directory, "small_cnn_qdq", qdq=True)


@corpus_model("small-cnn-qoperator",
              origin="written in tests/corpus/prequantized.py (onnxruntime.quantization, QOperator)",
              tags=("prequantized", "qoperator", "cnn"))
def build_qoperator(directory: pathlib.Path) -> pathlib.Path:
    return _quantize(directory, "small_cnn_qoperator", qdq=False)
