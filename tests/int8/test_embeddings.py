"""int8 rule 9 (target=ort): constant tables read only by Gather (embeddings) are stored as
s8 per column and restored after the Gather; checked against onnxruntime's execution of the
produced model and a numpy reference of the stored integers."""

import collections

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from graphc.pipeline import OptimizeRequest, optimize
from graphc.runtime import open_session, session_options
from tests.int8 import no_speed_guard

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
V, D = 500, 16  # 8000 values: above the 4096 threshold


def _model(tmp_path, rng, shared_with_matmul=False):
    """ids -> Gather(table) [+ Gather(small)] -> MatMul(w) -> y; optionally the table is
    also a MatMul weight (tied embeddings)."""
    inits = {"table": (rng.standard_normal((V, D)) * rng.uniform(0.01, 1.0, D)).astype(np.float32),
             "small": rng.standard_normal((4, D)).astype(np.float32),
             "w": rng.standard_normal((D, 8)).astype(np.float32)}
    nodes = [oh.make_node("Gather", ["table", "ids"], ["rows"]), oh.make_node("Gather", ["small", "types"], ["extra"]),
             oh.make_node("Add", ["rows", "extra"], ["h"]), oh.make_node("MatMul", ["h", "w"], ["y"])]
    outputs = [oh.make_tensor_value_info("y", FLOAT, ["b", "s", 8])]
    if shared_with_matmul:
        nodes.append(oh.make_node("MatMul", ["h", "table_t"], ["logits"]))
        nodes.insert(0, oh.make_node("Transpose", ["table"], ["table_t"]))
        outputs.append(oh.make_tensor_value_info("logits", FLOAT, ["b", "s", V]))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("ids", INT64, ["b", "s"]),
                                       oh.make_tensor_value_info("types", INT64, ["b", "s"])], outputs,
                          [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / "m.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path, inits


def _feeds(rng, batch=4, seq=9):
    return {"ids": rng.integers(0, V, (batch, seq), dtype=np.int64),
            "types": rng.integers(0, 4, (batch, seq), dtype=np.int64)}


def _quantize(tmp_path, model, spec, feeds, out="q.onnx"):
    np.savez(tmp_path / "calib.npz", **feeds)
    report = optimize(OptimizeRequest(model=model, passes=no_speed_guard(spec), output=tmp_path / out,
                                      data=tmp_path / "calib.npz", progress=False))
    q = onnx.load(tmp_path / out)
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    return tmp_path / out, q, stored, report.passes[-1].stats


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_table_is_s8_per_column_and_rows_match_the_reference(tmp_path, mode):
    rng = np.random.default_rng(0)
    model, inits = _model(tmp_path, rng)
    out, q, stored, stats = _quantize(tmp_path, model, f"int8:mode={mode}", _feeds(rng, 16))
    assert stats["embeddings_quantized"] == 1
    (gather,) = [n for n in q.graph.node if n.op_type == "Gather" and stored[n.input[0]].shape == (V, D)]
    table = stored[gather.input[0]]
    assert table.dtype == np.int8 and np.abs(table.astype(np.int16)).max() == 127
    readers = [n for n in q.graph.node if gather.output[0] in n.input]
    (cast,) = readers
    (mul,) = [n for n in q.graph.node if cast.output[0] in n.input]
    assert cast.op_type == "Cast" and mul.op_type == "Mul"
    scale = stored[mul.input[1]]
    np.testing.assert_allclose(scale, np.abs(inits["table"]).max(axis=0) / 127, rtol=1e-6)
    assert np.abs(table * scale - inits["table"]).max() <= scale.max() / 2 * (1 + 1e-6)  # round to nearest
    assert stored["small"].dtype == np.float32  # 64 values: below the threshold, left float
    # the rows onnxruntime computes are exactly the stored integers times the column scales
    probe = onnx.load(out)
    probe.graph.output.append(onnx.ValueInfoProto(name="rows"))
    feeds = _feeds(rng, 3, 5)
    rows = open_session(probe).run(["rows"], feeds)[0]
    np.testing.assert_array_equal(rows, table[feeds["ids"]].astype(np.float32) * scale)
    # and the model stays close to FP32
    want = open_session(model).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    # onnxruntime keeps the Gather on the int8 table (nothing folds it back to float)
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    tables = [t for t in optimized.graph.initializer if tuple(t.dims) == (V, D)]
    assert [t.data_type for t in tables] == [onnx.TensorProto.INT8]


def test_tables_with_other_readers_and_switches_stay_float(tmp_path):
    rng = np.random.default_rng(1)
    model, _ = _model(tmp_path, rng, shared_with_matmul=True)  # the table is also a MatMul weight
    _, q, stored, stats = _quantize(tmp_path, model, "int8:mode=static", _feeds(rng, 8))
    assert stats["embeddings_quantized"] == 0 and stored["table"].dtype == np.float32
    model, _ = _model(tmp_path, rng)
    for spec in ("int8:mode=static:embeddings=false", "int8:target=tensorrt"):
        _, q, stored, stats = _quantize(tmp_path, model, spec, _feeds(rng, 8), out="off.onnx")
        assert stats.get("embeddings_quantized", 0) == 0 and stored["table"].dtype == np.float32
        assert not [n for n in q.graph.node if n.op_type == "Cast"]


def test_bert_fixture_embeddings(onnx_model, sample_inputs, tmp_path):
    """The BERT fixture: every large table read only by Gather becomes int8, the file shrinks
    by 3/4 of those tables' bytes, and the logits stay within cosine 0.99 of FP32."""
    source = onnx_model("bert")
    model = onnx.load(source)
    readers = collections.defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            readers[name].add(node.op_type)
    tables = [t for t in model.graph.initializer if len(t.dims) == 2 and np.prod(t.dims) >= 4096
              and t.data_type == onnx.TensorProto.FLOAT and readers[t.name] == {"Gather"}]
    assert tables  # the word (and position) embeddings
    sizes = {}
    for spec in ("fold,int8:speed_guard=false", "fold,int8:speed_guard=false:embeddings=false"):
        out = tmp_path / f"{spec.replace(':', '_').replace(',', '_')}.onnx"
        report = optimize(OptimizeRequest(model=source, passes=spec, output=out, verify=True, progress=False))
        stats = report.passes[-1].stats
        sizes[spec] = out.stat().st_size
        if "embeddings=false" not in spec:
            assert stats["embeddings_quantized"] == len(tables)
            feeds = sample_inputs("bert", batch=8, seed=2)
            want = open_session(source).run(None, feeds)[0].astype(np.float64)
            got = open_session(out).run(None, feeds)[0].astype(np.float64)
            cosine = (want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1)
            assert cosine.min() >= 0.99
    saved = sizes["fold,int8:speed_guard=false:embeddings=false"] - sizes["fold,int8:speed_guard=false"]
    table_bytes = sum(4 * int(np.prod(t.dims)) for t in tables)
    assert saved >= 0.74 * table_bytes
