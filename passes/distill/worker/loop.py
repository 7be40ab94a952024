"""The training loop (``train``), run on WORKDIR by ``__main__``: the training session,
the steps, the evaluation after every epoch, the checkpoints.

Rule 4 of ``graphc.passes.distill``, the loop: AdamW (``weight_decay``) with gradient
clipping by global L2 norm (``clip``; 0: off) inside the optimizer graph; the learning rate
rises linearly from 0 over the first ``warmup`` share of the steps and then follows a
cosine decay to 0, set before every step. Each epoch's order is a permutation drawn from
``(seed, epoch)``, the last incomplete batch is dropped, and onnxruntime runs with
deterministic compute: a fixed seed gives the same weights, and a resumed run the same
weights as an uninterrupted one (bit for bit on the test fixtures; on pruned MiniLM two
runs' step losses agree to about 1e-8 relative, as some onnxruntime CPU kernels reduce in a
thread-dependent order). With ``mask`` the batches are grouped by length and cut to their
longest row (``batches``). Exception (measured): onnxruntime's InplaceClipGradNorm is not
bit-reproducible (weights differ in the last bits from run to run, any thread count), so
``clip > 0`` gives the same weights only to about 1e-7; clipping is therefore off by
default.

Rule 4, the training session: it runs without onnxruntime's memory-pattern planner
(``enable_mem_pattern = False``): with it, onnxruntime-training 1.19.2 corrupts the
gradient of embedding tables (GatherGrad): measured on pruned MiniLM, batches of varying
length (``mask``) crashed at the first step in 5 of 5 starts (a wild index in GatherGrad,
after its bounds check had passed), and at a fixed length the losses drifted from a run
without it from the second step on (1.7e-6 at step 1, 2e-4 at step 2) while with the
embedding tables frozen both runs agree to the bit. Without it, every start trained (4 of
4) at the same step time. The cause underneath was found later (``unit_dims``): the gradient
of MiniLM's broadcast position embeddings was built without its sum over the batch, so
GatherGrad read past the gradient it was given; the planner only decided where that landed
(without the planner, a later step of some epochs still crashed). With that fixed, 63 steps
ran with the planner on and with the CPU memory arena off (which made the old fault crash at
the first step); the planner stays off, as measured safe.

Rule 5: after each epoch (and once before training, "epoch 0" = the starting weights) the
model is evaluated on eval.npz: held-out loss and, with ``metric``, top1/top5 (labels) or
cosine/agreement (against the teacher). The best epoch (highest metric, else lowest
held-out loss, else the last epoch when there is no eval data) is kept in best.npz and is
what trained.npz holds. Training stops early after ``patience`` epochs without improvement
(0: never).

Rule 8, masks (``sparse_masks``): masked weights are written back as the forward pass sees
them; with gradual sparsity the mask is updated before the steps the schedule names, and
only epochs after its last update are candidates for the best epoch (earlier ones are less
sparse); the fixed masks are checked at the end.

Rule 6, resume: after every epoch a checkpoint with the optimizer state and progress.json
are written atomically into WORKDIR/checkpoints; started again on the same WORKDIR, the
worker continues after the last completed epoch.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

import numpy as np

from .batches import Data, epoch_batches
from .protocol import DEFAULTS, UserError, atomic_json, atomic_npz, emit
from .sparse_masks import Schedule, check_fixed, effective, read_norms
from .training_graph import build_artifacts


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
    axes = config["batch_axes"]
    train_data = Data(workdir / "train.npz", input_names, layer_count, mask, axes)
    eval_data = (Data(workdir / "eval.npz", input_names, layer_count, mask, axes)
                 if (workdir / "eval.npz").exists() else None)
    with_labels = float(config["alpha"]) < 1
    if with_labels and (train_data.labels is None or (eval_data is not None and eval_data.labels is None)):
        raise UserError(f"alpha={config['alpha']} < 1 weighs hard labels; the data has no 'labels'")
    art = workdir / "artifacts"
    info_path = art / "info.json"
    if not info_path.exists():
        info = build_artifacts(config, workdir, with_labels, train_data)
        atomic_json(info_path, info)
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
    options.enable_mem_pattern = False  # rule 4: the pattern planner corrupts embedding gradients
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

    masked = set(info.get("masked", []))
    gradual = (config.get("sparsity") or {}).get("gradual")
    schedule = Schedule(gradual, state, total, read_norms(workdir / "norms.npz")) if gradual else None
    fixed = sorted(masked - set(gradual["layers"] if gradual else ()))

    def params() -> dict:  # rule 8: a masked weight as the forward pass sees it
        return {name: effective(state, name, masked) for name in names}

    def candidate(epoch: int) -> bool:  # rule 8: with gradual sparsity, only epochs after the last mask update
        return schedule is None or (epoch > 0 and schedule.settled(epoch * steps_per_epoch - 1))

    if progress is None:
        history, best, bad = [], None, 0
        record = {"epoch": 0}
        if eval_data is not None:
            record.update(evaluate(module, eval_data, config))
            if candidate(0):
                best = record
                atomic_npz(ckpt_dir / "best.npz", params())
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
            if schedule is not None and schedule.due(step):
                schedule.update(state, step)
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
        if schedule is not None:
            record["sparsity"] = schedule.achieved(state)
        if candidate(epoch):  # rule 8: not while the masks are still changing
            if _better(record, best):
                best, bad = record, 0
                atomic_npz(ckpt_dir / "best.npz", params())
            else:
                bad += 1
        history.append(record)
        tmp = ckpt_dir / "last.ckpt.tmp"
        CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
        os.replace(tmp, ckpt_dir / "last.ckpt")
        atomic_json(progress_path, {"epoch": epoch, "history": history, "best": best, "bad_epochs": bad,
                                     "first_step_loss": first_step_loss})
        emit("epoch", **record)
    if best is None:  # no eval data and no epoch (epochs=0), or no epoch after the last mask update
        best = history[-1]
        atomic_npz(ckpt_dir / "best.npz", params())
    check_fixed(state, fixed)
    with np.load(ckpt_dir / "best.npz") as npz:
        atomic_npz(workdir / "trained.npz", {k: npz[k] for k in npz.files})
    result = {"history": history, "best": best, "resumed_from": resumed_from, "stopped_early": stopped_early,
              "trainable": names, "batchnorm_frozen": info["batchnorm_frozen"],
              "layernorm_outputs_added": info["layernorm_outputs_added"], "steps_per_epoch": steps_per_epoch,
              "first_step_loss": first_step_loss, "masked": sorted(masked), "fixed_masks": fixed}
    atomic_json(workdir / "result.json", result)
    emit("done", best_epoch=best["epoch"])
    return result
