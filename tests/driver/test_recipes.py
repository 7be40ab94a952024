"""The bundled model's recipe and shipped files agree with the real data set."""


import numpy as np
import onnx
import pytest

from graphc.models import fashion_cnn
from tests import ROOT



def test_shipped_test_split_is_the_full_fashion_mnist_test_set():
    with np.load(ROOT / "models" / "fashion_mnist_test.npz") as npz:
        images, labels = npz["image"], npz["labels"]
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [1000] * 10
    if not fashion_cnn.IDX_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    idx_images, idx_labels = fashion_cnn.load_split("t10k")
    np.testing.assert_array_equal(images, idx_images)
    np.testing.assert_array_equal(labels, idx_labels)


def test_shipped_model_matches_the_recipe_architecture():
    model = onnx.load(str(ROOT / "models" / "fashion_cnn.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 7 and ops.count("BatchNormalization") == 7 and ops.count("Add") == 2
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]


def test_shipped_calibration_split_is_the_seeded_train_sample(tmp_path):
    if not fashion_cnn.IDX_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    images, labels = fashion_cnn.load_split("train")
    fashion_cnn.write_calibration_split(images, labels, tmp_path / "calib.npz")
    with np.load(tmp_path / "calib.npz") as want, np.load(ROOT / "models" / "fashion_mnist_calib.npz") as got:
        assert got["image"].shape == (512, 1, 28, 28)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["labels"], want["labels"])
