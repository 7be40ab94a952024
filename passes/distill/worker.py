"""The distillation worker: trains a student ONNX graph against teacher outputs with
onnxruntime-training, inside graphc's isolated training environment.

Why a separate program: onnxruntime-training (PyPI ``onnxruntime-training-cpu`` 1.19.2, the
last release) installs the module name ``onnxruntime`` and conflicts with the normal
``onnxruntime`` graphc uses, so it lives in its own venv (``graphc setup training``) and
runs in a subprocess. This module is executed by its file path with that venv's Python and
imports only the standard library, numpy, onnx and onnxruntime(-training), never graphc
(which is not installed there). Files are the contract, all in WORKDIR::

    in   config.json     options (see ``DEFAULTS``)
         student.onnx    the student graph exactly as the pass received it
         train.npz       the student's inputs by name, ``teacher`` (the teacher's first
                         output on those inputs) and optional ``labels``
         train_layer<i>.npy  the teacher's value of ``layers[i]`` on those rows (float16,
                         memory-mapped)
         eval.npz        the same for held-out data (optional)
    out  trained.npz     the trainable initializers of the best checkpoint, by name
         result.json     per-epoch history, best epoch, trainable names, resumed_from
         error.json      {"message": ...}: the graph cannot be trained (exit status 3)
    progress: one JSON object per line on stdout ({"event": "start"|"step"|"epoch"|"done"})

Rules:

1. The training copy of the student (the student file itself is never changed):
   LayerNormalization nodes get their optional Mean/InvStdDev outputs (onnxruntime issue
   22465: without them gradient building fails); inference-mode BatchNormalization is
   rewritten to ``(x - mean) * (1 / sqrt(var + eps)) * scale + bias`` with the running
   statistics frozen, because onnxruntime-training would otherwise train it on batch
   statistics that the inference graph never uses; every generated model is written with
   IR version <= 10 (1.19.2 refuses newer ones). The training session runs without
   onnxruntime's memory-pattern planner (``enable_mem_pattern = False``): with it,
   onnxruntime-training 1.19.2 corrupts the gradient of embedding tables (GatherGrad):
   measured on pruned MiniLM, batches of varying length (``mask``) crashed at the first step
   in 5 of 5 starts (a wild index in GatherGrad, after its bounds check had passed), and at
   a fixed length the losses drifted from a run without it from the second step on (1.7e-6
   at step 1, 2e-4 at step 2) while with the embedding tables frozen both runs agree to the
   bit. Without it, every start trained (4 of 4) at the same step time.
2. Trainable parameters: float32 initializers with more than one element, all finite,
   read in a weight slot: Conv/ConvTranspose weight and bias, any initializer of Gemm and
   MatMul, BatchNormalization/LayerNormalization/InstanceNormalization/GroupNormalization
   scale and bias, the table of Gather (embeddings), PRelu slope, and the constant operand
   of Add/Sub/Mul (biases, layer scales, position embeddings), also when read through
   Transpose/Reshape/Identity/Cast/Unsqueeze/Squeeze/Flatten (exports without constant
   folding). Everything else is frozen (BatchNorm running statistics, scalars, shape
   constants, masks), and so is every initializer whose name matches a ``freeze`` glob
   (``fnmatch``, case-sensitive).
3. Loss on the first graph output ``s`` and the teacher's ``t``, by ``loss``:

   - ``kl`` (class logits on the last axis): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
     + (1 - alpha) * CE(s, labels) + beta * MSE(s, t)``; KL is summed over the last axis and
     averaged over all other axes, CE (rank-2 outputs only) and MSE are means;
   - ``cosine`` (embeddings, features): ``alpha * mean_i(1 - cos(s_i, t_i)) + beta * MSE(s, t)``,
     where ``s_i``/``t_i`` are sample ``i`` flattened (as ``--metric cosine``) and
     ``cos(a, b) = <a, b> / sqrt(|a|^2 |b|^2 + COSINE_EPS)``;
   - ``mse``: ``alpha * MSE(s, t) + beta * MSE(s, t)``.

   ``T`` is read by ``kl`` only, labels (``alpha < 1``) by ``kl`` only. A term with weight 0
   is not built.

   Intermediate features (``layers``: tensor names present with the same shape in student
   and teacher): ``+ gamma * mean_i(MSE(s_i, t_i) / ms_i)`` where ``s_i`` is the student's
   tensor ``layers[i]``, ``t_i`` the teacher's (stored as float16: half the memory, targets
   to ~1e-3 relative) and ``ms_i`` the mean of ``t_i^2`` over the whole training data, so
   each layer weighs the same whatever its scale (a normalised MSE, TinyBERT-style hidden-
   state distillation; TinyBERT, Jiao et al. 2020, matches hidden states with plain MSE).
4. The loop: AdamW (``weight_decay``) with gradient clipping by global L2 norm (``clip``;
   0: off) inside the optimizer graph; the learning rate rises linearly from 0 over the
   first ``warmup`` share of the steps and then follows a cosine decay to 0, set before
   every step. Each epoch's order is a permutation drawn from ``(seed, epoch)``, the last
   incomplete batch is dropped, and onnxruntime runs with deterministic compute: a fixed
   seed gives the same weights, and a resumed run the same weights as an uninterrupted one
   (bit for bit on the test fixtures; on pruned MiniLM two runs' step losses agree to about
   1e-8 relative, as some onnxruntime CPU kernels reduce in a thread-dependent order).
   With ``mask`` (a 0/1 student input such as ``attention_mask``, [batch, sequence]) the
   batches carry little padding: the permutation is cut into windows of ``GROUP_WINDOW``
   batches, each window is sorted by row length (1 + the last non-zero mask column) and cut
   into batches, the batch order is shuffled (same seed, same batches), and every batch is
   cut to its longest row: inputs whose axis 1 is the mask's length, and teacher targets of
   rank >= 3 whose axis 1 is that length ([batch, sequence, hidden]), keep only the first
   columns. Exact for models whose valid positions never read padded ones (a BERT-style
   encoder with its attention mask); the training cost follows the real lengths, so data can
   be stored at the longest length without paying for its padding. Evaluation is not cut.
   Exception (measured): onnxruntime's InplaceClipGradNorm is not bit-reproducible (weights
   differ in the last bits from run to run, any thread count), so ``clip > 0`` gives the
   same weights only to about 1e-7; clipping is therefore off by default.
5. After each epoch (and once before training, "epoch 0" = the starting weights) the model
   is evaluated on eval.npz: held-out loss and, with ``metric``, top1/top5 (labels) or
   cosine/agreement (against the teacher). The best epoch (highest metric, else lowest
   held-out loss, else the last epoch when there is no eval data) is kept in best.npz and
   is what trained.npz holds. Training stops early after ``patience`` epochs without
   improvement (0: never).
6. Resume: after every epoch a checkpoint with the optimizer state and progress.json are
   written atomically into WORKDIR/checkpoints; started again on the same WORKDIR, the
   worker continues after the last completed epoch.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
import traceback

import numpy as np

DEFAULTS = {
    "epochs": 3, "lr": 1e-3, "batch": 64, "loss": "kl", "T": 4.0, "alpha": 1.0, "beta": 0.0, "seed": 0,
    "warmup": 0.05, "clip": 0.0, "weight_decay": 0.0, "patience": 2, "metric": None, "freeze": [],
    "threads": 0, "eval_batch": 256, "step_events": 50, "layers": [], "gamma": 1.0, "mask": None,
}
GROUP_WINDOW = 50  # batches per length-sorted window (rule 4, ``mask``)
TEACHER_INPUT = "distill_teacher"
LABELS_INPUT = "distill_labels"
LAYER_FILE = "{stem}_layer{index}.npy"  # beside train.npz/eval.npz
LAYER_INPUT = "distill_teacher_layer{}"  # input of the training graph
LOSSES = ("kl", "cosine", "mse")
COSINE_EPS = 1e-12
MAX_IR_VERSION = 10
WEIGHT_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2), "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2), "GroupNormalization": (1, 2), "Gather": (0,), "PRelu": (1,),
}
ANY_SLOT = {"Gemm", "MatMul", "Add", "Sub", "Mul"}
PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Cast", "Unsqueeze", "Squeeze", "Flatten"}


class UserError(Exception):
    """The graph or the options cannot be trained; reported as one line (exit status 3)."""


# --- numpy: loss and metrics (also the reference the tests compare against) -------------

def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def kd_loss(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
            T: float, alpha: float, beta: float, loss: str = "kl", layers=(), gamma: float = 0.0) -> float:
    """Rule 3 in numpy (float64); ``layers``: (student tensor, teacher tensor, mean square) triples."""
    total = 0.0
    if layers and gamma > 0:
        total += gamma * float(np.mean([((s.astype(np.float64) - t) ** 2).mean() / ms for s, t, ms in layers]))
    if alpha > 0 and loss == "kl":
        log_pt, log_ps = log_softmax(teacher / T), log_softmax(student / T)
        total += alpha * T * T * float((np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean())
    elif alpha > 0 and loss == "cosine":
        s = student.reshape(len(student), -1).astype(np.float64)
        t = teacher.reshape(len(teacher), -1).astype(np.float64)
        cos = (s * t).sum(1) / np.sqrt((s * s).sum(1) * (t * t).sum(1) + COSINE_EPS)
        total += alpha * float((1.0 - cos).mean())
    elif alpha > 0 and loss == "mse":
        total += alpha * float(((student.astype(np.float64) - teacher) ** 2).mean())
    if alpha < 1 and loss == "kl":
        log_p = log_softmax(student)
        total += (1 - alpha) * float(-np.take_along_axis(log_p, labels.reshape(-1, 1).astype(np.int64), 1).mean())
    if beta > 0:
        total += beta * float(((student.astype(np.float64) - teacher) ** 2).mean())
    return total


def metric_value(metric: str, outputs: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None) -> float:
    """top1/top5 against labels, cosine/agreement against the teacher (as graphc.metrics)."""
    if metric in ("top1", "top5"):
        k = 1 if metric == "top1" else 5
        top = np.argsort(-outputs, axis=1)[:, :k]
        return float((top == labels.reshape(-1, 1)).any(1).mean())
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = teacher.reshape(len(teacher), -1).astype(np.float64)
    if metric == "agreement":
        return float((a.argmax(1) == b.argmax(1)).mean())
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (norms == 0) & (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
    return float(np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(norms, 1e-300)).mean())


def lr_at(step: int, total: int, lr: float, warmup: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine decay to 0 (rule 4)."""
    warm = int(round(warmup * total))
    if step < warm:
        return lr * (step + 1) / warm
    span = max(1, total - warm)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))


# --- the training copy of the graph (rules 1 and 2) -------------------------------------

def trainable_names(model, freeze=()) -> list[str]:
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
    """Rule 1: inference BatchNormalization -> frozen-statistics affine ops (in place)."""
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
    """Rule 1: give LayerNormalization its optional Mean and InvStdDev outputs (in place)."""
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


def _loss_block(config: dict, output_name: str, last_dim: int, with_labels: bool,
                layer_scales: list[float] | None = None, layer_ranks: list[int] | None = None):
    import copy

    import onnx
    from onnx import helper
    from onnxruntime.training import onnxblock

    T, alpha, beta = float(config["T"]), float(config["alpha"]), float(config["beta"])
    kind = config["loss"]
    if kind not in LOSSES:
        raise UserError(f"loss={kind!r} is not one of {', '.join(LOSSES)}")
    if kind != "kl" and alpha < 1:
        raise UserError(f"loss={kind} has no cross-entropy term: alpha < 1 (labels) needs loss=kl")

    class KDLoss(onnxblock.Block):
        """Rule 3 as graph nodes on top of the student (built by onnxruntime-training)."""

        def build(self, student):
            graph = self.base.graph
            out = next(o for o in graph.output if o.name == student)
            teacher = copy.deepcopy(out)
            teacher.name = TEACHER_INPUT
            graph.input.append(teacher)
            nodes, terms = [], []

            def const(name, value):
                graph.initializer.append(helper.make_tensor(f"distill_{name}", onnx.TensorProto.FLOAT, [], [value]))
                return f"distill_{name}"

            def add(op, inputs, name, **attrs):
                nodes.append(helper.make_node(op, inputs, [f"distill_{name}"], name=f"distill_{name}_node", **attrs))
                return f"distill_{name}"

            if alpha > 0 and kind == "kl":
                t = const("T", T)
                log_ps = add("LogSoftmax", [add("Div", [student, t], "s_T")], "log_ps", axis=-1)
                log_pt = add("LogSoftmax", [add("Div", [TEACHER_INPUT, t], "t_T")], "log_pt", axis=-1)
                kl = add("Mul", [add("Exp", [log_pt], "pt"), add("Sub", [log_pt, log_ps], "log_ratio")], "kl_el")
                terms.append(add("Mul", [add("ReduceMean", [kl], "kl_mean", keepdims=0),
                                         const("kl_weight", alpha * T * T * last_dim)], "kl_term"))
            elif alpha > 0 and kind == "cosine":
                graph.initializer.append(helper.make_tensor("distill_flat_shape", onnx.TensorProto.INT64, [2],
                                                            [0, -1]))
                graph.initializer.append(helper.make_tensor("distill_axis1", onnx.TensorProto.INT64, [1], [1]))
                s_flat = add("Reshape", [student, "distill_flat_shape"], "s_flat")
                t_flat = add("Reshape", [TEACHER_INPUT, "distill_flat_shape"], "t_flat")

                def row_sum(a, b, name):
                    return add("ReduceSum", [add("Mul", [a, b], f"{name}_el"), "distill_axis1"], name, keepdims=0)

                norms = add("Mul", [row_sum(s_flat, s_flat, "ss"), row_sum(t_flat, t_flat, "tt")], "sstt")
                denominator = add("Sqrt", [add("Add", [norms, const("cos_eps", COSINE_EPS)], "sstt_eps")], "norm")
                cos = add("Div", [row_sum(s_flat, t_flat, "st"), denominator], "cos")
                distance = add("Sub", [const("one", 1.0), add("ReduceMean", [cos], "cos_mean", keepdims=0)],
                               "cos_distance")
                terms.append(add("Mul", [distance, const("cos_weight", alpha)], "cos_term"))
            elif alpha > 0 and kind == "mse":
                diff = add("Sub", [student, TEACHER_INPUT], "main_diff")
                terms.append(add("Mul", [add("ReduceMean", [add("Mul", [diff, diff], "main_sq")], "main_mse",
                                             keepdims=0), const("main_mse_weight", alpha)], "main_mse_term"))
            if alpha < 1 and with_labels:
                labels = copy.deepcopy(out)
                labels.name = LABELS_INPUT
                labels.type.tensor_type.elem_type = onnx.TensorProto.INT64
                del labels.type.tensor_type.shape.dim[-1]
                graph.input.append(labels)
                nodes.append(helper.make_node("SoftmaxCrossEntropyLoss", [student, LABELS_INPUT],
                                              ["distill_ce", "distill_ce_logp"], name="distill_ce_node",
                                              reduction="mean"))
                terms.append(add("Mul", ["distill_ce", const("ce_weight", 1.0 - alpha)], "ce_term"))
            if beta > 0:
                diff = add("Sub", [student, TEACHER_INPUT], "diff")
                terms.append(add("Mul", [add("ReduceMean", [add("Mul", [diff, diff], "sq")], "mse", keepdims=0),
                                         const("mse_weight", beta)], "mse_term"))
            layers, gamma = list(config["layers"]), float(config["gamma"])
            if layers and gamma > 0:
                layer_terms = []
                for i, name in enumerate(layers):
                    target = LAYER_INPUT.format(i)
                    graph.input.append(helper.make_tensor_value_info(
                        target, onnx.TensorProto.FLOAT, [f"distill_l{i}_d{k}" for k in range(layer_ranks[i])]))
                    diff = add("Sub", [name, target], f"l{i}_diff")
                    mse = add("ReduceMean", [add("Mul", [diff, diff], f"l{i}_sq")], f"l{i}_mse", keepdims=0)
                    layer_terms.append(add("Mul", [mse, const(f"l{i}_weight", gamma / len(layers) / layer_scales[i])],
                                           f"l{i}_term"))
                total = layer_terms[0]
                for k, term in enumerate(layer_terms[1:]):
                    total = add("Add", [total, term], f"layer_sum{k}")
                terms.append(total)
            if not terms:
                raise UserError("the loss has no term: alpha=0 needs labels, or give beta > 0")
            loss = terms[0]
            for k, term in enumerate(terms[1:]):
                loss = add("Add", [loss, term], f"loss_sum{k}")
            graph.node.extend(nodes)
            return loss

    return KDLoss()


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
    frozen_bn = freeze_batchnorm(model)
    layernorms = add_layernorm_outputs(model)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    directory = workdir / "artifacts"
    directory.mkdir(exist_ok=True)
    clip = float(config["clip"])
    optimizer = onnxblock.optim.AdamW(weight_decay=float(config["weight_decay"]),
                                      clip_grad=onnxblock.optim.ClipGradNorm(clip) if clip > 0 else None)
    try:
        scales = train_data.layer_mean_squares()
        ranks = [layer.ndim for layer in train_data.layers]
        artifacts.generate_artifacts(model, requires_grad=names, loss=_loss_block(config, output.name,
                                     dims[-1].dim_value if dims else 1, with_labels, scales, ranks),
                                     optimizer=optimizer, artifact_directory=str(directory),
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
    return {"trainable": names, "batchnorm_frozen": frozen_bn, "layernorm_outputs_added": layernorms}


# --- the loop (rules 4-6) ---------------------------------------------------------------

def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _atomic_json(path: pathlib.Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _atomic_npz(path: pathlib.Path, arrays: dict) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class Data:
    """Student inputs, teacher outputs and optional labels of one .npz."""

    def __init__(self, path: pathlib.Path, input_names: list[str], layer_count: int = 0, mask: str | None = None):
        if mask is not None and mask not in input_names:
            raise UserError(f"mask={mask!r} is not an input of the student ({', '.join(input_names)})")
        with np.load(path) as npz:
            self.inputs = {name: npz[name] for name in input_names}
            self.teacher = npz["teacher"].astype(np.float32)
            self.labels = npz["labels"].astype(np.int64) if "labels" in npz.files else None
        # float16, memory-mapped (8.8 GB for 12 MiniLM hidden states on 40k rows), widened per batch
        self.layers = [np.load(path.with_name(LAYER_FILE.format(stem=path.stem, index=i)), mmap_mode="r")
                       for i in range(layer_count)]
        self._buffers: dict[tuple[str, int], np.ndarray] = {}
        self.mask = mask
        self.lengths = valid_lengths(self.inputs[mask]) if mask is not None else None

    def __len__(self) -> int:
        return len(self.teacher)

    def layer_mean_squares(self, chunk: int = 1024) -> list[float]:
        """Mean of t^2 of each teacher layer over all rows (float64, in chunks: no float32 copy)."""
        scales = []
        for layer in self.layers:
            total = sum(float(np.square(layer[i:i + chunk], dtype=np.float64).sum())
                        for i in range(0, len(layer), chunk))
            scales.append(max(total / max(layer.size, 1), 1e-12))
        return scales

    def feeds(self, order: list[str], rows, trim: bool = False) -> list[np.ndarray]:
        """The arrays of one batch, in ``order``, copied into buffers this object keeps for the
        whole run (one per input and batch size): onnxruntime always reads memory that is alive
        and holds the current batch. (Added after a Gather read garbage indices twice in 40k-row
        MiniLM runs; the cause turned out to be onnxruntime's memory-pattern planner, rule 1.)
        ``trim`` (with a mask): cut to the batch's longest row (rule 4)."""
        values = {**self.inputs, TEACHER_INPUT: self.teacher}
        if self.labels is not None:
            values[LABELS_INPUT] = self.labels
        for i, layer in enumerate(self.layers):
            values[LAYER_INPUT.format(i)] = layer
        widened = {LAYER_INPUT.format(i) for i in range(len(self.layers))}
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        length = int(self.lengths[rows].max()) if trim and self.lengths is not None else None
        batch = []
        for name in order:
            source = values[name]
            dtype = np.float32 if name in widened else source.dtype
            key = (name, len(rows))
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = np.empty(len(rows) * math.prod(source.shape[1:]), dtype)
            shape = [len(rows), *source.shape[1:]]
            if length is not None and self._sequence_axis(name, source):
                shape[1] = length
                view = buffer[:math.prod(shape)].reshape(shape)
                view[...] = source[rows, :length]
            else:
                view = buffer.reshape(shape)
                view[...] = source[rows]
            batch.append(view)
        return batch

    def _sequence_axis(self, name: str, source: np.ndarray) -> bool:
        """Whether axis 1 of ``source`` is the mask's sequence axis (rule 4)."""
        sequence = self.lengths is not None and source.ndim >= 2 and source.shape[1] == self.seq_len
        return sequence and (name in self.inputs or (name != LABELS_INPUT and source.ndim >= 3))

    @property
    def seq_len(self) -> int:
        return self.inputs[self.mask].shape[1]


def valid_lengths(mask: np.ndarray) -> np.ndarray:
    """Per row of a [batch, sequence] mask: 1 + its last non-zero column (1 for an all-zero row)."""
    if mask.ndim != 2:
        raise UserError(f"mask: the mask input must be [batch, sequence], got shape {list(mask.shape)}")
    nonzero = mask != 0
    last = mask.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 1)


def epoch_batches(perm: np.ndarray, batch: int, lengths: np.ndarray | None, rng) -> list[np.ndarray]:
    """Rows of each step of one epoch (rule 4): consecutive slices of ``perm`` (the last
    incomplete batch dropped), or with ``lengths`` length-sorted windows in shuffled order."""
    perm = perm[:len(perm) // batch * batch]
    if lengths is None:
        return [perm[i:i + batch] for i in range(0, len(perm), batch)]
    batches = []
    for start in range(0, len(perm), GROUP_WINDOW * batch):
        window = perm[start:start + GROUP_WINDOW * batch]
        window = window[np.argsort(lengths[window], kind="stable")]
        batches += [window[i:i + batch] for i in range(0, len(window), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def evaluate(module, data: Data, config: dict) -> dict:
    module.eval()
    order = module.input_names()
    losses, outputs, weights = [], [], []
    size = int(config["eval_batch"])
    for start in range(0, len(data), size):
        rows = slice(start, start + size)
        loss, logits = module(*data.feeds(order, rows))[:2]
        losses.append(float(loss))
        weights.append(len(logits))
        outputs.append(logits)
    result = {"eval_loss": float(np.average(losses, weights=weights))}
    if config["metric"]:
        result["metric"] = metric_value(config["metric"], np.concatenate(outputs), data.teacher, data.labels)
    return result


def _better(new: dict, old: dict | None) -> bool:
    if old is None:
        return True
    if "metric" in new:
        return new["metric"] > old["metric"]
    if "eval_loss" in new:
        return new["eval_loss"] < old["eval_loss"]
    return True  # no eval data: the latest epoch


def train(workdir: pathlib.Path) -> dict:
    from onnxruntime import SessionOptions
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    config = {**DEFAULTS, **json.loads((workdir / "config.json").read_text())}
    input_names = list(config["inputs"])
    layer_count = len(config["layers"]) if float(config["gamma"]) > 0 else 0
    mask = config["mask"] or None
    train_data = Data(workdir / "train.npz", input_names, layer_count, mask)
    eval_data = (Data(workdir / "eval.npz", input_names, layer_count, mask) if (workdir / "eval.npz").exists()
                 else None)
    with_labels = float(config["alpha"]) < 1
    if with_labels and (train_data.labels is None or (eval_data is not None and eval_data.labels is None)):
        raise UserError(f"alpha={config['alpha']} < 1 weighs hard labels; the data has no 'labels'")
    art = workdir / "artifacts"
    info_path = art / "info.json"
    if not info_path.exists():
        info = build_artifacts(config, workdir, with_labels, train_data)
        _atomic_json(info_path, info)
    info = json.loads(info_path.read_text())
    ckpt_dir = workdir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    progress_path = ckpt_dir / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else None
    resumed_from = progress["epoch"] if progress else None
    state = CheckpointState.load_checkpoint(str(ckpt_dir / "last.ckpt" if progress else art / "checkpoint"))
    options = SessionOptions()
    options.intra_op_num_threads = int(config["threads"]) or 0
    options.inter_op_num_threads = 1
    options.use_deterministic_compute = True  # rule 4: same seed, same weights
    options.enable_mem_pattern = False  # rule 1: the pattern planner corrupts embedding gradients
    options.log_severity_level = 3
    module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"),
                    device="cpu", session_options=options)
    optimizer = Optimizer(str(art / "optimizer_model.onnx"), module)
    names = info["trainable"]
    batch = int(config["batch"])
    if len(train_data) < batch:
        raise UserError(f"--train-data has {len(train_data)} rows, fewer than one batch ({batch})")
    steps_per_epoch = len(train_data) // batch
    epochs = int(config["epochs"])
    total = steps_per_epoch * epochs
    emit("start", epochs=epochs, steps_per_epoch=steps_per_epoch, trainable=len(names),
         resumed_from=resumed_from, batchnorm_frozen=info["batchnorm_frozen"])

    def params() -> dict:
        return {name: state.parameters[name].data for name in names}

    if progress is None:
        history, best, bad = [], None, 0
        record = {"epoch": 0}
        if eval_data is not None:
            record.update(evaluate(module, eval_data, config))
            best = record
            _atomic_npz(ckpt_dir / "best.npz", params())
        history.append(record)
        emit("epoch", **record)
        first_epoch = 1
    else:
        history, best, bad = progress["history"], progress["best"], progress["bad_epochs"]
        first_epoch = progress["epoch"] + 1
    stopped_early, first_step_loss = False, progress.get("first_step_loss") if progress else None
    for epoch in range(first_epoch, epochs + 1):
        if config["patience"] and bad >= int(config["patience"]):
            stopped_early = True
            break
        module.train()
        order = module.input_names()
        rng = np.random.default_rng([int(config["seed"]), epoch])
        steps = epoch_batches(rng.permutation(len(train_data)), batch, train_data.lengths, rng)
        running, count, started = 0.0, 0, time.perf_counter()
        real, fed = 0, 0  # mask: real tokens and positions fed this epoch
        for i, rows in enumerate(steps):
            if train_data.lengths is not None:
                real += int(train_data.lengths[rows].sum())
                fed += len(rows) * int(train_data.lengths[rows].max())
            step = (epoch - 1) * steps_per_epoch + i
            optimizer.set_learning_rate(lr_at(step, total, float(config["lr"]), float(config["warmup"])))
            loss = float(module(*train_data.feeds(order, rows, trim=True))[0])
            if not math.isfinite(loss):
                raise UserError(f"the loss became {loss} at epoch {epoch} step {i + 1}; lower distill:lr "
                                f"(now {config['lr']})")
            optimizer.step()
            module.lazy_reset_grad()
            running, count = running + loss, count + 1
            if step == 0:
                first_step_loss = loss
            if (i + 1) % int(config["step_events"]) == 0 or i + 1 == steps_per_epoch:
                emit("step", epoch=epoch, step=i + 1, loss=running / count)
        record = {"epoch": epoch, "train_loss": running / max(count, 1),
                  "seconds": round(time.perf_counter() - started, 2)}
        if fed:
            record["token_fill"] = real / fed
        if eval_data is not None:
            record.update(evaluate(module, eval_data, config))
        if _better(record, best):
            best, bad = record, 0
            _atomic_npz(ckpt_dir / "best.npz", params())
        else:
            bad += 1
        history.append(record)
        tmp = ckpt_dir / "last.ckpt.tmp"
        CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
        os.replace(tmp, ckpt_dir / "last.ckpt")
        _atomic_json(progress_path, {"epoch": epoch, "history": history, "best": best, "bad_epochs": bad,
                                     "first_step_loss": first_step_loss})
        emit("epoch", **record)
    if best is None:  # no eval data and no epoch (epochs=0)
        best = history[-1]
        _atomic_npz(ckpt_dir / "best.npz", params())
    with np.load(ckpt_dir / "best.npz") as npz:
        _atomic_npz(workdir / "trained.npz", {k: npz[k] for k in npz.files})
    result = {"history": history, "best": best, "resumed_from": resumed_from, "stopped_early": stopped_early,
              "trainable": names, "batchnorm_frozen": info["batchnorm_frozen"],
              "layernorm_outputs_added": info["layernorm_outputs_added"], "steps_per_epoch": steps_per_epoch,
              "first_step_loss": first_step_loss}
    _atomic_json(workdir / "result.json", result)
    emit("done", best_epoch=best["epoch"])
    return result


def import_training() -> None:
    """Import onnxruntime.training without its package ``__init__``.

    Why: that ``__init__`` imports ``optim`` (the FP16 optimizer of ORTModule), which
    imports torch; on-device training (``api``, ``onnxblock``, ``artifacts``) never uses
    it, and a 700 MB torch in the training venv would buy nothing.
    """
    import types

    import onnxruntime

    if "onnxruntime.training" not in sys.modules:
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(pathlib.Path(onnxruntime.__file__).parent / "training")]
        sys.modules["onnxruntime.training"] = package


def probe() -> dict:
    """Versions of what the worker imports (``graphc setup training`` checks the venv with it)."""
    import_training()
    import onnx
    import onnxruntime
    from onnxruntime.training import artifacts, onnxblock  # noqa: F401
    from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: F401

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": ".".join(map(str, sys.version_info[:3]))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--probe"]:
        print(json.dumps(probe()))
        return 0
    if len(argv) != 1:
        print("usage: worker.py WORKDIR | --probe", file=sys.stderr)
        return 2
    workdir = pathlib.Path(argv[0]).resolve()
    os.chdir(workdir)  # onnxblock writes temporary files into the working directory
    import_training()
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the gradient builder logs every transformer
    try:
        train(workdir)
    except UserError as exc:
        _atomic_json(workdir / "error.json", {"message": str(exc)})
        return 3
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
