"""The worker's side of its contract with ``graphc.passes.distill.run``: the files, the
extra inputs of the training graph, the progress lines and the one-line user error.

Files are the contract, all in WORKDIR::

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
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

DEFAULTS = {
    "epochs": 3, "lr": 1e-3, "batch": 64, "loss": "kl", "T": 4.0, "alpha": 1.0, "beta": 0.0, "seed": 0,
    "warmup": 0.05, "clip": 0.0, "weight_decay": 0.0, "patience": 2, "metric": None, "freeze": [],
    "threads": 0, "eval_batch": 256, "step_events": 50, "layers": [], "gamma": 1.0, "mask": None,
    "batch_axes": {},
}
TEACHER_INPUT = "distill_teacher"
LABELS_INPUT = "distill_labels"
LAYER_FILE = "{stem}_layer{index}.npy"  # beside train.npz/eval.npz
LAYER_INPUT = "distill_teacher_layer{}"  # input of the training graph


class UserError(Exception):
    """The graph or the options cannot be trained; reported as one line (exit status 3)."""


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def atomic_json(path: pathlib.Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def atomic_npz(path: pathlib.Path, arrays: dict) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)

