"""``distill``: knowledge-distillation fine-tuning of the current graph against a teacher.

The ONNX graph stays the source of truth: only the values of its trainable initializers
change. Rules:

1. Teacher: the model as loaded before the first pass, or ``teacher=<path>`` (same input
   names, a first output of the same shape). Its first output on ``--train-data`` (and
   ``--eval-data``) is computed with the normal onnxruntime and becomes the soft target.
2. Loss on the first output, chosen by ``loss`` (explicit, never guessed: a [batch, 384]
   embedding and 384-class logits look the same in a graph):

   - ``kl`` (the default; class logits on the last axis): ``alpha * T^2 *
     KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(labels)
     + beta * MSE(student, teacher)``;
   - ``cosine`` (sentence embeddings, features): ``alpha * mean over samples of
     (1 - cos(student, teacher))`` with each sample flattened, as ``--metric cosine``
     measures it, ``+ beta * MSE(student, teacher)``;
   - ``mse``: ``alpha * MSE(student, teacher) + beta * MSE(student, teacher)``.

   Unlabelled data is fine with ``alpha=1`` (the default). ``alpha < 1`` adds cross-entropy
   on integer ``labels`` and needs ``loss=kl`` and a [batch, classes] output; ``T`` is read
   by ``kl`` only.

   Intermediate features: ``layers=<glob>[+<glob>...]`` names tensors (node outputs, by
   ``fnmatch`` glob on the tensor name) that student and teacher both compute; each adds a
   normalised MSE to the loss, weighted by ``gamma`` (``worker`` rule 3). Each
   glob must match a float tensor of both graphs, and every matched tensor must have the same
   shape in both on a probe batch: after ``prune`` that holds for the residual stream of a
   transformer (LayerNorm outputs; heads and FFN neurons are gone but the hidden size stays)
   and not for pruned CNN channels, where matching would need a learned projection, which
   graphc does not build (refused with the tensor and both shapes).
3. Trained: the weights of the student (``worker`` rule 2: Conv/Gemm/MatMul
   weights and biases, normalisation scales and biases, embedding tables, ...) except the
   initializers whose names match a ``freeze`` glob (``fnmatch``, joined by ``+``, e.g.
   ``freeze=*word_embeddings*`` keeps a text model's token table, which pruning heads and
   FFN neurons leaves as the teacher's). Each glob must match a trainable initializer of the
   graph distill receives.
4. Training runs in graphc's isolated onnxruntime-training environment (``graphc setup
   training``) as a subprocess (``worker``): AdamW, gradient clipping by
   global norm (``clip``, off by default: onnxruntime's clipping kernel is not
   bit-reproducible), linear warm-up over ``warmup`` of the steps then cosine decay,
   a permutation per epoch drawn from ``seed`` (a fixed seed gives the same weights),
   BatchNormalization trained with its running statistics frozen (rewritten in the training
   copy; onnxruntime-training would otherwise use batch statistics that inference never
   sees), LayerNormalization given its optional outputs (onnxruntime issue 22465).
   ``mask=<input>`` (text models: ``mask=attention_mask``) names a 0/1 input of shape
   [batch, sequence]: rows are grouped by length and each training batch is cut to its
   longest row (``worker`` rule 4), so ``--train-data`` can be stored at the
   longest length the model must serve while each step pays only for its real tokens. The
   model must ignore padded positions (a BERT-style encoder does, through its attention mask);
   evaluation runs uncut.
5. After every epoch the student is evaluated on ``--eval-data`` (held-out loss, and
   ``--metric``); the best epoch (by metric, else by held-out loss; without eval data the
   last) is written back, the starting weights counting as epoch 0. ``patience`` epochs
   without improvement stop training early.
6. Checkpoints: every epoch is checkpointed in ``$GRAPHC_HOME/distill-runs/<key>`` (the key
   hashes graph, teacher, data and options); running the same command after an
   interruption resumes after the last completed epoch (``resume=false`` starts over).
7. Write-back by initializer name into the graph the pass received: nodes, inputs and
   outputs are untouched, and so are BatchNorm running statistics and other frozen tensors.

Refuses (before any pass runs, and again on the graph it receives): a missing training
environment (with the command to create it), missing ``--train-data``, missing labels for
``alpha < 1``, ``alpha < 1`` with ``loss`` other than ``kl``, a quantized graph (put ``int8``
after ``distill``), opset outside 13..20, HardSigmoid/HardSwish/Einsum/CumSum/Floor between
the weights and the output, a first output that is not float32 (``kl``: without a fixed
class axis; ``cosine``: without a batch axis), a ``freeze`` glob that matches no trainable
initializer (checked on the graph distill receives) or that freezes everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from graphc import training_env
from graphc.data import model_signature
from graphc.errors import GraphcError
from graphc.graph import to_model
from graphc.model_io import load_model
from graphc.pass_api import Pass, PassResult
from graphc.passes.distill import run as distill_run
from graphc.passes.distill.checks import check_trainable
from graphc.passes.distill.worker import trainable_names
from graphc.verify import Tolerance
from graphc.runtime import open_session, run_session


@dataclass(frozen=True)
class DistillOptions:
    epochs: int = field(default=3, metadata={"min": 1, "max": 1000, "help": "passes over --train-data"})
    lr: float = field(default=1e-3, metadata={"min": 0.0, "max": 1.0, "help": "peak AdamW learning rate"})
    batch: int = field(default=64, metadata={"min": 1, "help": "training batch size"})
    loss: Literal["kl", "cosine", "mse"] = field(default="kl", metadata={
        "help": "kl: class logits; cosine or mse: embeddings/features (rule 2)"})
    T: float = field(default=4.0, metadata={"min": 0.05, "max": 100.0, "help": "softmax temperature of the KL term"})
    alpha: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0,
                                                "help": "weight of the loss term; 1-alpha weighs CE on labels (kl)"})
    beta: float = field(default=0.0, metadata={"min": 0.0, "help": "weight of MSE between student and teacher outputs"})
    layers: str = field(default="", metadata={
        "help": "tensor-name globs joined by '+' whose teacher values the student also matches (rule 2)"})
    gamma: float = field(default=1.0, metadata={"min": 0.0, "help": "weight of the layers= feature loss"})
    teacher: str = field(default="", metadata={"help": "teacher .onnx (default: the model as loaded)"})
    freeze: str = field(default="", metadata={
        "help": "initializer-name globs kept frozen, joined by '+' (e.g. *word_embeddings*)"})
    seed: int = field(default=0, metadata={"min": 0, "help": "data-order seed (same seed, same weights)"})
    warmup: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5, "help": "share of steps of linear warm-up"})
    clip: float = field(default=0.0, metadata={"min": 0.0, "help": "max global gradient norm (0: off; > 0 is "
                                                                  "reproducible only to ~1e-7, see rule 3)"})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "help": "AdamW weight decay"})
    mask: str = field(default="", metadata={
        "help": "0/1 [batch, sequence] input (e.g. attention_mask): batches grouped by length and cut to their "
                "longest row (rule 4)"})
    patience: int = field(default=2, metadata={"min": 0, "help": "epochs without improvement before stopping (0: off)"})
    resume: bool = field(default=True, metadata={"help": "resume an interrupted identical run from its checkpoint"})

    def __post_init__(self):
        if self.freeze and not all(self.freeze_patterns()):
            raise ValueError(f"freeze={self.freeze!r} has an empty pattern (join patterns with '+')")
        if self.loss != "kl" and self.alpha < 1:
            raise ValueError(f"loss={self.loss} has no cross-entropy term; alpha={self.alpha:g} < 1 (labels) "
                             f"needs loss=kl")
        if self.layers and not all(self.layer_patterns()):
            raise ValueError(f"layers={self.layers!r} has an empty pattern (join patterns with '+')")

    def freeze_patterns(self) -> list[str]:
        return [p.strip() for p in self.freeze.split("+")] if self.freeze else []

    def layer_patterns(self) -> list[str]:
        return [p.strip() for p in self.layers.split("+")] if self.layers else []


class DistillPass(Pass):
    name = "distill"
    summary = "knowledge-distillation fine-tuning against the original model (onnxruntime-training)"
    Options = DistillOptions
    main_option = "epochs"
    in_place = True
    must_run_before = {"int8": "distill cannot train through the Q/DQ nodes int8 inserts (they have no gradient); "
                               "put int8 after distill, e.g. --passes prune,distill,int8"}

    def tolerance(self) -> Tolerance:
        return Tolerance()  # training changes outputs by design; --eval-data/--metric measure it

    def check(self, ctx) -> None:
        o = self.options
        training_env.require()
        if ctx.train_data is None:
            raise GraphcError("distill needs --train-data (inputs of the model; labels optional, the teacher "
                              "provides the targets)")
        if o.alpha < 1:
            for dataset, flag in ((ctx.train_data, "--train-data"), (ctx.eval_data, "--eval-data")):
                if dataset is not None and (dataset.labels is None or
                                            not np.issubdtype(dataset.labels.dtype, np.integer)):
                    raise GraphcError(f"distill:alpha={o.alpha} weighs cross-entropy on labels by {1 - o.alpha:g}; "
                                      f"{flag} {dataset.source} has no integer 'labels' (use alpha=1 for "
                                      f"unlabelled data)")
        if len(ctx.train_data) < o.batch:
            raise GraphcError(f"distill:batch={o.batch}: --train-data has only {len(ctx.train_data)} rows")
        teacher = self._teacher(ctx)
        names = [s.name for s in model_signature(teacher)]
        student_names = [s.name for s in model_signature(ctx.original)]
        if sorted(names) != sorted(student_names):
            raise GraphcError(f"distill:teacher={o.teacher}: its inputs {names} differ from the model's {student_names}")
        check_trainable(ctx.original, "the input model", hard_labels=o.alpha < 1, loss=o.loss)
        if o.mask:
            self._check_mask(student_names, ctx)
        self._layer_tensors(ctx.original, teacher)  # globs that match nothing fail before any pass runs

    def _check_mask(self, input_names: list[str], ctx) -> None:
        """``mask`` names an input whose data is [batch, sequence] zeros and ones (rule 4)."""
        name = self.options.mask
        if name not in input_names:
            raise GraphcError(f"distill:mask={name}: the model has no input {name!r} (inputs: "
                              f"{', '.join(input_names)})")
        for dataset, flag in ((ctx.train_data, "--train-data"), (ctx.eval_data, "--eval-data")):
            if dataset is None:
                continue
            values = dataset.inputs[name]
            if values.ndim != 2:
                raise GraphcError(f"distill:mask={name}: {flag} {dataset.source} holds it with shape "
                                  f"{list(values.shape)}; a mask is [batch, sequence]")
            if not np.isin(values, (0, 1)).all():
                raise GraphcError(f"distill:mask={name}: {flag} {dataset.source} holds values other than 0 "
                                  f"and 1 in it; a mask marks real positions with 1 and padding with 0")

    def _teacher(self, ctx):
        return load_model(self.options.teacher) if self.options.teacher else ctx.original

    def _config(self, ctx, inputs: list[str], layers: list[str]) -> dict:
        o = self.options
        return {"inputs": inputs, "epochs": o.epochs, "lr": o.lr, "batch": o.batch, "loss": o.loss, "T": o.T,
                "alpha": o.alpha, "beta": o.beta, "seed": o.seed, "warmup": o.warmup, "clip": o.clip,
                "weight_decay": o.weight_decay, "patience": o.patience, "freeze": o.freeze_patterns(),
                "metric": ctx.metric if ctx.eval_data is not None else None, "threads": ctx.threads or 0,
                "layers": layers, "gamma": o.gamma, "mask": o.mask or None}

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        python = training_env.require()
        student = to_model(graph, ctx.original)
        check_trainable(student, "the graph distill receives", hard_labels=self.options.alpha < 1,
                        loss=self.options.loss)
        frozen = self._check_freeze(student)
        teacher = self._teacher(ctx)
        layers = self._layer_tensors(student, teacher)
        self._check_shapes(student, teacher, layers, ctx)
        config = self._config(ctx, [s.name for s in model_signature(student)], layers)
        directory = distill_run.run_dir(distill_run.run_key(student, teacher, [ctx.train_data, ctx.eval_data],
                                                            config))
        if not self.options.resume:
            distill_run.cleanup(directory)
        distill_run.prepare(directory, student, teacher, ctx.train_data, ctx.eval_data, config, ctx.threads)
        result = distill_run.run_worker(directory, python, config["metric"])
        written = distill_run.write_back(graph, directory / "trained.npz")
        distill_run.cleanup(directory)
        return self._result(result, written, {**config, "frozen_by_glob": frozen}, ctx)

    def _check_freeze(self, student) -> int:
        """How many trainable initializers the freeze globs keep frozen (each glob must match one)."""
        patterns = self.options.freeze_patterns()
        if not patterns:
            return 0
        names = trainable_names(student)
        for pattern in patterns:
            if not any(fnmatchcase(name, pattern) for name in names):
                raise GraphcError(f"distill:freeze: {pattern!r} matches no trainable initializer of the graph "
                                  f"distill receives (e.g. {', '.join(names[:3])})")
        left = len(trainable_names(student, patterns))
        if not left:
            raise GraphcError(f"distill:freeze={self.options.freeze} leaves nothing to train")
        return len(names) - left

    def _layer_tensors(self, student, teacher) -> list[str]:
        """Rule 2: the tensors the ``layers`` globs name, in the student's node order."""
        patterns = self.options.layer_patterns()
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

    def _check_shapes(self, student, teacher, layers: list[str], ctx) -> None:
        """The first outputs, and every ``layers`` tensor, have the same shape in both graphs."""
        feeds, _ = next(ctx.train_data.batches(2))
        got = run_session(open_session(distill_run.expose(student, layers), ctx.threads, what="the student"), feeds)
        want = run_session(open_session(distill_run.expose(teacher, layers), ctx.threads, what="the teacher"),
                           feeds)
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

    def _result(self, result: dict, written: int, config: dict, ctx) -> PassResult:
        history, best = result["history"], result["best"]
        trained = [h for h in history if h["epoch"] > 0]
        stats = {"epochs_run": len(trained), "best_epoch": best["epoch"], "tensors_trained": written,
                 "batchnorm_frozen": result["batchnorm_frozen"]}
        if config["layers"]:
            stats["layers_matched"] = len(config["layers"])
        if trained and "token_fill" in trained[-1]:
            stats["token_fill"] = round(trained[-1]["token_fill"], 3)
        if config["freeze"]:
            stats["frozen_by_glob"] = config["frozen_by_glob"]
        if trained:
            stats["train_loss"] = f"{trained[0]['train_loss']:.4f}->{trained[-1]['train_loss']:.4f}"
        if "eval_loss" in history[0]:
            stats["eval_loss"] = f"{history[0]['eval_loss']:.4f}->{best['eval_loss']:.4f}"
        if "metric" in history[0]:
            stats[config["metric"]] = f"{history[0]['metric']:.4f}->{best['metric']:.4f}"
        if result["resumed_from"]:
            stats["resumed_after_epoch"] = result["resumed_from"]
        if result["stopped_early"]:
            stats["stopped_early"] = True
        if best["epoch"] == 0:
            ctx.report.note("distill: no epoch beat the starting weights on --eval-data; the graph is unchanged")
        if config["metric"] is None and ctx.eval_data is None:
            ctx.report.note("distill: no --eval-data, so the last epoch was kept (no best-checkpoint selection)")
        return PassResult(changed=best["epoch"] > 0, stats=stats,
                          details={"history": history, "trainable": result["trainable"]})
