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


def _two_output_model():
    """x [n, 4] -> h = x * 2 (intermediate) -> y = h + 1 (output)."""
    graph = oh.make_graph([oh.make_node("Mul", ["x", "two"], ["h"]), oh.make_node("Add", ["h", "one"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
                          [onnx.numpy_helper.from_array(np.float32([2.0]), "two"),
                           onnx.numpy_helper.from_array(np.float32([1.0]), "one")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_tap_hands_every_piece_of_every_tensor_in_order_and_leaves_the_model_alone():
    from graphc.data import Dataset

    model = _two_output_model()
    before = model.SerializeToString()
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    seen = []
    # 2 tensors x 16 bytes a row; 64 bytes a run: 2 rows a run after the 1-row first piece
    run = runtime.tap(model, ["h", "y"], Dataset({"x": x}, None, "test"),
                      lambda name, values, piece: seen.append((name, piece, values.copy())), batch_size=4,
                      run_bytes=64)
    assert model.SerializeToString() == before
    pieces = [piece for name, piece, _ in seen if name == "h"]
    assert [(p.batch, p.start, p.stop) for p in pieces] == [(0, 0, 1), (0, 1, 3), (0, 3, 4), (1, 4, 6), (1, 6, 8),
                                                            (2, 8, 10)]
    assert (run.rows, run.batches, run.runs) == (10, 3, 6)
    h = np.concatenate([v for name, _, v in seen if name == "h"])
    y = np.concatenate([v for name, _, v in seen if name == "y"])
    np.testing.assert_array_equal(h, x * 2)
    np.testing.assert_array_equal(y, x * 2 + 1)


def test_tap_on_a_path_writes_its_probe_beside_the_model_and_removes_it(tmp_path):
    from graphc.data import Dataset

    path = tmp_path / "m.onnx"
    onnx.save(_two_output_model(), str(path))
    before = path.read_bytes()
    got = []
    runtime.tap(path, ["h"], Dataset({"x": np.ones((3, 4), np.float32)}, None, "test"),
                lambda name, values, piece: got.append(values))
    np.testing.assert_array_equal(np.concatenate(got), np.full((3, 4), 2.0, np.float32))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_tap_cuts_each_input_on_its_batch_axis_and_passes_scalars_whole():
    """State rows on axis 1, a 0-d input: every 1-row piece gives the rows' own values (cutting
    the state on axis 0 would broadcast one half of it over the other inputs' rows)."""
    from graphc.data import model_signature, validate
    from tests.corpus.stateful_rnn import toy_state_model

    model = toy_state_model()
    rng = np.random.default_rng(0)
    x, s = rng.standard_normal((7, 4)).astype(np.float32), rng.standard_normal((2, 7, 4)).astype(np.float32)
    data = validate({"x": x, "s": s, "k": np.float32(3.0)}, model_signature(model), "test")
    assert data.axes == {"x": 0, "s": 1, "k": None}
    seen = []
    run = runtime.tap(model, ["h", "y"], data, lambda name, values, piece: seen.append((name, piece, values.copy())),
                      batch_size=4, run_bytes=1)
    assert (run.rows, run.batches, run.runs) == (7, 2, 7)
    assert [(p.start, p.stop) for name, p, _ in seen if name == "y"] == [(i, i + 1) for i in range(7)]
    y = np.concatenate([v for name, _, v in seen if name == "y"])
    np.testing.assert_allclose(y, x * (s[0] + s[1]) * 3.0, rtol=1e-6)
