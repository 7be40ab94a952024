"""graphc.runtime: how sessions are opened."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

import graphc.runtime as runtime


def test_large_protos_open_from_a_file_with_external_weights(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)  # 16 KB: external
    b = rng.standard_normal(64).astype(np.float32)  # 256 B: stays inline
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Add", ["h", "b"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    before = model.SerializeToString()
    path = runtime.write_with_external_weights(model, tmp_path)
    written = onnx.load(str(path), load_external_data=False)
    assert [t.data_location for t in written.graph.initializer] == [onnx.TensorProto.EXTERNAL,
                                                                     onnx.TensorProto.DEFAULT]
    assert model.SerializeToString() == before  # the given model is untouched
    x = rng.standard_normal((3, 64)).astype(np.float32)
    monkeypatch.setattr(runtime, "FILE_SESSION_BYTES", 0)
    got = runtime.open_session(model, 1).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)
