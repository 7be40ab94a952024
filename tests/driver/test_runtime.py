"""graphc.runtime: how sessions are opened."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh

import graphc.model_io as model_io
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
    path = model_io.write_with_external_weights(model, tmp_path)
    written = onnx.load(str(path), load_external_data=False)
    assert [t.data_location for t in written.graph.initializer] == [onnx.TensorProto.EXTERNAL,
                                                                     onnx.TensorProto.DEFAULT]
    assert model.SerializeToString() == before  # the given model is untouched
    x = rng.standard_normal((3, 64)).astype(np.float32)
    monkeypatch.setattr(runtime, "FILE_SESSION_BYTES", 0)
    got = runtime.open_session(model, 1).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)


def test_graph_written_with_external_weights_runs_like_the_exported_model(tmp_path, onnx_model, sample_inputs):
    """graphc.model_io.write_graph_with_external_weights: the BERT fixture written tensor by
    tensor gives onnxruntime's outputs of the exported model bit for bit; the big constants
    are in weights.bin (not the .onnx), and the graph's lazily loaded constants stay lazy."""
    import onnx_graphsurgeon as gs

    from graphc.graph import to_graph, to_model
    from graphc.model_io import write_graph_with_external_weights

    source = onnx.load(onnx_model("bert"))
    graph = to_graph(source)
    lazy_before = {t.name for t in graph.tensors().values()
                   if isinstance(t, gs.Constant) and isinstance(t._values, gs.ir.tensor.LazyValues)}
    path = write_graph_with_external_weights(graph, source, tmp_path)
    lazy_after = {t.name for t in graph.tensors().values()
                  if isinstance(t, gs.Constant) and isinstance(t._values, gs.ir.tensor.LazyValues)}
    assert lazy_before and lazy_after == lazy_before
    skeleton = onnx.load(str(path), load_external_data=False)
    big = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
           for t in source.graph.initializer if onnx.numpy_helper.to_array(t).nbytes > model_io.INLINE_TENSOR_BYTES}
    external = {t.name: int(dict((e.key, e.value) for e in t.external_data)["length"])
                for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert big and external == big
    feeds = sample_inputs("bert", batch=2, seed=3)
    want = runtime.open_session(to_model(graph, source)).run(None, feeds)
    got = runtime.open_session(path).run(None, feeds)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
