"""Tensor shapes for ``fuse``'s norm and activation rules: which tensors have one shape.

ONNX shape inference names every dim it cannot compute ``unk__N`` afresh (and types nothing
after an onnxruntime contrib op, such as fused attention), so the two inputs of a
transformer's residual Add come out as ``[unk__4, unk__5, 64]`` and ``[unk__23, unk__24, 64]``
or not at all: equal at run time, unequal on paper. Here the model runs twice on synthetic
inputs (``graphc.data.synthetic_dataset``) with every top-level tensor exposed, every
dynamic input dim set to a small number (the same number for every input dim of the same
name) and to other numbers on the second run (``PROBES``). A tensor's shape is then its
dims, each the number where both runs agree, else the text ``"a|b"`` of the two numbers: two
tensors have one shape when their dims match on both runs (the residual Add's inputs:
``[3|5, 4|6, 64]`` each), and a broadcast (a ``[1, S, C]`` position table beside
``[B, S, C]``) does not. A model that does not run at those sizes (a CNN whose images shrink
to nothing) gives no shapes, and the rules leave it alone. Every rewrite is also run against
the original by the pipeline's exact check.

Used instead of onnxruntime's symbolic shape inference, whose class this would have to drive
through private methods (its public entry writes temporary files into the working directory).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.data import synthetic_dataset
from graphc.errors import GraphcError
from graphc.graph import export_model
from graphc.runtime import exposing_session, run_session

PROBES = (3, 5)  # the first named dynamic dim's value on the two runs; each further name adds 1
Dims = tuple[int | str, ...]


def _input_dims(graph: gs.Graph, start: int) -> dict[str, tuple[int, ...]]:
    names: dict[str, int] = {}
    shapes = {}
    for tensor in graph.inputs:
        dims = []
        for dim in tensor.shape or ():
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            else:
                key = dim if isinstance(dim, str) and dim else f"?{len(names)}"
                names.setdefault(key, start + len(names))
                dims.append(names[key])
        shapes[tensor.name] = tuple(dims)
    return shapes


def _measured(model: onnx.ModelProto, graph: gs.Graph, names: list[str], start: int) -> dict:
    try:
        feeds = synthetic_dataset(model, shapes=_input_dims(graph, start)).inputs
        session = exposing_session(model, names, what="the model to read shapes from", optimized=False)
        values = run_session(session, feeds)
    except (GraphcError, Exception):  # onnxruntime raises its own types; any failure: no shapes
        return {}
    outputs = [o.name for o in session.get_outputs()]
    measured = {**feeds, **dict(zip(outputs, values))}
    return {name: (onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
            for name, v in measured.items() if isinstance(v, np.ndarray)}


def symbolic_shapes(graph: gs.Graph) -> dict[str, tuple[int, Dims]]:
    """Tensor name -> (ONNX element type, dims) for every graph input and top-level tensor both
    runs produced; ``graph`` is unchanged."""
    model = export_model(graph, do_type_check=False)
    names = sorted({t.name for n in graph.nodes for t in n.outputs if t.name})
    first, second = (_measured(model, graph, names, start) for start in PROBES)
    shapes = {}
    for name, (elem, dims) in first.items():
        other = second.get(name)
        if other is None or other[0] != elem or len(other[1]) != len(dims):
            continue
        shapes[name] = (elem, tuple(a if a == b else f"{a}|{b}" for a, b in zip(dims, other[1])))
    return shapes
