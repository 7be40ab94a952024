"""Preconditions of ``distill``: what onnxruntime-training 1.19.2 can train, and what the
options and the data must be, checked before any training starts.

The pass refuses (before any pass runs, in ``check``, on the model as loaded; and again in
``run`` on the graph it receives, which earlier passes may have changed): a missing training
environment (with the command to create it), missing ``--train-data``, missing labels for
``alpha < 1``, ``alpha < 1`` with ``loss`` other than ``kl``, a quantized graph (put ``int8``
after ``distill``), opset outside 13..20, HardSigmoid/HardSwish/Einsum/CumSum/Floor between
the weights and the output, a first output that is not float32 (``kl``: without a fixed
class axis; ``cosine``: without a batch axis), a ``freeze`` glob that matches no trainable
initializer (checked on the graph distill receives) or that freezes everything.

Rules of ``check_trainable``, each a one-line GraphcError:

- QuantizeLinear/DequantizeLinear and the integer ops (QLinear*, MatMulInteger,
  ConvInteger, DynamicQuantizeLinear) have no gradient: the graph must not be quantized yet
  ("put int8 after distill").
- The default-domain opset must be 13..20: opset 22 is refused by onnxruntime 1.19.2 and
  BERT at opset 21 corrupted memory in training (measured); the loss is built with opset-13
  operators.
- HardSigmoid, HardSwish, Einsum, CumSum and Floor have no gradient builder in
  onnxruntime-training 1.19.2 (measured); they are refused only where their input depends
  on a trainable parameter (a Floor in shape arithmetic is harmless).
- The first output, which the loss reads, must be float32; with ``loss=kl`` it needs a fixed
  last (class) axis, with ``loss=cosine`` a batch axis (rank >= 2); cross-entropy on labels
  (alpha < 1, ``loss=kl`` only) needs a rank-2 first output.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np
import onnx

from graphc.data import Dataset
from graphc.errors import GraphcError
from graphc.passes.distill.worker.training_graph import trainable_names
from graphc.ops import QUANTIZED_OPS
from graphc.runtime import tap

NO_GRADIENT_OPS = {"HardSigmoid", "HardSwish", "Einsum", "CumSum", "Floor"}
OPSET_RANGE = (13, 20)


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _depends_on(model: onnx.ModelProto, sources: set[str]) -> set[str]:
    """Tensors computed (transitively) from ``sources``, in a topologically sorted graph."""
    reached = set(sources)
    for node in model.graph.node:
        if any(name in reached for name in node.input):
            reached.update(o for o in node.output if o)
    return reached


def check_trainable(model: onnx.ModelProto, what: str, hard_labels: bool, loss: str = "kl") -> None:
    """Raise GraphcError naming the first rule ``model`` breaks."""
    quantized = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if quantized:
        raise GraphcError(f"distill: {what} is quantized ({', '.join(quantized)} have no gradient); "
                          f"put int8 after distill (e.g. --passes prune,distill,int8)")
    opset = default_opset(model)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise GraphcError(f"distill: {what} has opset {opset}; onnxruntime-training 1.19.2 trains opsets "
                          f"{OPSET_RANGE[0]}-{OPSET_RANGE[1]}: export with opset_version between them "
                          f"(or convert with onnx.version_converter)")
    reached = _depends_on(model, set(trainable_names(model)))
    blocked = sorted({f"{n.op_type} ({n.name or n.output[0]})" for n in model.graph.node
                      if n.op_type in NO_GRADIENT_OPS and any(i in reached for i in n.input)})
    if blocked:
        raise GraphcError(f"distill: {what} has ops without a gradient in onnxruntime-training 1.19.2 between "
                          f"its weights and its output: {', '.join(blocked[:5])}")
    output = model.graph.output[0]
    tensor_type = output.type.tensor_type
    dims = tensor_type.shape.dim
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GraphcError(f"distill: the first output {output.name!r} of {what} must be float32; the loss compares "
                          f"it with the teacher's")
    if loss == "kl" and (not dims or not dims[-1].HasField("dim_value")):
        raise GraphcError(f"distill: the first output {output.name!r} of {what} must be float32 with a fixed last "
                          f"(class) axis for loss=kl (for embeddings or features use loss=cosine or loss=mse)")
    if loss == "cosine" and len(dims) < 2:
        raise GraphcError(f"distill:loss=cosine compares samples along the batch axis; the first output "
                          f"{output.name!r} of {what} has rank {len(dims)}")
    if hard_labels and len(dims) != 2:
        raise GraphcError(f"distill: alpha < 1 adds cross-entropy on labels, which needs a [batch, classes] first "
                          f"output; {output.name!r} has rank {len(dims)} (use alpha=1)")


def check_mask(name: str, input_names: list[str], train_data: Dataset, eval_data: Dataset | None) -> None:
    """Rule 4: ``mask`` names an input whose data is [batch, sequence] zeros and ones."""
    if name not in input_names:
        raise GraphcError(f"distill:mask={name}: the model has no input {name!r} (inputs: "
                          f"{', '.join(input_names)})")
    for dataset, flag in ((train_data, "--train-data"), (eval_data, "--eval-data")):
        if dataset is None:
            continue
        values = dataset.inputs[name]
        if values.ndim != 2:
            raise GraphcError(f"distill:mask={name}: {flag} {dataset.source} holds it with shape "
                              f"{list(values.shape)}; a mask is [batch, sequence]")
        if not np.isin(values, (0, 1)).all():
            raise GraphcError(f"distill:mask={name}: {flag} {dataset.source} holds values other than 0 "
                              f"and 1 in it; a mask marks real positions with 1 and padding with 0")


def check_freeze(student: onnx.ModelProto, freeze: str, patterns: list[str]) -> int:
    """Rule 3: each glob of ``freeze`` (its ``patterns``) must match a trainable initializer of
    the graph distill receives, and together they must leave something to train; returns how
    many trainable initializers they keep frozen."""
    if not patterns:
        return 0
    names = trainable_names(student)
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            raise GraphcError(f"distill:freeze: {pattern!r} matches no trainable initializer of the graph "
                              f"distill receives (e.g. {', '.join(names[:3])})")
    left = len(trainable_names(student, patterns))
    if not left:
        raise GraphcError(f"distill:freeze={freeze} leaves nothing to train")
    return len(names) - left


def layer_tensors(student: onnx.ModelProto, teacher: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """Rule 2, intermediate features: the tensors the ``layers`` globs (``patterns``) name, in
    the student's node order.

    ``layers=<glob>[+<glob>...]`` names tensors (node outputs, by ``fnmatch`` glob on the
    tensor name) that student and teacher both compute; each adds a normalised MSE to the
    loss, weighted by ``gamma`` (``worker/losses.py``). Each glob must match a float tensor of
    both graphs, and every matched tensor must have the same shape in both on a probe batch
    (``check_shapes``): after ``prune`` that holds for the residual stream of a transformer
    (LayerNorm outputs; heads and FFN neurons are gone but the hidden size stays) and not for
    pruned CNN channels, where matching would need a learned projection, which graphc does not
    build (refused with the tensor and both shapes).
    """
    if not patterns:
        return []
    teacher_tensors = {name for node in teacher.graph.node for name in node.output if name}
    candidates = [name for node in student.graph.node for name in node.output if name in teacher_tensors]
    chosen = []
    for pattern in patterns:
        hits = [name for name in candidates if fnmatchcase(name, pattern)]
        if not hits:
            raise GraphcError(f"distill:layers: {pattern!r} matches no tensor that both the student and the "
                              f"teacher compute (e.g. {', '.join(candidates[-3:])})")
        chosen += [name for name in hits if name not in chosen]
    return [name for name in candidates if name in chosen]


def _probe(model: onnx.ModelProto, layers: list[str], data: Dataset, threads: int | None,
           what: str) -> list[np.ndarray]:
    """The first output and the ``layers`` tensors of ``model`` on the few rows of ``data``
    (through the tensor tap, pieces joined again)."""
    names = [model.graph.output[0].name, *layers]
    seen: dict[str, list[np.ndarray]] = {name: [] for name in names}
    tap(model, names, data, lambda name, values, piece: seen[name].append(values), batch_size=len(data),
        threads=threads, what=what)
    return [np.concatenate(seen[name]) for name in names]


def check_shapes(student: onnx.ModelProto, teacher: onnx.ModelProto, layers: list[str], train_data: Dataset,
                 threads: int | None) -> None:
    """Rules 1 and 2: the first outputs, and every ``layers`` tensor, have the same shape in both
    graphs (on a probe batch of two rows of ``train_data``)."""
    probe = train_data.take(2)
    got = _probe(student, layers, probe, threads, "the student")
    want = _probe(teacher, layers, probe, threads, "the teacher")
    if got[0].shape != want[0].shape:
        raise GraphcError(f"distill: the student's first output has shape {list(got[0].shape)}, the teacher's "
                          f"{list(want[0].shape)}; they must match")
    for name, s, t in zip(layers, got[1:], want[1:]):
        if s.dtype != np.float32 or t.dtype != np.float32:
            raise GraphcError(f"distill:layers: {name!r} is {s.dtype}, not float32: only float tensors "
                              f"can be matched")
        if s.shape != t.shape:
            raise GraphcError(f"distill:layers: {name!r} has shape {list(s.shape)} in the student and "
                              f"{list(t.shape)} in the teacher (pruned channels); matching tensors of "
                              f"different widths needs a projection, which is not supported: pick "
                              f"tensors pruning leaves at full width (a transformer's LayerNorm outputs)")
