"""The in-memory graph passes edit, its weight-free view, and the helpers passes share.

Passes edit an onnx-graphsurgeon ``gs.Graph`` (plain Python objects, ``cleanup()`` and
``toposort()`` after edits); the pipeline converts ModelProto <-> Graph around each pass and
keeps the model-level fields graphsurgeon does not carry (metadata, docs, model version).

The weight-free view (``skeleton``) is a model with every large constant reduced to its
name, type and dims (integer tensors, which may be shapes, and tensors of at most
``SMALL_TENSOR_BYTES`` keep their values for data propagation): what ONNX shape inference
and the checker need, a few KB instead of the weights. ``infer_shapes`` annotates a graph
from it in place. onnx-graphsurgeon keeps a constant's bytes in the private
``Constant._values`` (an ndarray or a not-yet-loaded ``LazyValues``); ``stored_values`` and
``swap_stored_values`` are the one place that reaches in (tests/driver/test_graph.py fails
if a graphsurgeon release changes it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

SHAPE_DATA_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})  # may be shapes: values kept
SMALL_TENSOR_BYTES = 4096


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` as a model carrying ``template``'s model-level fields."""
    model = export_model(graph, do_type_check=True)
    model.ir_version = template.ir_version
    if template.ir_version < 4:  # IR 3: every initializer must also be a graph input
        listed = {i.name for i in model.graph.input}
        model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                 for t in model.graph.initializer if t.name not in listed)
    model.doc_string = template.doc_string
    model.domain = template.domain
    model.model_version = template.model_version
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model


def export_model(graph: gs.Graph, do_type_check: bool = True) -> onnx.ModelProto:
    """``gs.export_onnx`` with each constant stored once.

    graphsurgeon writes a constant as an initializer of every graph whose nodes read it, so a
    weight read inside both branches of an If (or in a body and outside it) would be written
    twice or more. Here a constant read by nodes of several graphs is kept only in the lowest
    graph that encloses all of them (its readers see it as an outer-scope value) and dropped
    from the graphs below that one.
    """
    model = gs.export_onnx(graph, do_type_check=do_type_check)
    scopes = list(graph_scopes(graph))
    if len(scopes) == 1:
        return model
    protos = {id(graph): model.graph}
    _pair_subgraph_protos(graph, model.graph, protos)
    parents = {id(sub): parent for sub, parent in scopes}
    readers: dict[int, tuple[gs.Constant, list[gs.Graph]]] = {}
    for scope, _ in scopes:
        for tensor in {id(t): t for node in scope.nodes for t in node.inputs if isinstance(t, gs.Constant)}.values():
            readers.setdefault(id(tensor), (tensor, []))[1].append(scope)
    for tensor, graphs in readers.values():
        if len(graphs) > 1:
            _move_initializer(tensor.name, [protos[id(g)] for g in graphs],
                              protos[id(_enclosing_scope(graphs, parents))])
    return model


def _move_initializer(name: str, sources: Sequence[onnx.GraphProto], home: onnx.GraphProto) -> None:
    """Drop initializer ``name`` from every graph in ``sources`` but ``home``; ``home`` holds
    one copy."""
    kept = next((t for t in home.initializer if t.name == name), None)
    for proto in sources:
        if proto is home:
            continue
        index = next((i for i, t in enumerate(proto.initializer) if t.name == name), None)
        if index is None:
            continue
        if kept is None:
            kept = home.initializer.add()
            kept.CopyFrom(proto.initializer[index])
        del proto.initializer[index]


def graph_scopes(graph: gs.Graph, parent: gs.Graph | None = None) -> Iterator[tuple[gs.Graph, gs.Graph | None]]:
    """``graph`` and every subgraph below it (If branches, Loop/Scan bodies), each with the
    graph that holds its node (None for ``graph``), outer graphs first."""
    yield graph, parent
    for node in graph.nodes:
        for sub in node.subgraphs():
            yield from graph_scopes(sub, graph)


def _pair_subgraph_protos(graph: gs.Graph, proto: onnx.GraphProto, protos: dict[int, onnx.GraphProto]) -> None:
    """Map each subgraph of ``graph`` to its exported GraphProto (nodes are exported in order,
    attributes by name)."""
    for node, node_proto in zip(graph.nodes, proto.node):
        attributes = {a.name: a for a in node_proto.attribute}
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph) and key in attributes:
                protos[id(value)] = attributes[key].g
                _pair_subgraph_protos(value, attributes[key].g, protos)


def _enclosing_scope(graphs: Sequence[gs.Graph], parents: Mapping[int, gs.Graph | None]) -> gs.Graph:
    """The lowest graph that is, or encloses, every graph in ``graphs``."""
    def chain(scope):
        out = []
        while scope is not None:
            out.append(scope)
            scope = parents[id(scope)]
        return out

    common = chain(graphs[0])
    for scope in graphs[1:]:
        ids = {id(g) for g in chain(scope)}
        common = [g for g in common if id(g) in ids]
    return common[0]


def model_header(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``'s model-level fields without its graph: a ``to_model`` template that does
    not keep the weights alive."""
    from graphc.model_io import copy_fields

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


def unique_namer(graph: gs.Graph) -> Callable[[str], str]:
    """``unique_name`` bound to every tensor and node name of ``graph``."""
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}
    return functools.partial(unique_name, taken=taken)


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


def clear_intermediate_shapes(graph: gs.Graph) -> None:
    """Forget the shapes of all tensors but the graph inputs and outputs (after a pass
    changed sizes, stale shapes would contradict the new weights)."""
    boundary = {id(t) for t in [*graph.inputs, *graph.outputs]}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in boundary:
            tensor.shape = None


def stored_values(tensor: gs.Constant):
    """What graphsurgeon stores for a constant: an ndarray, or ``LazyValues`` not yet read."""
    return tensor._values


def swap_stored_values(tensor: gs.Constant, values) -> object:
    """Store ``values`` (an ndarray or ``LazyValues``) in ``tensor`` without loading either;
    returns what was stored."""
    old, tensor._values = tensor._values, values
    return old


def load_stored(values) -> np.ndarray:
    """The array behind ``stored_values``: ``LazyValues`` are read for the caller only, not
    cached in the graph."""
    return values.load() if isinstance(values, gs.ir.tensor.LazyValues) else values


@contextlib.contextmanager
def constants_as_protos(protos: Sequence[tuple[gs.Constant, onnx.TensorProto]]) -> Iterator[None]:
    """Within the block, each constant is exported as its paired proto (no bytes are read
    or copied); the graph is as it was afterwards."""
    swapped = [(tensor, swap_stored_values(tensor, gs.ir.tensor.LazyValues(proto))) for tensor, proto in protos]
    try:
        yield
    finally:
        for tensor, values in swapped:
            swap_stored_values(tensor, values)


def keeps_values(data_type: int, nbytes: int) -> bool:
    """Whether the weight-free view keeps a constant's values (shape data, small tensors)."""
    return data_type in SHAPE_DATA_TYPES or nbytes <= SMALL_TENSOR_BYTES


def _valueless(tensor: gs.Constant) -> onnx.TensorProto | None:
    """``tensor`` as a proto with name, type and dims only, or None if its values stay."""
    if tensor.dtype is None or np.dtype(tensor.dtype).kind in "OSU":
        return None
    dtype, dims = np.dtype(tensor.dtype), tuple(tensor.shape)
    data_type = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    if keeps_values(data_type, int(np.prod(dims, dtype=np.int64)) * dtype.itemsize):
        return None
    return onnx.TensorProto(name=tensor.name, dims=dims, data_type=data_type)


def set_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    """Give the graph inputs named in ``shapes`` those concrete dims (in place)."""
    for value_info in model.graph.input:
        if value_info.name in shapes and value_info.type.tensor_type.HasField("shape"):
            dims = value_info.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value_info.name]):
                dim.Clear()
                dim.dim_value = int(size)


def skeleton(source: gs.Graph | onnx.ModelProto, inputs: Mapping[str, Sequence[int]] | None = None,
             ) -> onnx.ModelProto:
    """The weight-free view of a graph or model (see the module docstring), with the graph
    inputs named in ``inputs`` at those concrete shapes. ``source`` is left as it was."""
    if isinstance(source, gs.Graph):
        protos = [(t, p) for t in source.tensors().values() if isinstance(t, gs.Constant)
                  for p in [_valueless(t)] if p is not None]
        with constants_as_protos(protos):
            model = export_model(source, do_type_check=False)
    else:
        from graphc.model_io import copy_fields, tensor_nbytes

        model = onnx.ModelProto()
        copy_fields(source, model, skip="graph")
        copy_fields(source.graph, model.graph, skip="initializer")
        for tensor in source.graph.initializer:
            if keeps_values(tensor.data_type, tensor_nbytes(tensor)):
                model.graph.initializer.append(tensor)
            else:
                model.graph.initializer.append(onnx.TensorProto(name=tensor.name, dims=tensor.dims,
                                                                data_type=tensor.data_type))
    set_input_shapes(model, inputs or {})
    return model


def infer_shapes(graph: gs.Graph, inputs: Mapping[str, Sequence[int]] | None = None) -> gs.Graph:
    """Re-infer the dtype and shape of every intermediate tensor and graph output of
    ``graph`` in place (ONNX shape inference with data propagation on its skeleton, graph
    inputs at ``inputs`` where given); returns ``graph``.

    Stale intermediate shapes (after a pass changed channel counts) are dropped first; a
    tensor inference cannot type is left without dtype and shape. If inference fails, the
    intermediate tensors are left without shapes.
    """
    clear_intermediate_shapes(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(graph, inputs), data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        return graph
    typed = gs.import_onnx(inferred).tensors()  # graphsurgeon's own reading of the value infos
    inputs_ = {id(t) for t in graph.inputs}
    for name, tensor in graph.tensors().items():
        if not isinstance(tensor, gs.Variable) or id(tensor) in inputs_:
            continue
        info = typed.get(name)
        if info is not None and getattr(info, "type", "tensor_type") != "tensor_type":
            tensor.type = info.type  # a sequence or optional value: its element type only
        tensor.dtype = info.dtype if info is not None else None
        tensor.shape = info.shape if info is not None else None
    return graph


def split_bounded_shapes(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node]]:
    """Before folding: every ``Shape`` with ``start``/``end`` becomes a whole Shape
    and a Slice of it on axis 0 (same bounds); returns the (Shape, Slice) pairs made."""
    pairs = []
    for node in list(graph.nodes):
        if node.op != "Shape" or not ({"start", "end"} & set(node.attrs)):
            continue
        start, end = int(node.attrs.pop("start", 0)), node.attrs.pop("end", None)
        end = np.iinfo(np.int64).max if end is None else int(end)
        output, whole = node.outputs[0], gs.Variable(f"{node.outputs[0].name}__whole_shape", dtype=np.int64)
        bounds = [gs.Constant(f"{node.outputs[0].name}__shape_{key}", np.array([value], np.int64))
                  for key, value in (("start", start), ("end", end), ("axis", 0))]
        set_tensors(node.outputs, [whole])
        piece = gs.Node("Slice", f"{node.name or output.name}__shape_slice", inputs=[whole, *bounds], outputs=[output])
        graph.nodes.append(piece)
        pairs.append((node, piece))
    if pairs:
        graph.toposort()
    return pairs


def join_bounded_shapes(graph: gs.Graph, pairs: list[tuple[gs.Node, gs.Node]]) -> None:
    """After folding: a split pair that was not folded is one bounded Shape again."""
    alive = {id(n) for n in graph.nodes}
    for shape, piece in pairs:
        whole = shape.outputs[0] if shape.outputs else None
        if id(shape) not in alive or id(piece) not in alive or whole is None or piece.inputs[0] is not whole \
                or len(whole.outputs) != 1:
            continue  # folded (or its whole shape is read elsewhere): nothing to join
        start, end = (int(constant_values(t).reshape(-1)[0]) for t in piece.inputs[1:3])
        shape.attrs["start"] = start
        if end != np.iinfo(np.int64).max:
            shape.attrs["end"] = end
        outputs = list(piece.outputs)
        piece.outputs.clear()
        piece.inputs.clear()
        set_tensors(shape.outputs, outputs)
    graph.cleanup(remove_unused_graph_inputs=False)


def fold_constants(graph: gs.Graph, size_threshold: int | None = None,
                   exclude: Callable[[gs.Node], bool] | None = None, flatten_subgraphs: bool = False) -> gs.Graph:
    """onnx-graphsurgeon's ``fold_constants`` (shapes included, errors tolerated) made exact
    on what it gets wrong, in ``graph`` and then in every If/Loop/Scan body (outer graphs first,
    as graphsurgeon does), then ``cleanup``; returns ``graph``.

    - graphsurgeon's shape folding (0.6.1) reads a ``Shape`` node as the whole shape and
      ignores its ``start``/``end`` (opset 15+): such a Shape is split into a whole ``Shape``
      and a ``Slice`` on axis 0 with the same bounds first (the two ops clamp and wrap negative
      bounds alike, so the split is exact), and pairs left unfolded are joined back;
    - ops that make a sequence or an optional value (``graphc.ops.NON_TENSOR_OPS``) are never
      folded: graphsurgeon evaluates them to Python lists, which no initializer can hold;
    - a node inside a body is not folded when it reads an outer-scope tensor of more than
      ``SMALL_TENSOR_BYTES`` (or of unknown size, unless an integer: shape data): folding
      would store a copy of an outer weight in that body, once per body that reads it (both
      branches of an If each got one); the weight stays one outer initializer;
    - nodes for which ``exclude`` is true are not folded either (in bodies too: graphsurgeon
      does not pass its ``should_exclude_node`` down);
    - ``flatten_subgraphs``: an If whose condition folds to a constant is replaced by its
      branch with ``graphc.subgraphs.flatten_constant_ifs`` (graphsurgeon's own flattening
      loses all but the first output of an If whose outputs one node produces).
    """
    from graphc.ops import NON_TENSOR_OPS
    from graphc.subgraphs import flatten_constant_ifs

    def fold_scope(scope: gs.Graph, blocked: frozenset[str]) -> None:
        pairs = split_bounded_shapes(scope)
        scope.fold_constants(
            fold_shapes=True, size_threshold=size_threshold, error_ok=True, recurse_subgraphs=False,
            flatten_subgraphs=False,
            should_exclude_node=lambda node: (node.op in NON_TENSOR_OPS or bool(exclude and exclude(node))
                                              or any(t.name in blocked for t in node.inputs)))
        scope.cleanup(remove_unused_graph_inputs=False)
        join_bounded_shapes(scope, pairs)
        for node in scope.nodes:
            for sub in node.subgraphs():
                fold_scope(sub, _outer_weights(graph, sub))

    fold_scope(graph, frozenset())
    if flatten_subgraphs:
        flatten_constant_ifs(graph)
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph


def _outer_weights(root: gs.Graph, scope: gs.Graph) -> frozenset[str]:
    """Names of the tensors ``scope``'s nodes read from an enclosing graph that are larger than
    ``SMALL_TENSOR_BYTES`` or of unknown non-integer size (see ``fold_constants``). A constant
    read by no graph but ``scope`` counts as ``scope``'s own (moving it inside copies nothing)."""
    readers: dict[str, set[int]] = {}
    for graph, _ in graph_scopes(root):
        for node in graph.nodes:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant):
                    readers.setdefault(tensor.name, set()).add(id(graph))
    local = {t.name for t in scope.inputs} | {t.name for node in scope.nodes for t in node.outputs}
    blocked = set()
    for node in scope.nodes:
        for tensor in node.inputs:
            if tensor.is_empty() or tensor.name in local or readers.get(tensor.name) == {id(scope)}:
                continue
            if _maybe_large(tensor):
                blocked.add(tensor.name)
    return frozenset(blocked)


def _maybe_large(tensor: gs.Tensor) -> bool:
    """More than ``SMALL_TENSOR_BYTES``, or of unknown size and not an integer tensor."""
    if isinstance(tensor, gs.Constant):
        shape, dtype = tensor.shape, tensor.dtype
    else:
        constant = tensor.inputs[0].attrs.get("value") if len(tensor.inputs) == 1 and \
            tensor.inputs[0].op == "Constant" else None
        shape, dtype = (constant.shape, constant.dtype) if isinstance(constant, gs.Constant) \
            else (tensor.shape, tensor.dtype)
    if dtype is None or shape is None or any(not isinstance(d, int) for d in shape):
        return dtype is None or not np.issubdtype(np.dtype(dtype), np.integer)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize > SMALL_TENSOR_BYTES
