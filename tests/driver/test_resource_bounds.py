"""Resource bounds (issue 14, build item 2): what a small hostile input makes graphc allocate is
refused before it is allocated. Each case runs ``graphc`` in a subprocess and reads that
process's own peak RSS (its `VmHWM`, see `tests.run_graphc_measured`), so the bound is measured, not assumed."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphc import data_files
from graphc.data import load_dataset, model_signature
from graphc.errors import GraphcError
from graphc.model_io import load_model
from tests import CNN, MODELS, run_graphc_measured

PEAK_RSS_LIMIT = 1 * 2**30  # the acceptance bound of issue 14


def graphc(*argv, timeout=300):
    """Run graphc; (returncode, stderr, peak RSS in bytes of that one process)."""
    return run_graphc_measured(argv, timeout)


def assert_refused(result, pattern):
    code, stderr, peak = result
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and pattern in lines[0], (code, stderr)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak:,} bytes"


def concat_doubling_model(path, doublings=40):
    """A constant doubled by ``doublings`` Concats (2^40 int64 values at the end)."""
    nodes = [oh.make_node("Constant", [], ["c0"], value=oh.make_tensor("v", onnx.TensorProto.INT64, [1], [1]))]
    nodes += [oh.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0, name=f"double_{i}")
              for i in range(doublings)]
    nodes += [oh.make_node("ReduceSum", [f"c{doublings}"], ["s"], keepdims=0),
              oh.make_node("Cast", ["s"], ["sf"], to=onnx.TensorProto.FLOAT), oh.make_node("Add", ["x", "sf"], ["y"])]
    graph = oh.make_graph(nodes, "bomb", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("verb", [["optimize", "--passes", "fold"], ["inspect"], ["bench", "--runs", "1"]])
def test_a_concat_doubling_model_is_refused_before_anything_is_computed(verb, tmp_path):
    model = concat_doubling_model(tmp_path / "bomb.onnx")
    before = model.read_bytes()
    argv = [verb[0], model, *verb[1:]] + (["-o", tmp_path / "o.onnx"] if verb[0] == "optimize" else [])
    assert_refused(graphc(*argv), "node 'double_28' (Concat) would compute the constant tensor 'c29' of "
                                  "4,294,967,296 bytes")
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bomb.onnx"]


def test_a_constant_under_the_bound_is_folded(tmp_path):
    """The bound refuses only what exceeds it: 10 doublings (8 KiB) fold as before."""
    model = concat_doubling_model(tmp_path / "small.onnx", doublings=10)
    code, stderr, _ = graphc("optimize", model, "--passes", "fold", "-o", tmp_path / "o.onnx")
    assert code == 0, stderr
    assert [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node] == ["Add"]


@pytest.mark.parametrize("argv", [
    ["optimize", CNN, "--passes", "fold", "--shape", "batch=100000000"],
    ["optimize", CNN, "--passes", "fold,int8", "--shape", "batch=100000000", "--verify"],
    ["bench", CNN, "--batch", "100000000"],
    ["bench", CNN, "--shape", "batch=100000000"],
])
def test_synthetic_inputs_past_the_bound_are_refused_before_they_are_drawn(argv, tmp_path):
    out = ["-o", tmp_path / "o.onnx"] if argv[0] == "optimize" else []
    assert_refused(graphc(*argv, *out), "synthetic inputs would take 78,400,000,000 bytes (input 'image'")
    assert not (tmp_path / "o.onnx").exists()


def test_synthetic_inputs_are_drawn_in_their_own_dtype():
    """uint8 images are drawn as uint8 (not int64 first, then cast): the draw's peak is the
    array itself."""
    from graphc.data import synthetic_dataset

    dataset = synthetic_dataset(load_model(CNN), shapes={"batch": (4096,)})
    image = dataset.inputs["image"]
    assert image.dtype == np.uint8 and image.shape == (4096, 1, 28, 28) and image.max() > 200


def _npz_with_header(path, shape, dtype="<f4", payload=b"\0" * 64, compress=zipfile.ZIP_STORED):
    """An .npz whose one member ``image.npy`` declares ``shape`` but holds ``payload``."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("image.npy", header.getvalue() + payload)
    return path


def test_an_npz_header_declaring_a_petabyte_is_refused_without_allocating(tmp_path):
    path = _npz_with_header(tmp_path / "huge.npz", (2**50 // 784, 1, 28, 28), dtype="|u1")
    with pytest.raises(GraphcError, match=r"array 'image': its header declares shape .* but the file holds 64 bytes"):
        load_dataset(path, model_signature(load_model(CNN)))
    before = path.read_bytes()
    assert_refused(graphc("optimize", CNN, "--passes", "fold,int8", "--data", path, "-o", tmp_path / "o.onnx"),
                   "its header declares shape")
    assert path.read_bytes() == before and not (tmp_path / "o.onnx").exists()


def test_a_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(GraphcError, match="pickled array"):
        data_files.read_npz(path)


@pytest.mark.slow
def test_a_compressed_npz_is_inflated_to_disk_not_memory(tmp_path):
    """An npz of 2 MB that inflates to 1.5 GB: calibration reads the rows it uses, the
    process stays far under the inflated size."""
    rows = 1_900_000  # x 784 bytes = 1.49 GB of uint8 images, zeros compress ~1000x
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("image.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (rows, 1, 28, 28)})
            chunk = bytes(784 * 10_000)
            for _ in range(rows // 10_000):
                member.write(chunk)
    assert path.stat().st_size < 5 * 2**20
    code, stderr, peak = graphc("optimize", CNN, "--passes", "fold,int8", "--data", path, "-o", tmp_path / "o.onnx")
    assert code == 0, stderr
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak:,} bytes for 1.49 GB of inflated data"


def test_npz_members_are_memory_mapped_and_read_only(tmp_path):
    with np.load(MODELS / "fashion_mnist_calib.npz") as npz:
        image = npz["image"]
    np.savez(tmp_path / "stored.npz", image=image)
    np.savez_compressed(tmp_path / "compressed.npz", image=image)
    np.save(tmp_path / "image.npy", image)
    for arrays in (data_files.read_npz(tmp_path / "stored.npz"), data_files.read_npz(tmp_path / "compressed.npz"),
                   {"image": data_files.read_npy(tmp_path / "image.npy")}):
        assert isinstance(arrays["image"], np.memmap) and np.array_equal(arrays["image"], image)
        with pytest.raises(ValueError):
            arrays["image"][0, 0, 0, 0] = 1


def test_a_truncated_npy_is_refused(tmp_path):
    np.save(tmp_path / "image.npy", np.zeros((16, 1, 28, 28), np.uint8))
    (tmp_path / "image.npy").write_bytes((tmp_path / "image.npy").read_bytes()[:-10])
    with pytest.raises(GraphcError, match=r"12,544 bytes\) but the file holds 12,534 bytes"):
        load_dataset(tmp_path / "image.npy", model_signature(load_model(CNN)))
