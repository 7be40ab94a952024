"""Stateful recurrent models written here (issue 13): state inputs whose batch axis is 1 and a
0-d sample-rate input, the layout of streaming audio models (silero-vad, voicefilter-lite).

- ``gru-state``: ``x [batch, time, 8]``, ``h0 [1, batch, 16]``, ``sr`` (0-d int64) ->
  ``y [batch, time, 4]``, ``hN [1, batch, 16]``; dims named, so the batch axes come from
  the name ``batch`` (data rule 3).
- ``lstm-state-unnamed``: a bidirectional LSTM, ``x [?, ?, 8]``, ``h0``/``c0 [2, ?, 16]``,
  ``sr`` -> ``y [?, ?, 4]``, ``hN``/``cN [2, ?, 16]``; every dynamic dim unnamed, as the
  If-based silero-vad export has them (data rule 4).

Both compare ``sr`` with 16000 (``Where(Equal(sr, 16000), y, -y)``): a wrong sample rate
flips the output, so inputs that do not carry the accepted value are visible in the outputs.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.corpus import corpus_model

FEATURES, HIDDEN, CLASSES = 8, 16, 4
SAMPLE_RATE = 16000


def _weights(rng, name: str, *shape) -> onnx.TensorProto:
    return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)


def _head(rng, directions: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Y [time, dirs, batch, H] -> y [batch, time, 4], negated unless sr == 16000."""
    nodes = [
        helper.make_node("Transpose", ["Y"], ["Y_btdh"], perm=[2, 0, 1, 3]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Slice", ["x_shape", "zero", "two"], ["bt"]),
        helper.make_node("Concat", ["bt", "features"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["Y_btdh", "flat_shape"], ["Y_flat"]),
        helper.make_node("MatMul", ["Y_flat", "W_out"], ["logits"]),
        helper.make_node("Add", ["logits", "b_out"], ["scores"]),
        helper.make_node("Equal", ["sr", "rate"], ["accepted"]),
        helper.make_node("Neg", ["scores"], ["flipped"]),
        helper.make_node("Where", ["accepted", "scores", "flipped"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([directions * HIDDEN], np.int64), "features"),
        numpy_helper.from_array(np.array(SAMPLE_RATE, np.int64), "rate"),
        _weights(rng, "W_out", directions * HIDDEN, CLASSES),
        _weights(rng, "b_out", CLASSES),
    ]
    return nodes, initializers


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="graphc-tests")
    onnx.checker.check_model(model, full_check=True)
    return model


@corpus_model("gru-state", origin="written in tests/corpus/stateful_rnn.py", tags=("stateful", "rnn"))
def build_gru(directory: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(13)
    head, head_weights = _head(rng, 1)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["x_tbf", "W", "R", "B", "", "h0"], ["Y", "hN"], hidden_size=HIDDEN,
                         linear_before_reset=1),
        *head,
    ]
    weights = [_weights(rng, "W", 1, 3 * HIDDEN, FEATURES), _weights(rng, "R", 1, 3 * HIDDEN, HIDDEN),
               _weights(rng, "B", 1, 6 * HIDDEN)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", FEATURES]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", HIDDEN]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", CLASSES]),
               helper.make_tensor_value_info("hN", TensorProto.FLOAT, [1, "batch", HIDDEN])]
    path = directory / "gru-state.onnx"
    onnx.save(_model(nodes, inputs, outputs, weights + head_weights, "gru_state"), str(path))
    return path


@corpus_model("lstm-state-unnamed", origin="written in tests/corpus/stateful_rnn.py", tags=("stateful", "rnn"))
def build_lstm(directory: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(14)
    head, head_weights = _head(rng, 2)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_tbf", "W", "R", "B", "", "h0", "c0"], ["Y", "hN", "cN"], hidden_size=HIDDEN,
                         direction="bidirectional"),
        *head,
    ]
    weights = [_weights(rng, "W", 2, 4 * HIDDEN, FEATURES), _weights(rng, "R", 2, 4 * HIDDEN, HIDDEN),
               _weights(rng, "B", 2, 8 * HIDDEN)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, FEATURES]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2, None, HIDDEN]),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, [2, None, HIDDEN]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, CLASSES]),
               helper.make_tensor_value_info("hN", TensorProto.FLOAT, [2, None, HIDDEN]),
               helper.make_tensor_value_info("cN", TensorProto.FLOAT, [2, None, HIDDEN])]
    path = directory / "lstm-state-unnamed.onnx"
    onnx.save(_model(nodes, inputs, outputs, weights + head_weights, "lstm_state_unnamed"), str(path))
    return path


def toy_state_model() -> onnx.ModelProto:
    """Not a corpus entry: the smallest model whose rows live on different axes, for unit
    tests of row slicing. ``x [batch, 4]``, ``s [2, batch, 4]``, ``k`` (0-d) ->
    ``y = x * (s[0] + s[1]) * k`` ``[batch, 4]``; cutting ``s`` on axis 0 instead of 1 still
    runs (broadcasting) but gives other values."""
    nodes = [helper.make_node("ReduceSum", ["s", "axis0"], ["total"], keepdims=0),
             helper.make_node("Mul", ["x", "total"], ["h"]),
             helper.make_node("Mul", ["h", "k"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "batch", 4]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])]
    return _model(nodes, inputs, outputs, [numpy_helper.from_array(np.array([0], np.int64), "axis0")], "toy_state")
