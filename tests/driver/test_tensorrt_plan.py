"""``graphc build --target tensorrt``'s plan (graphc.tensorrt_plan): each TensorRT rule violation
refused with its node named, and the builder configuration recorded in the manifest.

The bundled CNN after ``fold,int8:target=tensorrt`` passes; graphc's default ``int8`` (u8
activations, int32 biases) does not (rule 1); a DequantizeLinear weight that is not a constant
int8 (rule 2); graphc's sparse ops (rule 3); ``--sparse-weights`` with 80% unstructured zeros
(rule 4) and with 2:4 (passes); a dynamic input without ``--shape`` (rule 5)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from graphc.cli import main
from graphc.errors import GraphcError
from graphc.model_io import load_model
from graphc.tensorrt_plan import plan

CNN = "models/fashion_cnn.onnx"
CALIB = "models/fashion_mnist_calib.npz"
SHAPE = {"image": (8, 1, 28, 28)}


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """passes -> the bundled CNN after them (made once per module)."""
    root, made = tmp_path_factory.mktemp("trt"), {}

    def get(passes: str):
        if passes not in made:
            out = root / f"m{len(made)}.onnx"
            assert main(["optimize", CNN, "--passes", passes, "--data", CALIB, "-o", str(out), "--quiet"]) == 0
            made[passes] = load_model(out)
        return made[passes]
    return get


def test_tensorrt_int8_cnn_plans_with_its_profile(optimized):
    config = plan(optimized("fold,int8:target=tensorrt"), SHAPE, workspace_mb=256)
    assert config == {"precision": {"int8": True, "fp16": False}, "sparse_weights": False,
                      "workspace_bytes": 256 * 2**20,
                      "profiles": [{"image": {"min": [1, 1, 28, 28], "opt": [8, 1, 28, 28], "max": [8, 1, 28, 28]}}]}


def test_ort_int8_breaks_rule_1_with_the_node_named(optimized):
    with pytest.raises(GraphcError, match=r"not buildable for TensorRT: .*Conv.*zero point .* is not int8 0 \(and \d+ more\)"):
        plan(optimized("fold,int8:speed_guard=false"), SHAPE)


def test_a_weight_dequantized_from_a_computed_tensor_breaks_rule_2(optimized):
    model = onnx.ModelProto()
    model.CopyFrom(optimized("fold,int8:target=tensorrt"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = next(n for n in model.graph.node if conv.input[1] in n.output)
    model.graph.node.insert(0, helper.make_node("Identity", [dq.input[0]], ["computed_weight"], name="computed"))
    dq.input[0] = "computed_weight"
    with pytest.raises(GraphcError, match=f"node '{conv.name}': its weight's DequantizeLinear '{dq.name}' does not read "
                                          f"a constant int8 initializer"):
        plan(model, SHAPE)


def test_graphc_sparse_ops_break_rule_3():
    node = helper.make_node("SparseMatMulInteger", ["A", "zp", "c", "b", "v"], ["Y"], name="sparse", domain="ai.graphc", K=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.graphc", 1)])
    with pytest.raises(GraphcError, match="node 'sparse': SparseMatMulInteger is graphc's sparse op"):
        plan(model)


def test_sparse_weights_need_2_4(optimized):
    with pytest.raises(GraphcError, match=r"node '/features/.*Conv': weight 80% zero but not 2:4"):
        plan(optimized("fold,sparsify:0.8,int8:target=tensorrt"), SHAPE, sparse_weights=True)
    config = plan(optimized("fold,sparsify:pattern=2:4,int8:target=tensorrt"), SHAPE, sparse_weights=True)
    assert config["sparse_weights"] is True


def test_a_dynamic_input_needs_a_shape(optimized):
    with pytest.raises(GraphcError, match=r"input 'image' has dynamic dims; give --shape image=batchx1x28x28"):
        plan(optimized("fold,int8:target=tensorrt"), {})


def test_build_writes_the_plan_into_the_manifest(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["build", CNN, "--target", "tensorrt", "-o", str(out), "--shape", "image=4x1x28x28"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "tensorrt" and manifest["ort_model"] is None
    assert manifest["tensorrt"]["builder"]["profiles"][0]["image"]["opt"] == [4, 1, 28, 28]
    assert manifest["tensorrt"]["engine"] is None and "stubs" in manifest["tensorrt"]["engine_note"]
    assert set(manifest["files"]) == {"model.onnx"}
    capsys.readouterr()
    assert main(["build", "--check", str(out)]) == 0
    assert main(["build", CNN, "--target", "tensorrt", "-o", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give --shape image=" in err and not (tmp_path / "other").exists()
