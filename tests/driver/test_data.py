"""Data sources: .npz, a directory of .npy, synthetic inputs; validation messages."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphc.data import load_dataset, model_signature, parse_shapes, synthetic_dataset
from graphc.errors import GraphcError


def image_model(batch="N") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def token_model() -> onnx.ModelProto:
    """input_ids indexes a 50-row embedding table; mask and type ids are plain inputs."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    table = helper.make_tensor("table", TensorProto.FLOAT, [50, 4], np.ones(200, np.float32))
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["token_type_ids"], ["t"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["m", "t"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
             helper.make_node("Mul", ["emb", "s3"], ["out"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 4])
    graph = helper.make_graph(nodes, "g", inputs, [out], initializer=[table, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_npz_with_labels_loads_and_batches(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((10, 3, 8, 8), np.float32), labels=np.arange(10))
    data = load_dataset(path, model_signature(image_model()))
    assert len(data) == 10 and data.labels.tolist() == list(range(10))
    sizes = [len(feeds["image"]) for feeds, _ in data.batches(4)]
    assert sizes == [4, 4, 2]


def test_npy_directory_loads(tmp_path):
    np.save(tmp_path / "image.npy", np.ones((3, 3, 8, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.array([1, 2, 3]))
    data = load_dataset(tmp_path, model_signature(image_model()))
    assert data.inputs["image"].shape == (3, 3, 8, 8) and data.labels.tolist() == [1, 2, 3]


@pytest.mark.parametrize("arrays, message", [
    ({"img": np.zeros((2, 3, 8, 8), np.float32)}, "'img' is not an input of the model \\(inputs: image"),
    ({"image": np.zeros((2, 3, 8, 8), np.float64)}, "input 'image' has dtype float64, the model expects float32"),
    ({"image": np.zeros((2, 3, 9, 8), np.float32)},
     r"input 'image' has shape \[2, 3, 9, 8\], the model expects \[N, 3, 8, 8\] \(axis 2: 9 != 8\)"),
    ({"image": np.zeros((2, 8, 8), np.float32)}, r"expects \[N, 3, 8, 8\] \(rank 4\)"),
    ({"image": np.zeros((2, 3, 8, 8), np.float32), "labels": np.zeros(3)}, "labels has 3 rows, the inputs have 2"),
    ({}, "missing input 'image'"),
])
def test_wrong_name_dtype_shape_name_the_input(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays) if arrays else np.savez(path, other_unused=np.zeros(1))
    if not arrays:
        message = "'other_unused' is not an input"
    with pytest.raises(GraphcError, match=message):
        load_dataset(path, model_signature(image_model()))


def test_fixed_batch_needs_whole_batches(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((3, 3, 8, 8), np.float32))
    with pytest.raises(GraphcError, match="not a multiple of the model's fixed batch 2"):
        load_dataset(path, model_signature(image_model(batch=2)))


def test_unreadable_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(GraphcError, match="cannot read as .npz"):
        load_dataset(tmp_path / "junk.npz", model_signature(image_model()))
    with pytest.raises(GraphcError, match="no such file"):
        load_dataset(tmp_path / "missing.npz", model_signature(image_model()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraphcError, match="holds no .npy files"):
        load_dataset(tmp_path / "empty", model_signature(image_model()))


def test_synthetic_tokens_are_valid_ids_and_masks_ones():
    data = synthetic_dataset(token_model(), batches=3, shapes=parse_shapes(["sequence=16"]))
    ids = data.inputs["input_ids"]
    assert ids.shape == (3, 16) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 5
    assert (data.inputs["attention_mask"] == 1).all() and (data.inputs["token_type_ids"] == 0).all()
    assert [f["input_ids"].shape for f, _ in data.batches()] == [(1, 16)] * 3


def test_synthetic_shapes_from_flag_and_defaults():
    data = synthetic_dataset(image_model(), shapes=parse_shapes(["image=4x3x8x8"]))
    assert data.inputs["image"].shape == (4, 3, 8, 8) and data.inputs["image"].dtype == np.float32
    assert synthetic_dataset(token_model()).inputs["input_ids"].shape == (1, 64)
    with pytest.raises(GraphcError, match=r"--shape image: \[4, 3, 9, 8\] does not fit"):
        synthetic_dataset(image_model(), shapes=parse_shapes(["image=4x3x9x8"]))
    with pytest.raises(GraphcError, match="not an input or a dynamic dim"):
        synthetic_dataset(image_model(), shapes=parse_shapes(["pixels=1x3x8x8"]))
    with pytest.raises(GraphcError, match="expected NAME=DIMxDIMx"):
        parse_shapes(["image=1x3xAx8"])


def _scalar_input_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    rate = helper.make_tensor_value_info("rate", TensorProto.INT64, [])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x, rate],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]))


def test_a_scalar_input_goes_with_every_batch_unchanged():
    signature = model_signature(_scalar_input_model())
    assert [s.scalar for s in signature] == [False, True]
    from graphc.data import validate

    dataset = validate({"x": np.arange(20, dtype=np.float32).reshape(5, 4), "rate": np.int64(16000)}, signature, "d")
    assert len(dataset) == 5 and len(dataset.take(2)) == 2 and dataset.take(2).inputs["rate"] == 16000
    batches = [feeds for feeds, _ in dataset.batches(2)]
    assert [len(f["x"]) for f in batches] == [2, 2, 1] and all(f["rate"] == 16000 for f in batches)
    synthetic = synthetic_dataset(_scalar_input_model(), batches=3)
    assert synthetic.inputs["rate"].shape == () and len(synthetic) == 3


def test_scalar_inputs_refuse_rows_and_tensors_refuse_scalars():
    from graphc.data import validate

    signature = model_signature(_scalar_input_model())
    with pytest.raises(GraphcError, match=r"input 'rate' has shape \[5\], the model expects a scalar"):
        validate({"x": np.zeros((5, 4), np.float32), "rate": np.zeros(5, np.int64)}, signature, "d")
    with pytest.raises(GraphcError, match=r"input 'x' is a scalar, the model expects \[n, 4\]"):
        validate({"x": np.float32(1), "rate": np.int64(1)}, signature, "d")
