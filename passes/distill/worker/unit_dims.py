"""Rule 4 of ``graphc.passes.distill``, the training copy: broadcast axes the gradient builder
can see (``pin_unit_dims``).

onnxruntime-training's gradient builder (1.19.2, ``ComputeBroadcastBackwardAxes``) reads
the inferred shapes of a broadcasting op's inputs (Add, Sub, Mul, Div, ...). Where one input
has a symbolic dim and the other a different symbolic dim, it assumes the two are equal (its
log calls this "a relaxing case") and emits no reduction over that axis. ONNX shape
inference gives a dim it cannot compute a fresh symbol (``unk__N``), so a tensor that is 1
along an axis at run time, and broadcast there, can reach the builder with a symbol. Then
its gradient keeps the broadcast axis.

Found on all-MiniLM-L6-v2: the position embeddings are ``Gather(table, position_ids[:, :S])``
of shape ``[1, S, 384]``, added to ``[B, S, 384]``. The Slice's end is computed, so inference
gives ``[unk__0, unk__1, 384]``. The builder passed the ``[B, S, 384]`` gradient straight to
GatherGrad, whose indices are ``[1, S]``. The table's gradient was wrong, and the heap was
corrupted: with onnxruntime's CPU memory arena off, the first step crashed every time; with
it on, some later step crashed (SIGSEGV), deterministically for a given batch order.

The rule: the worker runs the training copy once on two small batches of the training data
(2 and 3 rows, each cut to its longest row like a training batch), with every top-level
node output fetched. An axis that is 1 in both runs is written into that tensor's
``value_info`` as the static dim 1; every other dim keeps what ONNX shape inference gives
(its symbol or value). With the 1 visible, the builder reduces over the broadcast axis, as
it does for a static shape. Axes that vary are left to the builder as before: two symbols
that are in fact equal are what its "relaxing case" assumes.

This is measured rather than derived because the 1 comes from data (a buffer sliced to a
computed length), which no shape inference in the libraries at hand propagates. It needs
at least 2 rows of training data (with fewer than 5, the batches are 1 and 2 rows). The
outputs are fetched here rather than through graphc's tensor tap because graphc is not
installed in the training venv.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .batches import Data

SAMPLE_ROWS = ((0, 1), (2, 3, 4))  # two batches of different sizes: a batch axis is never 1 in both


def measured_shapes(model, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, tuple[int, ...]]]:
    """The shape of every top-level node output of ``model`` on each of ``feeds``."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = []
    for feed in feeds:
        values = session.run(names, feed)
        shapes.append({n: tuple(np.shape(v)) for n, v in zip(names, values) if isinstance(v, np.ndarray)})
    return shapes


def unit_axes(runs: list[dict[str, tuple[int, ...]]]) -> dict[str, tuple[int, list[int]]]:
    """Tensor -> its rank and the axes that are 1 in every run (same rank in every run)."""
    first, *rest = runs
    axes = {}
    for name, shape in first.items():
        if any(run.get(name) is None or len(run[name]) != len(shape) for run in rest):
            continue
        ones = [i for i, d in enumerate(shape) if d == 1 and all(run[name][i] == 1 for run in rest)]
        if ones:
            axes[name] = (len(shape), ones)
    return axes


def pin_unit_dims(model, data: "Data", input_names: list[str]) -> int:
    """Write the measured unit axes into ``model``'s value_info (in place) where ONNX shape
    inference does not already give them as 1. Returns how many tensors changed."""
    import onnx

    if len(data) < 2:
        return 0
    rows = [np.asarray(r) for r in (SAMPLE_ROWS if len(data) >= 5 else ((0,), (0, 1)))]
    graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    order = [n for n in input_names if n in graph_inputs]
    feeds = [dict(zip(order, (np.array(v) for v in data.feeds(order, r, trim=True)))) for r in rows]
    axes = unit_axes(measured_shapes(model, feeds))
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in inferred.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    changed = []
    for name, (rank, ones) in axes.items():
        if name in outputs or name not in infos:
            continue  # graph outputs carry their declared shape; untyped tensors are left to the builder
        info = onnx.ValueInfoProto()
        info.CopyFrom(infos[name])
        dims = info.type.tensor_type.shape.dim
        if not info.type.tensor_type.HasField("shape") or len(dims) != rank:
            continue
        if all(dims[i].HasField("dim_value") and dims[i].dim_value == 1 for i in ones):
            continue
        for i in ones:
            dims[i].Clear()
            dims[i].dim_value = 1
        changed.append(info)
    if changed:
        names = {info.name for info in changed}
        kept = [v for v in model.graph.value_info if v.name not in names]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept + changed)
    return len(changed)
