"""The training copy of the student and the artifacts onnxruntime-training trains
(``build_artifacts``: training, eval and optimizer models and the first checkpoint, in
WORKDIR/artifacts).

Rule 3 of ``graphc.passes.distill``, what is trained (``trainable_names``): the weights of
the student, that is float32 initializers with more than one element, all finite, read in
a weight slot: Conv/ConvTranspose weight and bias, any initializer of Gemm and MatMul,
BatchNormalization/LayerNormalization/InstanceNormalization/GroupNormalization scale and
bias, the table of Gather (embeddings), PRelu slope, and the constant operand of
Add/Sub/Mul (biases, layer scales, position embeddings), also when read through
Transpose/Reshape/Identity/Cast/Unsqueeze/Squeeze/Flatten (exports without constant
folding). Everything else is frozen (BatchNorm running statistics, scalars, shape
constants, masks), and so is every initializer whose name matches a ``freeze`` glob
(``fnmatch``, case-sensitive, joined by ``+``, e.g. ``freeze=*word_embeddings*`` keeps a
text model's token table, which pruning heads and FFN neurons leaves as the teacher's).

Rule 4, the training copy of the student (the student file itself is never changed):
LayerNormalization nodes get their optional Mean/InvStdDev outputs (onnxruntime issue
22465: without them gradient building fails); inference-mode BatchNormalization is
rewritten to ``(x - mean) * (1 / sqrt(var + eps)) * scale + bias`` with the running
statistics frozen, because onnxruntime-training would otherwise train it on batch
statistics that the inference graph never uses; only the first output is kept (the one
distilled; a stateful model's next state is not a target, and onnxruntime-training's loss
block takes one output); every generated model is written with IR version <= 10 (1.19.2
refuses newer ones); weights with zeros to keep, or under gradual sparsity, are read through
a frozen 0/1 mask (rule 8, ``sparse_masks``); axes that are 1 at run time are written into
the shapes the gradient builder reads (``unit_dims``: without them it mis-builds the gradient
of a broadcast Add, as for MiniLM's position embeddings, and corrupts the heap).
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import numpy as np

from .losses import loss_block
from .sparse_masks import add_keep_masks
from .unit_dims import pin_unit_dims
from .protocol import UserError

if TYPE_CHECKING:
    from .batches import Data

MAX_IR_VERSION = 10
WEIGHT_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2), "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2), "GroupNormalization": (1, 2), "Gather": (0,), "PRelu": (1,),
}
ANY_SLOT = {"Gemm", "MatMul", "Add", "Sub", "Mul"}
PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Cast", "Unsqueeze", "Squeeze", "Flatten"}


def trainable_names(model, freeze=()) -> list[str]:
    """Rule 3: the trainable initializers of ``model`` not matched by a ``freeze`` glob, sorted."""
    from fnmatch import fnmatchcase

    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    slots: dict[str, None] = {}
    for node in model.graph.node:
        indices = range(len(node.input)) if node.op_type in ANY_SLOT else WEIGHT_SLOTS.get(node.op_type, ())
        slots.update((node.input[i], None) for i in indices if i < len(node.input) and node.input[i])
    for node in reversed(model.graph.node):  # a weight read through Transpose/Reshape/... is still one
        if node.op_type in PASS_THROUGH and node.output[0] in slots and node.input:
            slots[node.input[0]] = None
    chosen = []
    for name in slots:
        tensor = initializers.get(name)
        if tensor is None or tensor.data_type != 1:  # FLOAT
            continue
        values = numpy_helper.to_array(tensor)
        if values.size > 1 and np.isfinite(values).all() and not any(fnmatchcase(name, p) for p in freeze):
            chosen.append(name)
    return sorted(chosen)


def _tensor_ranks(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    for t in model.graph.initializer:
        ranks[t.name] = len(t.dims)
    for node in model.graph.node:  # a Conv's output has the rank of its weight
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in ranks:
            ranks.setdefault(node.output[0], ranks[node.input[1]])
    return ranks


def freeze_batchnorm(model) -> int:
    """Rule 4 (the training copy): inference BatchNormalization -> frozen-statistics affine ops (in place)."""
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    ranks = _tensor_ranks(model)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, scale, bias, mean, var = node.input[:5]
        if attrs.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
            raise UserError(f"BatchNormalization {node.name!r} is in training mode; distill trains on "
                            f"inference graphs only")
        if mean not in initializers or var not in initializers:
            raise UserError(f"BatchNormalization {node.name!r} has non-constant running statistics")
        rank = ranks.get(x)
        if rank is None or rank < 2:
            raise UserError(f"BatchNormalization {node.name!r}: the rank of its input {x!r} is unknown")
        mean_v = numpy_helper.to_array(initializers[mean]).astype(np.float32)
        var_v = numpy_helper.to_array(initializers[var]).astype(np.float32)
        eps = float(attrs.get("epsilon", 1e-5))
        shape = [len(mean_v)] + [1] * (rank - 2)
        base = f"{node.name or node.output[0]}__distill"
        extra = [
            numpy_helper.from_array(mean_v.reshape(shape), f"{base}_mean"),
            numpy_helper.from_array((1.0 / np.sqrt(var_v + eps)).astype(np.float32).reshape(shape), f"{base}_invstd"),
            numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{base}_shape"),
        ]
        model.graph.initializer.extend(extra)
        nodes += [
            helper.make_node("Sub", [x, f"{base}_mean"], [f"{base}_centred"], name=f"{base}_sub"),
            helper.make_node("Mul", [f"{base}_centred", f"{base}_invstd"], [f"{base}_normed"], name=f"{base}_mul0"),
            helper.make_node("Reshape", [scale, f"{base}_shape"], [f"{base}_scale"], name=f"{base}_rs0"),
            helper.make_node("Reshape", [bias, f"{base}_shape"], [f"{base}_bias"], name=f"{base}_rs1"),
            helper.make_node("Mul", [f"{base}_normed", f"{base}_scale"], [f"{base}_scaled"], name=f"{base}_mul1"),
            helper.make_node("Add", [f"{base}_scaled", f"{base}_bias"], [node.output[0]], name=f"{base}_add"),
        ]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def add_layernorm_outputs(model) -> int:
    """Rule 4 (the training copy): give LayerNormalization its optional Mean and InvStdDev outputs (in place)."""
    added = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "LayerNormalization":
            continue
        while len(node.output) < 3:
            node.output.append("")
        for k, suffix in ((1, "mean"), (2, "invstddev")):
            if not node.output[k]:
                node.output[k] = f"{node.name or 'layernorm'}_{i}__distill_{suffix}"
                added += 1
    return added

def build_artifacts(config: dict, workdir: pathlib.Path, with_labels: bool, train_data: "Data") -> dict:
    """Training, eval and optimizer models plus the initial checkpoint in WORKDIR/artifacts."""
    import onnx
    from onnxruntime.training import artifacts, onnxblock

    student = onnx.load(str(workdir / "student.onnx"))
    names = trainable_names(student, config["freeze"])
    if not names:
        if config["freeze"]:
            raise UserError(f"freeze={'+'.join(config['freeze'])} leaves no trainable initializer")
        raise UserError("the student has no trainable float initializers (weights in Constant nodes? run fold first)")
    output = student.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    if config["loss"] == "kl" and (not dims or not dims[-1].HasField("dim_value")):
        raise UserError(f"the first output {output.name!r} needs a fixed last (class) axis for loss=kl")
    if config["loss"] == "cosine" and len(dims) < 2:
        raise UserError(f"the first output {output.name!r} has rank {len(dims)}; loss=cosine compares samples "
                        f"along a batch axis (rank >= 2)")
    model = onnx.ModelProto()
    model.CopyFrom(student)
    del model.graph.output[1:]  # rule 4: the first output is the target; a next state is not trained on
    frozen_bn = freeze_batchnorm(model)
    layernorms = add_layernorm_outputs(model)
    sparse = config.get("sparsity") or {}
    gradual = (sparse.get("gradual") or {}).get("layers", {})
    frozen_gradual = sorted(set(gradual) - set(names))
    if frozen_gradual:
        raise UserError(f"sparsity={sparse['gradual']['final']}: layer {frozen_gradual[0]!r} is not trained "
                        f"(freeze=? exclude= it to keep it dense)")
    masked = [n for n in sparse.get("masked", []) if n in names]  # a frozen weight keeps its zeros anyway
    keeps = add_keep_masks(model, masked)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    pinned = pin_unit_dims(model, train_data, config["inputs"])
    directory = workdir / "artifacts"
    directory.mkdir(exist_ok=True)
    clip = float(config["clip"])
    optimizer = onnxblock.optim.AdamW(weight_decay=float(config["weight_decay"]),
                                      clip_grad=onnxblock.optim.ClipGradNorm(clip) if clip > 0 else None)
    try:
        scales = train_data.layer_mean_squares()
        ranks = [layer.ndim for layer in train_data.layers]
        artifacts.generate_artifacts(model, requires_grad=names, loss=loss_block(config, output.name,
                                     dims[-1].dim_value if dims else 1, with_labels, scales, ranks),
                                     optimizer=optimizer, artifact_directory=str(directory), frozen_params=keeps,
                                     additional_output_names=[output.name])
    except UserError:
        raise
    except Exception as exc:  # gradient building refused the graph: a property of the model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"onnxruntime-training cannot build the training graph: {first}") from None
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        path = directory / name
        generated = onnx.load(str(path))
        if generated.ir_version > MAX_IR_VERSION:
            generated.ir_version = MAX_IR_VERSION
            onnx.save(generated, str(path))
    return {"trainable": names, "batchnorm_frozen": frozen_bn, "layernorm_outputs_added": layernorms,
            "masked": masked, "unit_dims_pinned": pinned}
