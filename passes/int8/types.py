"""Dtypes and shapes of a graph's variables from ONNX shape inference, without a copy of the
weights: inference runs on a weight-free skeleton of the graph (every constant a typed graph
input). The pass needs the dtypes to tell float32 activations apart (rule 1)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter


def with_types(graph: gs.Graph) -> gs.Graph:
    """``graph`` with the dtype (and shape, where unknown) of every variable from ONNX shape
    inference, set in place. Inference runs on a weight-free skeleton (constants become typed
    graph inputs), so no second copy of the weights is made (BERT-base: 440 MB)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_model(graph))
    except (onnx.shape_inference.InferenceError, ValueError):
        return graph
    infos = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    for name, tensor in graph.tensors().items():
        info = infos.get(name)
        if not isinstance(tensor, gs.Variable) or info is None or not info.type.HasField("tensor_type"):
            continue
        kind = info.type.tensor_type
        if tensor.dtype is None and kind.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        if tensor.shape is None and kind.HasField("shape"):
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim]
    return graph


def weightless_model(graph: gs.Graph) -> onnx.ModelProto:
    """Nodes, inputs and outputs of ``graph`` with every constant a typed graph input (no
    values): enough for ONNX shape inference, a few KB instead of the weights."""
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    inputs += [onnx.helper.make_tensor_value_info(t.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                                  list(t.shape)) for t in constants]
    outputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs]
    body = onnx.helper.make_graph([OnnxExporter.export_node(n) for n in graph.nodes], graph.name or "graph",
                                  inputs, outputs)
    opsets = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
    return onnx.helper.make_model(body, opset_imports=opsets)
