"""The in-memory graph passes edit, and the helpers they share.

Passes edit an onnx-graphsurgeon ``gs.Graph`` (plain Python objects, ``cleanup()`` and
``toposort()`` after edits); the pipeline converts ModelProto <-> Graph around each pass and
keeps the model-level fields graphsurgeon does not carry (metadata, docs, model version).
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})  # layers whose input 1 is a weight


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` as a model carrying ``template``'s model-level fields."""
    model = gs.export_onnx(graph, do_type_check=True)
    model.ir_version = template.ir_version
    model.doc_string = template.doc_string
    model.domain = template.domain
    model.model_version = template.model_version
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model


def write_graph_with_external_weights(graph: gs.Graph, template: onnx.ModelProto,
                                     directory: pathlib.Path) -> pathlib.Path:
    """``graph`` written to ``directory/model.onnx`` (``template``'s model-level fields) with
    every constant over ``INLINE_TENSOR_BYTES`` in ``weights.bin`` beside it, page-aligned,
    one tensor at a time. No proto holding the weights is built (``to_model`` of BERT-base
    transiently needs 2 x 440 MB: tensor bytes plus proto); the graph is left as it was."""
    from graphc.runtime import INLINE_TENSOR_BYTES, point_to_weights

    swapped: list[tuple[gs.Constant, object]] = []
    offset = 0
    try:
        with open(directory / "weights.bin", "wb") as data:
            for tensor in graph.tensors().values():
                if not isinstance(tensor, gs.Constant) or tensor.dtype is None or np.dtype(tensor.dtype).kind in "OSU":
                    continue
                dims, dtype = tuple(tensor.shape), np.dtype(tensor.dtype)
                nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
                if nbytes <= INLINE_TENSOR_BYTES:
                    continue
                values = tensor._values  # LazyValues are loaded for this write only, not cached in the graph
                values = values.load() if isinstance(values, gs.ir.tensor.LazyValues) else values
                np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tofile(data)
                del values
                external = onnx.TensorProto(name=tensor.name, dims=dims,
                                            data_type=onnx.helper.np_dtype_to_tensor_dtype(dtype))
                offset = point_to_weights(external, data, offset, nbytes)
                swapped.append((tensor, tensor._values))
                tensor._values = gs.ir.tensor.LazyValues(external)  # exported as this proto, not as bytes
        model = to_model(graph, template)
    finally:
        for tensor, values in swapped:
            tensor._values = values
    path = directory / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def model_header(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``'s model-level fields without its graph: a ``to_model`` template that does
    not keep the weights alive."""
    from graphc.runtime import copy_fields

    header = onnx.ModelProto()
    copy_fields(model, header, skip="graph")
    return header


def drop_intermediate_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the shapes of intermediate tensors (``graph.value_info``), as the
    exporters write it; graph inputs and outputs keep theirs.

    Passes re-infer shapes for their own use, but the written model must not carry them:
    with them onnxruntime 1.32 (CPU) fuses every residual Add + LayerNormalization into
    SkipLayerNormalization, which measured slower on this 2-core AVX2 machine than the two
    ops it replaces (BERT-base batch 8: 3% slower; all-MiniLM-L6-v2 int8 batch 1: 1.30x ->
    1.43x vs FP32 once the shapes are dropped). Without them onnxruntime runs its own
    inference and optimises the graph the way it optimises the original.
    """
    del model.graph.value_info[:]
    return model


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken`` (then taken)."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if isinstance(attrs.get("value"), gs.Constant):
            return attrs["value"].values
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.inputs)


def swap_tensor(tensors: list, old: gs.Tensor, new: gs.Tensor) -> None:
    """Replace ``old`` by ``new`` in a node's inputs or outputs (graphsurgeon's lists
    keep producer/consumer links only through item assignment)."""
    for i, t in enumerate(tensors):
        if t is old:
            tensors[i] = new


def set_tensors(tensors: list, new: list) -> None:
    """Replace the whole content of a node's inputs or outputs list."""
    tensors.clear()
    tensors.extend(new)


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` (nodes and graph outputs) read ``new`` instead."""
    for node in list(old.outputs):
        swap_tensor(node.inputs, old, new)
    graph.outputs = [new if t is old else t for t in graph.outputs]


def onnx_dtype(tensor: gs.Tensor) -> int | None:
    """The ONNX element type of a tensor, when known."""
    if tensor.dtype is None:
        return None
    if isinstance(tensor.dtype, int):
        return tensor.dtype
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))


def clear_intermediate_shapes(graph: gs.Graph) -> None:
    """Forget the shapes of all tensors but the graph inputs and outputs (after a pass
    changed sizes, stale shapes would contradict the new weights)."""
    boundary = {id(t) for t in [*graph.inputs, *graph.outputs]}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in boundary:
            tensor.shape = None


def infer_graph_shapes(graph: gs.Graph) -> gs.Graph:
    """A copy of ``graph`` with every intermediate shape re-inferred by ONNX shape inference.

    Stale shapes (after a pass changed channel counts) are dropped first; graph inputs and
    outputs keep theirs. If inference fails the graph is returned without intermediate shapes.
    """
    clear_intermediate_shapes(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        return graph
    return gs.import_onnx(model)
