"""Models over 2 GB (issue 14, build item 4): a 2.16 GB two-layer MLP in external data goes
through ``fold,int8`` and ``prune:0.3`` end to end (load, passes, after-pass checks, verify,
save with external data), with its outputs compared on a small input. The model is written
chunk by chunk and read back through memory maps, so the test process itself stays small."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from tests import run_graphc_measured

pytestmark = pytest.mark.slow

WIDTH, HIDDEN = 8192, 33000  # 2 x 8192 x 33000 float32 = 2.16 GB > 2 GiB


def _write_ffn(directory: pathlib.Path) -> pathlib.Path:
    """y = relu(x @ w1 + b1) @ w2 + b2, every weight in ``ffn.bin`` beside the model."""
    rng = np.random.default_rng(0)
    data = directory / "ffn.bin"
    tensors = []
    with open(data, "wb") as f:
        for name, shape, scale in (("w1", [WIDTH, HIDDEN], WIDTH ** -0.5), ("b1", [HIDDEN], 0.1),
                                   ("w2", [HIDDEN, WIDTH], HIDDEN ** -0.5), ("b2", [WIDTH], 0.1)):
            offset = f.tell()
            rows_per_chunk = max(1, (64 << 20) // (4 * int(np.prod(shape[1:]))))
            if name == "b1":  # distinct values: a kept hidden neuron is found by its bias
                f.write((rng.permutation(HIDDEN).astype(np.float32) * np.float32(0.2 / HIDDEN) - 0.1).tobytes())
            for start in range(0, shape[0] if name != "b1" else 0, rows_per_chunk):
                rows = min(rows_per_chunk, shape[0] - start)
                f.write((rng.standard_normal((rows, *shape[1:]), dtype=np.float32) * scale).tobytes())
            tensor = onnx.TensorProto(name=name, dims=shape, data_type=onnx.TensorProto.FLOAT,
                                      data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                tensor.external_data.add(key=key, value=value)
            tensors.append(tensor)
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), oh.make_node("Add", ["h", "b1"], ["hb"]),
             oh.make_node("Relu", ["hb"], ["a"]), oh.make_node("MatMul", ["a", "w2"], ["o"], name="fc2"),
             oh.make_node("Add", ["o", "b2"], ["y"])]
    graph = oh.make_graph(nodes, "ffn", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", WIDTH])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", WIDTH])], tensors)
    path = directory / "ffn.onnx"
    path.write_bytes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString())
    return path


def _weights(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The MLP's weights (w1, b1, w2, b2: the constant input of its four nodes in order, whatever
    a pass renamed them to), memory-mapped from the external data."""
    model = onnx.load(str(path), load_external_data=False)
    roles = dict(zip(["w1", "b1", "w2", "b2"], [n.input[1] for n in model.graph.node if n.op_type != "Relu"]))
    arrays = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            arrays[tensor.name] = onnx.numpy_helper.to_array(tensor)
            continue
        info = {e.key: e.value for e in tensor.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        arrays[tensor.name] = np.memmap(path.parent / info["location"], dtype=dtype, mode="r",
                                        offset=int(info.get("offset", 0)), shape=tuple(tensor.dims))
    return {role: arrays[name] for role, name in roles.items()}


def _graphc(*argv) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of one graphc run."""
    return run_graphc_measured(argv, timeout=3000)


@pytest.fixture(scope="module")
def ffn(tmp_path_factory):
    path = _write_ffn(tmp_path_factory.mktemp("large"))
    assert (path.parent / "ffn.bin").stat().st_size > 2**31
    return path


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


X = np.random.default_rng(1).standard_normal((2, WIDTH), dtype=np.float32)


def test_fold_int8_on_a_model_over_2_gb(ffn, tmp_path):
    data = tmp_path / "calib.npz"  # 32 rows: calibration runs them in 16-row pieces (synthetic rows run one by one)
    np.savez(data, x=np.random.default_rng(2).standard_normal((32, WIDTH), dtype=np.float32))
    code, stderr, peak = _graphc("optimize", ffn, "--passes", "fold,int8", "--data", data, "--verify",
                                 "-o", tmp_path / "q.onnx")
    assert code == 0, stderr
    print(f"fold,int8 on a {ffn.with_suffix('.bin').stat().st_size:,}-byte model: peak RSS {peak / 2**30:.2f} GiB")
    quantized = onnx.load(str(tmp_path / "q.onnx"), load_external_data=False)
    assert sum(n.op_type in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "QLinearMatMul")
               for n in quantized.graph.node) >= 2
    expected = _session(ffn).run(None, {"x": X})[0]
    got = _session(tmp_path / "q.onnx").run(None, {"x": X})[0]
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 0.05, error


def test_prune_on_a_model_over_2_gb(ffn, tmp_path):
    code, stderr, peak = _graphc("optimize", ffn, "--passes", "prune:0.3", "-o", tmp_path / "p.onnx")
    assert code == 0, stderr
    print(f"prune:0.3 on a {ffn.with_suffix('.bin').stat().st_size:,}-byte model: peak RSS {peak / 2**30:.2f} GiB")
    original, pruned = _weights(ffn), _weights(tmp_path / "p.onnx")
    kept = pruned["b1"].shape[0]
    assert 0.6 * HIDDEN <= kept <= 0.75 * HIDDEN
    # the kept hidden neurons, found by their bias, and the weights that go with them, unchanged
    index = {float(v): i for i, v in enumerate(np.asarray(original["b1"]))}
    assert len(index) == HIDDEN
    keep = np.array([index[float(v)] for v in pruned["b1"]])
    assert np.array_equal(np.asarray(pruned["w1"]), np.asarray(original["w1"][:, keep]))
    assert np.array_equal(np.asarray(pruned["w2"]), np.asarray(original["w2"][keep]))
    reference = np.maximum(X @ original["w1"][:, keep] + original["b1"][keep], 0) @ original["w2"][keep] + original["b2"]
    got = _session(tmp_path / "p.onnx").run(None, {"x": X})[0]
    np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-3)
