"""The topology fixtures export with both exporters and match torch in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests import topologies

FAST_DYNAMO = {"bert", "resnet", "vit"}  # the dynamo exports the fast subset makes anyway (prune tests)


def cases(names):
    """(name, dynamo) pairs; the dynamo exports the fast subset does not need are ``slow``."""
    return [pytest.param(name, dynamo, id=f"{name}-{'dynamo' if dynamo else 'torchscript'}",
                         marks=[pytest.mark.slow] if dynamo and name not in FAST_DYNAMO else [])
            for name in names for dynamo in (False, True)]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name, dynamo", cases(topologies.NAMES))
def test_onnxruntime_matches_torch(name, dynamo, onnx_model, sample_inputs):
    path = onnx_model(name, dynamo=dynamo)
    # batch / sequence sizes unlike the export example, so the dynamic axes are exercised
    for batch, seq in ((3, 11), (1, 5)):
        inputs = sample_inputs(name, batch=batch, seed=1, seq=seq)
        expected = topologies.run_torch(name, inputs)
        got = topologies.run_onnxruntime(path, inputs)
        assert got.shape == expected.shape
        scale = max(float(np.abs(expected).max()), 1e-6)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("name, dynamo", cases(topologies.NAMES))
def test_graph_interface(name, dynamo, onnx_model):
    model = onnx.load(onnx_model(name, dynamo=dynamo), load_external_data=False)
    graph = model.graph
    assert [i.name for i in graph.input] == list(topologies.INPUT_NAMES[name])
    assert [o.name for o in graph.output] == [topologies.OUTPUT_NAME]
    assert all(_dims(i)[0] == "batch" for i in graph.input)
    assert _dims(graph.output[0])[0] == "batch"
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset == (topologies.OPSET_DYNAMO if dynamo else topologies.OPSET_TORCHSCRIPT)
    data = onnx_model(name, dynamo=dynamo).with_name(onnx_model(name, dynamo=dynamo).name + ".data")
    assert data.is_file() == dynamo


@pytest.mark.parametrize("name, dynamo", cases(topologies.BATCHNORM_NAMES))
def test_batchnorm_survives_export(name, dynamo, onnx_model):
    graph = onnx.load(onnx_model(name, dynamo=dynamo), load_external_data=False).graph
    modules = sum(m.__class__.__name__.startswith("BatchNorm") for m in topologies.build(name).model.modules())
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) == modules


def test_dynamo_optimizer_fuses_batchnorm(onnx_model, sample_inputs):
    """Documents why ``export`` leaves the dynamo optimizer off by default."""
    path = onnx_model("mlp_bn", dynamo=True, optimize=True)
    ops = [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]
    assert "BatchNormalization" not in ops
    inputs = sample_inputs("mlp_bn", batch=4)
    expected = topologies.run_torch("mlp_bn", inputs)
    np.testing.assert_allclose(topologies.run_onnxruntime(path, inputs), expected, rtol=0,
                               atol=1e-4 * float(np.abs(expected).max()))
