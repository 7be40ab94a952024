"""Preconditions of ``distill``: what onnxruntime-training 1.19.2 can train, checked before
any training starts (the pass runs them in ``check`` on the model as loaded and again in
``run`` on the graph it receives, which earlier passes may have changed).

Rules, each a one-line GraphcError:

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

import onnx

from graphc.errors import GraphcError
from graphc.passes.distill.worker import trainable_names

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "MatMulInteger", "ConvInteger", "QLinearAdd", "QLinearMul", "QGemm"}
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
