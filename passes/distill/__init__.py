"""``distill``: knowledge-distillation fine-tuning of the current graph against a teacher.

The ONNX graph stays the source of truth: only the values of its trainable initializers
change. Training runs in graphc's isolated onnxruntime-training environment (``graphc setup
training``, ``graphc.training_env``) as a subprocess, the worker (``worker/``, a package that
never imports graphc), which ``run`` prepares, starts and reads back.

Rules, each stated beside the code applying it:

1. Teacher (``teacher``): ``DistillPass._teacher``; its targets: ``run.teacher_targets``.
2. Loss on the first output (``loss``, ``T``, ``alpha``, ``beta``) and intermediate
   features (``layers``, ``gamma``): ``worker/losses.py``; which tensors ``layers`` names
   and their shapes: ``checks.layer_tensors``, ``checks.check_shapes``.
3. What is trained (``freeze``): ``worker/training_graph.py`` (``trainable_names``); every
   glob must match: ``checks.check_freeze``.
4. Training: the subprocess and its crash restarts ``run.py``; the training copy (frozen
   BatchNorm, LayerNorm outputs) ``worker/training_graph.py``; the loop (AdamW, ``clip``,
   ``warmup``, ``seed``) and its session ``worker/loop.py``; ``mask`` ``worker/batches.py``
   (its data: ``checks.check_mask``).
5. Evaluation after every epoch, the best epoch, ``patience``: ``worker/loop.py``.
6. Checkpoints and resume (``resume``): the run directory ``run.py``, the per-epoch
   checkpoint ``worker/loop.py``.
7. Write-back by initializer name: ``run.write_back``.
8. Sparsity (``keep_zeros``, ``sparsity``, ``pattern``, ``block``, ``by``, ``scope``,
   ``schedule``, ``ramp``, ``mask_every``, ``exclude``, ``min_size``): a MatMul/Gemm/Conv
   weight (``graphc.weight_layers``) that holds exact zeros when distill starts keeps every
   one of them exactly zero (``keep_zeros=true``, the default: its gradient is masked, so the
   optimizer never moves it); ``sparsity=S`` raises the zero share of the chosen layers to S
   while training, on Zhu & Gupta's cubic schedule, then fine-tunes with the mask fixed
   (the layers, patterns and scores of the ``sparsify`` pass; wanda's channel norms measured
   here on the first ``WANDA_ROWS`` training rows). Which weights and how: ``_sparsity``
   here; the masks in training: ``worker/sparse_masks.py``.

Refusals, before any pass runs and again on the graph the pass receives: ``checks.py``.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from graphc import sparsity, training_env
from graphc.data import model_signature, output_batch_axes
from graphc.errors import GraphcError
from graphc.graph import to_model
from graphc.model_io import load_model
from graphc.pass_api import Pass, PassResult
from graphc.spec import Globs, normalise_globs
from graphc.passes.distill import run as distill_run
from graphc.passes.distill.checks import OPSET_RANGE, check_freeze, check_mask, check_shapes, check_trainable, layer_tensors
from graphc.verify import Tolerance
from graphc.weight_layers import channel_norms, dense_summary, pattern_layers, weight_layers

WANDA_ROWS = 512
MAX_LAYER_RATIO = 0.98  # scope=global: the most one layer loses (as sparsify's default)


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
    layers: Globs = field(default=Globs(), metadata={
        "help": "tensor-name globs joined by '+' whose teacher values the student also matches (rule 2)"})
    gamma: float = field(default=1.0, metadata={"min": 0.0, "help": "weight of the layers= feature loss"})
    teacher: str = field(default="", metadata={"help": "teacher .onnx (default: the model as loaded)"})
    freeze: Globs = field(default=Globs(), metadata={
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
    keep_zeros: bool = field(default=True, metadata={
        "help": "MatMul/Gemm/Conv weights exactly zero at the start stay exactly zero (rule 8)"})
    sparsity: float = field(default=0.0, metadata={
        "min": 0.0, "max": 0.99, "help": "final zero share of the chosen layers, reached while training (rule 8)"})
    pattern: str = field(default="unstructured", metadata={"help": "with sparsity=: unstructured, N:M or block"})
    block: str = field(default="1x4", metadata={"help": "with pattern=block: RxC"})
    by: Literal["magnitude", "wanda"] = field(default="magnitude", metadata={
        "help": "with sparsity=: |w|, or |w| x input channel norm (wanda)"})
    scope: Literal["uniform", "global"] = field(default="uniform", metadata={
        "help": "with sparsity=: every layer the same share, or ranked across layers"})
    schedule: Literal["cubic"] = field(default="cubic", metadata={"help": "with sparsity=: Zhu & Gupta 2017"})
    ramp: float = field(default=0.5, metadata={"min": 0.0, "max": 0.9,
                                               "help": "with sparsity=: share of the steps over which it rises"})
    mask_every: int = field(default=50, metadata={"min": 1, "help": "with sparsity=: steps between mask updates"})
    exclude: Globs = field(default=Globs(), metadata={"help": "with sparsity=: layer globs left dense"})
    min_size: int = field(default=1024, metadata={"min": 0, "help": "with sparsity=: layers with fewer weights "
                                                                    "stay dense"})

    def __post_init__(self):
        normalise_globs(self)
        pattern = sparsity.Pattern.parse(self.pattern, self.block)
        if self.sparsity == 0 and (self.pattern != "unstructured" or self.block != "1x4" or self.by != "magnitude"
                                   or self.exclude):
            raise ValueError("pattern=, block=, by= and exclude= are read only with sparsity=")
        implied = pattern.implied_ratio()
        if self.sparsity and implied is not None and abs(self.sparsity - implied) > 1e-9:
            raise ValueError(f"pattern={self.pattern} means sparsity={implied:g}, not {self.sparsity:g}")
        if self.block != "1x4" and pattern.kind != "block":
            raise ValueError(f"block={self.block} is read only with pattern=block")
        if self.loss != "kl" and self.alpha < 1:
            raise ValueError(f"loss={self.loss} has no cross-entropy term; alpha={self.alpha:g} < 1 (labels) "
                             f"needs loss=kl")


class DistillPass(Pass):
    name = "distill"
    summary = "knowledge-distillation fine-tuning against the original model (onnxruntime-training)"
    Options = DistillOptions
    main_option = "epochs"
    in_place = True
    min_opset = OPSET_RANGE[0]  # older models are converted first where exact (graphc.opsets)
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
            check_mask(o.mask, student_names, ctx.train_data, ctx.eval_data)
        first = teacher.graph.output[0].name
        if output_batch_axes(teacher).get(first, 0) != 0:
            raise GraphcError(f"distill: the teacher's first output {first!r} has its batch on axis "
                              f"{output_batch_axes(teacher)[first]}; distillation targets need it on axis 0")
        layer_tensors(ctx.original, teacher, list(o.layers))  # globs matching nothing fail before any pass

    def _teacher(self, ctx):
        """Rule 1: the teacher is the model as loaded before the first pass, or
        ``teacher=<path>`` (same input names, checked by ``check``; a first output of the same
        shape, checked by ``checks.check_shapes``). Its first output on ``--train-data`` (and
        ``--eval-data``) is computed with the normal onnxruntime and becomes the soft target
        (``run.teacher_targets``)."""
        return load_model(self.options.teacher) if self.options.teacher else ctx.original

    def _config(self, ctx, inputs: list[str], layers: list[str]) -> dict:
        o = self.options
        return {"inputs": inputs, "epochs": o.epochs, "lr": o.lr, "batch": o.batch, "loss": o.loss, "T": o.T,
                "alpha": o.alpha, "beta": o.beta, "seed": o.seed, "warmup": o.warmup, "clip": o.clip,
                "weight_decay": o.weight_decay, "patience": o.patience, "freeze": list(o.freeze),
                "metric": ctx.metric if ctx.eval_data is not None else None, "threads": ctx.threads or 0,
                "layers": layers, "gamma": o.gamma, "mask": o.mask or None,
                "batch_axes": {k: a for k, a in ctx.train_data.axes.items() if a != 0}}

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        python = training_env.require()
        student = to_model(graph, ctx.original)
        check_trainable(student, "the graph distill receives", hard_labels=self.options.alpha < 1,
                        loss=self.options.loss)
        frozen = check_freeze(student, str(self.options.freeze), list(self.options.freeze))
        teacher = self._teacher(ctx)
        layers = layer_tensors(student, teacher, list(self.options.layers))
        check_shapes(student, teacher, layers, ctx.train_data, ctx.threads)
        config = self._config(ctx, [s.name for s in model_signature(student)], layers)
        config["sparsity"], norms = self._sparsity(graph, ctx)
        directory = distill_run.run_dir(distill_run.run_key(student, teacher, [ctx.train_data, ctx.eval_data],
                                                            config))
        if not self.options.resume:
            distill_run.cleanup(directory)
        distill_run.prepare(directory, student, teacher, ctx.train_data, ctx.eval_data, config, ctx.threads)
        if norms:
            np.savez(directory / "norms.npz", **norms)
        result = distill_run.run_worker(directory, python, config["metric"])
        written = distill_run.write_back(graph, directory / "trained.npz")
        distill_run.cleanup(directory)
        return self._result(result, written, {**config, "frozen_by_glob": frozen}, ctx, graph)

    def _sparsity(self, graph: gs.Graph, ctx) -> tuple[dict | None, dict]:
        """Rule 8: the weights read through a mask (their zeros fixed, or under gradual
        sparsity), the schedule, and wanda's channel norms."""
        o = self.options
        fixed = []
        if o.keep_zeros:
            for layer in weight_layers(graph):
                values = np.asarray(layer.tensor.values)
                if values.dtype == np.float32 and (values == 0).any():
                    fixed.append(layer.name)
        gradual, norms = None, {}
        if o.sparsity > 0:
            pattern = sparsity.Pattern.parse(o.pattern, o.block)
            # onnxruntime-training trains float32 weights only
            fitting, views, dense = pattern_layers(graph, pattern, o.exclude, o.min_size, dtypes=(np.float32,))
            if not fitting:
                raise GraphcError(f"distill:sparsity={o.sparsity:g}: no layer to sparsify "
                                  f"({dense_summary(dense) or 'no MatMul/Gemm/Conv weight'})")
            if dense:
                ctx.report.note(f"distill:sparsity: {len(dense)} layers left dense ({dense_summary(dense)})")
            initial = sum(int((view == 0).sum()) for view in views) / sum(view.size for view in views)
            if o.by == "wanda":
                norms = channel_norms(graph, fitting, ctx.train_data.take(min(WANDA_ROWS, len(ctx.train_data))),
                                      ctx.threads)
            gradual = {"layers": {layer.name: [layer.layout.kind, layer.layout.groups] for layer in fitting},
                       "final": o.sparsity, "initial": initial, "pattern": o.pattern, "block": o.block,
                       "scope": o.scope, "max_layer_ratio": MAX_LAYER_RATIO, "by": o.by, "ramp": o.ramp,
                       "every": o.mask_every, "module": str(pathlib.Path(sparsity.__file__).resolve())}
        masked = sorted(set(fixed) | set(gradual["layers"] if gradual else ()))
        return ({"masked": masked, "gradual": gradual} if masked else None), norms

    def _result(self, result: dict, written: int, config: dict, ctx, graph: gs.Graph) -> PassResult:
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
        if config.get("sparsity"):
            tensors = graph.tensors()
            if result.get("fixed_masks"):
                stats["zeros_kept"] = int(sum((np.asarray(tensors[n].values) == 0).sum()
                                              for n in result["fixed_masks"]))
            gradual = config["sparsity"]["gradual"]
            if gradual:
                layers = [np.asarray(tensors[n].values) for n in gradual["layers"]]
                stats["sparsity"] = round(sum(int((v == 0).sum()) for v in layers) / sum(v.size for v in layers), 4)
                stats["sparse_layers"] = len(layers)
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
