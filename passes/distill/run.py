"""The parent side of ``distill``: teacher outputs, the run directory, the worker, write-back.

Rules (the numbers of ``graphc.passes.distill``):

- Rule 1, the teacher's targets: the teacher's first output on the training (and eval)
  inputs is computed here with the normal onnxruntime and handed to the worker as data
  (``teacher`` in train.npz/eval.npz; the inputs beside it batch-first, those with no batch
  axis whole, as ``config["batch_axes"]`` records); so are the teacher's values of the intermediate
  tensors in ``config["layers"]``, each written batch by batch into its own float16 ``.npy``
  file (``train_layer<i>.npy``), which the worker memory-maps: 12 hidden states of MiniLM on
  40k glosses of 24 tokens are 8.8 GB in float16, more than either process should hold.
- Rule 6, the run directory: ``$GRAPHC_HOME/distill-runs/<key>``, where the key hashes the
  student graph, the teacher graph, the data, the training options and the version of the
  worker's training artifacts (``ARTIFACTS_VERSION``). An interrupted run
  (Ctrl-C, a killed process) leaves its per-epoch checkpoints there; the same command run
  again resumes after the last completed epoch (``resume=false`` starts over). The
  directory is deleted after a successful write-back, and after the worker refuses the run
  (exit 3: nothing there is worth resuming).
- Rule 4, the worker: it runs as ``<training venv>/bin/python <graphc.passes.distill>/worker
  RUNDIR`` (``graphc.training_env.WORKER``); its JSON progress lines drive a progress bar
  (on a terminal) and one line per epoch on stderr. Exit 3 with error.json is a user error
  (GraphcError), any other failure is a bug.
- Rule 4, crash restarts: onnxruntime-training 1.19.2 has faults of its own (its
  memory-pattern planner corrupted embedding gradients until the worker turned it off,
  rule 4 in ``worker/loop.py``: SIGSEGV in the first steps, a Gather reading garbage
  indices). As a safety net a worker killed by SIGSEGV, SIGBUS or SIGABRT, or ending on an
  ``[ONNXRuntimeError]``, is started again on the same directory up to ``CRASH_RESTARTS``
  times: it resumes after the last completed epoch, and a resumed run gives the weights of
  an uninterrupted one (to the reproducibility of rule 4, ``worker/loop.py``), so a restart
  costs only time.
- Rule 7, write-back by initializer name: every trained array replaces the initializer of
  the same name in the graph the pass received (same shape and dtype); nodes, inputs,
  outputs and every other initializer (BatchNorm running statistics, frozen tensors) are
  left as they are.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm import tqdm

from graphc import training_env
from graphc.data import Dataset
from graphc.errors import GraphcError
from graphc.model_io import save_model
from graphc.runtime import Piece, tap

TEACHER_BATCH = 256
CRASH_RESTARTS = 4
CRASH_CODES = {-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT}


def teacher_targets(model: onnx.ModelProto, dataset: Dataset, threads: int | None, what: str,
                    layers: list[str] = (), layer_path: Callable[[int], pathlib.Path] | None = None) -> np.ndarray:
    """The first output (float32) over the whole dataset, through the tensor tap
    (``graphc.runtime.tap``, batches of ``TEACHER_BATCH`` rows in bounded pieces); the
    ``layers`` tensors are written (float16, piece by piece) into the ``.npy`` files
    ``layer_path(i)``."""
    output = model.graph.output[0].name
    layers = list(layers)
    first: list[np.ndarray] = []
    files: dict[str, np.memmap] = {}

    def reduce(name: str, value: np.ndarray, piece: Piece) -> None:
        if name == output:
            first.append(value.astype(np.float32))
            return
        if name not in files:
            files[name] = np.lib.format.open_memmap(layer_path(layers.index(name)), mode="w+", dtype=np.float16,
                                                    shape=(len(dataset), *value.shape[1:]))
        if value.shape[1:] != files[name].shape[1:]:
            raise GraphcError(f"distill:layers: {name!r} has shape {list(value.shape[1:])} in one batch "
                              f"and {list(files[name].shape[1:])} in another; its rows must have one shape")
        files[name][piece.start:piece.stop] = value

    try:
        tap(model, [output, *layers], dataset, reduce, TEACHER_BATCH, threads, what=what)
    finally:
        for layer_file in files.values():
            layer_file.flush()
        files.clear()
    return np.concatenate(first)


# bumped when the worker builds different training artifacts from the same inputs, so that a run
# directory left by an older graphc is not resumed: 2 = broadcast unit axes (worker/unit_dims.py)
ARTIFACTS_VERSION = "2"


def run_key(student: onnx.ModelProto, teacher: onnx.ModelProto, datasets: list[Dataset | None],
            config: dict) -> str:
    digest = hashlib.sha256(ARTIFACTS_VERSION.encode())
    for model in (student, teacher):
        digest.update(model.SerializeToString(deterministic=True))
    for dataset in datasets:
        if dataset is None:
            digest.update(b"none")
            continue
        for name, array in [*sorted(dataset.inputs.items()), ("labels", dataset.labels)]:
            digest.update(name.encode())
            if array is not None:
                digest.update(str((array.dtype, array.shape)).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def run_dir(key: str) -> pathlib.Path:
    return training_env.graphc_home() / "distill-runs" / key


def layer_file(data_path: pathlib.Path, index: int) -> pathlib.Path:
    """Where the teacher's ``layers[index]`` on the rows of ``data_path`` (train.npz...) lives."""
    return data_path.with_name(f"{data_path.stem}_layer{index}.npy")


def _write_data(path: pathlib.Path, dataset: Dataset, teacher: np.ndarray) -> None:
    """The worker's data: every batched input with its batch axis moved to axis 0, inputs
    without one whole (``config["batch_axes"]`` says which; the worker moves them back)."""
    arrays = {name: value if dataset.axes.get(name) in (0, None) else np.moveaxis(value, dataset.axes[name], 0)
              for name, value in dataset.inputs.items()}
    arrays["teacher"] = teacher
    if dataset.labels is not None:
        arrays["labels"] = dataset.labels
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def prepare(directory: pathlib.Path, student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset,
            evaluation: Dataset | None, config: dict, threads: int | None) -> bool:
    """Fill the run directory (unless a previous run did); True when it holds a checkpoint."""
    config = {**config, "batch_axes": {k: a for k, a in train.axes.items() if a != 0}}  # how _write_data lays them out
    directory.mkdir(parents=True, exist_ok=True)
    resumable = (directory / "checkpoints" / "progress.json").exists()
    if not (directory / "student.onnx").exists():
        save_model(student, directory / "student.onnx")
    for name, dataset in (("train", train), ("eval", evaluation)):
        if dataset is not None and not (directory / f"{name}.npz").exists():
            path = directory / f"{name}.npz"  # written last: its presence means the layer files are complete
            first = teacher_targets(teacher, dataset, threads, "the teacher", config.get("layers", []),
                                    lambda i, path=path: layer_file(path, i))
            _write_data(path, dataset, first)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return resumable


def _epoch_line(record: dict, epochs: int, metric: str | None) -> str:
    parts = [f"distill epoch {record['epoch']}/{epochs}:"]
    if "train_loss" in record:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if "eval_loss" in record:
        parts.append(f"eval loss {record['eval_loss']:.4f}")
    if "metric" in record:
        parts.append(f"{metric} {record['metric']:.4f}")
    if "seconds" in record:
        fill = f", {100 * record['token_fill']:.0f}% of positions real" if "token_fill" in record else ""
        parts.append(f"({record['seconds']:.1f} s{fill})")
    return " ".join(parts)


def run_worker(directory: pathlib.Path, python: pathlib.Path, metric: str | None,
               say: Callable[[str], None] | None = None, progress: bool | None = None) -> dict:
    """Run the worker on ``directory`` (restarted after a crash, see the rules); returns its
    result.json."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    progress = sys.stderr.isatty() if progress is None else progress
    for restart in range(CRASH_RESTARTS + 1):
        code = _run_worker_once(directory, python, metric, say, progress)
        if code == 3 and (directory / "error.json").exists():  # a refusal: nothing there to resume
            message = json.loads((directory / "error.json").read_text())["message"]
            shutil.rmtree(directory, ignore_errors=True)
            raise GraphcError(message)
        if code == 0:
            return json.loads((directory / "result.json").read_text())
        tail = [ln for ln in (directory / "worker.log").read_text().splitlines() if ln.strip()]
        last = tail[-1] if tail else "no message"
        crashed = code in CRASH_CODES or "[ONNXRuntimeError]" in last
        if not crashed or restart == CRASH_RESTARTS:
            raise RuntimeError(f"the distillation worker failed (exit {code}): {last}; its files are in {directory}")
        say(f"distill: the training worker crashed (exit {code}: {last[:160]}); restarting it from its last "
            f"checkpoint ({restart + 1} of {CRASH_RESTARTS})")
    raise AssertionError("unreachable")


def _run_worker_once(directory: pathlib.Path, python: pathlib.Path, metric: str | None,
                     say: Callable[[str], None], progress: bool) -> int:
    for stale in ("error.json", "result.json", "trained.npz"):
        (directory / stale).unlink(missing_ok=True)
    log = open(directory / "worker.log", "w")  # a file, not a pipe: a chatty worker cannot block
    process = subprocess.Popen([str(python), str(training_env.WORKER), str(directory)], stdout=subprocess.PIPE,
                               stderr=log, text=True, bufsize=1)
    bar, epochs = None, 0
    try:
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.pop("event", None)
            if kind == "start":
                epochs = event["epochs"]
                if event["resumed_from"]:
                    say(f"distill: resuming after epoch {event['resumed_from']} from {directory}")
                if progress:
                    bar = tqdm(total=epochs * event["steps_per_epoch"], desc="distill", unit="step", leave=False,
                               initial=(event["resumed_from"] or 0) * event["steps_per_epoch"])
            elif kind == "step" and bar is not None:
                bar.n = (event["epoch"] - 1) * (bar.total // max(epochs, 1)) + event["step"]
                bar.set_postfix_str(f"epoch {event['epoch']} loss {event['loss']:.4f}")
                bar.refresh()
            elif kind == "epoch":
                (bar.write if bar is not None else say)(_epoch_line(event, epochs, metric))
        code = process.wait()
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finally:
        log.close()
        if bar is not None:
            bar.close()
    return code


def write_back(graph: gs.Graph, path: pathlib.Path) -> int:
    """Replace initializers of ``graph`` by the arrays in trained.npz, by name; returns how many."""
    tensors = graph.tensors()
    written = 0
    with np.load(path) as trained:
        for name in trained.files:
            tensor = tensors.get(name)
            values = trained[name]
            if not isinstance(tensor, gs.Constant):
                raise RuntimeError(f"trained parameter {name!r} is not an initializer of the student")
            if tuple(tensor.shape) != values.shape:
                raise RuntimeError(f"trained parameter {name!r} has shape {values.shape}, the student "
                                   f"{tuple(tensor.shape)}")
            tensor.values = values.astype(tensor.dtype, copy=False)
            written += 1
    return written


def cleanup(directory: pathlib.Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
