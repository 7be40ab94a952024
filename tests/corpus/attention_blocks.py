"""Attention blocks written here with onnx.helper, in the layouts other exporters produce.

``fused-qkv-slice`` (Paddle2ONNX's layout, opset 12, as in PP-OCRv4's recognizer): one
MatMul makes Q, K and V together, ``Reshape [B, T, 3, heads, head_dim] -> Transpose
[2, 0, 3, 1, 4] -> Slice(axis 0) -> Squeeze(axis 0)`` takes each of them apart (a cut along
the axis that holds the three parts, not along the channels), then scaled dot-product
attention, an output projection with a residual, and a ReLU FFN. The fused projection's
group must block at the Slice (and nothing downstream may read its stale annotation); the
FFN neurons stay prunable.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto, numpy_helper

from tests.corpus import corpus_model

T, C, HEADS, FFN = 8, 32, 4, 64


def _fused_qkv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    head_dim = C // HEADS
    inits = []

    def const(name, values, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def weight(name, *shape):
        return const(name, rng.standard_normal(shape) / np.sqrt(shape[0]))

    nodes = [
        oh.make_node("MatMul", ["x", weight("qkv.w", C, 3 * C)], ["qkv_mm"], name="qkv.MatMul"),
        oh.make_node("Add", ["qkv_mm", weight("qkv.b", 3 * C)], ["qkv"], name="qkv.Add"),
        oh.make_node("Reshape", ["qkv", const("qkv.shape", [0, -1, 3, HEADS, head_dim], np.int64)], ["qkv5"],
                     name="qkv.Reshape"),
        oh.make_node("Transpose", ["qkv5"], ["qkv_t"], perm=[2, 0, 3, 1, 4], name="qkv.Transpose"),
    ]
    for i, part in enumerate("qkv"):
        nodes += [
            oh.make_node("Slice", ["qkv_t", const(f"{part}.start", [i], np.int64),
                                   const(f"{part}.end", [i + 1], np.int64), const(f"{part}.axes", [0], np.int64)],
                         [f"{part}_s"], name=f"{part}.Slice"),
            oh.make_node("Squeeze", [f"{part}_s"], [part], axes=[0], name=f"{part}.Squeeze"),  # opset 12: attribute
        ]
    nodes += [
        oh.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2], name="k.Transpose"),
        oh.make_node("MatMul", ["q", "k_t"], ["scores_raw"], name="scores.MatMul"),
        oh.make_node("Mul", ["scores_raw", const("scale", 1.0 / np.sqrt(head_dim))], ["scores"], name="scores.Mul"),
        oh.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="probs.Softmax"),
        oh.make_node("MatMul", ["probs", "v"], ["ctx"], name="ctx.MatMul"),
        oh.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3], name="ctx.Transpose"),
        oh.make_node("Reshape", ["ctx_t", const("ctx.shape", [0, -1, C], np.int64)], ["ctx_m"], name="ctx.Reshape"),
        oh.make_node("MatMul", ["ctx_m", weight("proj.w", C, C)], ["proj"], name="proj.MatMul"),
        oh.make_node("Add", ["proj", "x"], ["h"], name="residual.Add"),
        oh.make_node("MatMul", ["h", weight("ffn1.w", C, FFN)], ["f1_mm"], name="ffn1.MatMul"),
        oh.make_node("Add", ["f1_mm", weight("ffn1.b", FFN)], ["f1"], name="ffn1.Add"),
        oh.make_node("Relu", ["f1"], ["f1_act"], name="ffn.Relu"),
        oh.make_node("MatMul", ["f1_act", weight("ffn2.w", FFN, C)], ["y"], name="ffn2.MatMul"),
    ]
    graph = oh.make_graph(nodes, "fused_qkv_slice", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["B", T, C])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["B", T, C])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 12)], producer_name="graphc-tests")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


@corpus_model("fused-qkv-slice", origin="written in tests/corpus/attention_blocks.py (onnx.helper, Paddle2ONNX layout)",
              tags=("attention", "opset<13", "slice"))
def build(directory: pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(directory) / "fused_qkv_slice.onnx"
    onnx.save(_fused_qkv_model(), str(path))
    return path
