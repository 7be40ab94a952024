"""graphc.graph: the weight-free view, shape inference on it, and graphsurgeon's private
storage of constant values (the one reach-in, pinned here so an upgrade that changes it fails)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs

from graphc.graph import (constants_as_protos, infer_shapes, load_stored, skeleton, stored_values, swap_stored_values,
                          to_graph)


def _model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)  # 8 KB: dims only in the skeleton
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Reshape", ["h", "shape"], ["r"]),
             oh.make_node("Relu", ["r"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(w, "w"),
                           onnx.numpy_helper.from_array(np.int64([-1, 4, 8]), "shape")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_graphsurgeon_stores_constant_values_lazily_where_graphc_expects_them():
    graph = to_graph(_model())
    weight = graph.tensors()["w"]
    stored = stored_values(weight)
    assert isinstance(stored, gs.ir.tensor.LazyValues)  # imported constants are not read yet
    array = load_stored(stored)
    assert array.shape == (64, 32) and isinstance(stored_values(weight), gs.ir.tensor.LazyValues)  # not cached
    old = swap_stored_values(weight, np.zeros((64, 32), np.float32))
    assert old is stored and not weight.values.any()  # graphsurgeon reads .values from the swapped store


def test_constants_exported_as_protos_only_inside_the_block():
    graph = to_graph(_model())
    weight = graph.tensors()["w"]
    proto = onnx.TensorProto(name="w", dims=[64, 32], data_type=onnx.TensorProto.FLOAT)
    with constants_as_protos([(weight, proto)]):
        exported = gs.export_onnx(graph, do_type_check=False)
    w = next(t for t in exported.graph.initializer if t.name == "w")
    assert list(w.dims) == [64, 32] and not w.raw_data and not w.float_data
    assert np.asarray(weight.values).shape == (64, 32) and np.asarray(weight.values).any()  # restored


def test_skeleton_keeps_shape_data_and_drops_weight_bytes_for_graph_and_model():
    model = _model()
    for view in (skeleton(model, {"x": (3, 64)}), skeleton(to_graph(model), {"x": (3, 64)})):
        init = {t.name: t for t in view.graph.initializer}
        assert list(init["w"].dims) == [64, 32] and init["w"].ByteSize() < 100
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init["shape"]), [-1, 4, 8])
        assert [d.dim_value for d in view.graph.input[0].type.tensor_type.shape.dim] == [3, 64]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"  # the model is untouched


def test_infer_shapes_annotates_in_place_with_data_propagation():
    graph = to_graph(_model())
    graph.tensors()["h"].shape = [999]  # stale
    assert infer_shapes(graph, {"x": (3, 64)}) is graph
    tensors = graph.tensors()
    assert tensors["h"].shape == [3, 32] and tensors["r"].shape == [3, 4, 8] and tensors["y"].shape == [3, 4, 8]
    assert tensors["y"].dtype == np.float32
    assert tensors["x"].shape == ["n", 64]  # graph inputs keep theirs
