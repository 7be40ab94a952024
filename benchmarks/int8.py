"""graphc ``int8`` side by side with onnxruntime.quantization, measured in one run.

Models and metrics:

- ``cnn``: the bundled Fashion-MNIST CNN (``models/fashion_cnn.onnx``): top-1 on the 10k test
  split; calibration rows are the first training images (Debian ``dataset-fashion-mnist``);
- ``minilm``: all-MiniLM-L6-v2 (``models/minilm.py``, TorchScript export), 128 tokens: mean
  embedding cosine vs FP32 on ``--eval`` held-out WordNet noun glosses (Debian
  ``wordnet-base``); calibration rows are other glosses; and the accuracy of the WordNet
  noun supersense probe (``models/supersense.py``: logistic regression on the frozen
  embeddings, 4000 train / 1000 test glosses, none of them a calibration or held-out gloss);
- ``resnet50``, ``bert``: random-init ``transformers`` ResNet-50 (1x3x224x224) and BERT-base
  (sequence 128), built and exported by ``benchmarks/prune.py``'s recipes (seed 0): mean
  logits cosine vs FP32 on 64 held-out random inputs (standard-normal images; uniform token
  ids, mask ones); calibration rows are other random inputs of the same kind.

Variants: FP32; onnxruntime ``quantize_static`` QDQ defaults (MinMax); its best static
settings (``quant_pre_process``, u8 activations, per_channel, reduce_range), with MinMax and
also with its Entropy and Percentile calibrators (the same methods as graphc's, for the
memory comparison); ``quantize_dynamic``; graphc ``fold,int8`` with no options, static with
each calibration method (``mode=static`` on the transformers, whose default is dynamic
MatMuls), with SmoothQuant (``mode=static:smooth=0.5``, transformers only: a CNN has no
site to smooth) and ``mode=dynamic``.

Calibration memory: every variant is quantized in its own fresh process, once per
``--calib`` count (default 128 and 1024 rows, batches of 16 on both sides). Its peak RSS
is the child's own ``VmHWM`` (``/proc/self/status``, read by the child when the
quantization returns: the whole process, interpreter, model, calibration data,
quantization). Not ``ru_maxrss`` from ``os.wait4``: Linux keeps the high-water mark of the
address space a process had before ``exec``, and a child forked from this benchmark
started with the benchmark's own RSS (4.5 GB at the BERT rows), which every light variant
then "peaked" at. The watchdog's polled RSS is the figure for a killed child. A watchdog polls the child's RSS and kills it above
``--mem-cap-gb`` (default 12: the machine has 24 GB and no swap), shown as
"killed > 12 GB". ``quantize s`` is the wall time of the quantization call (calibration
included; interpreter start-up and imports excluded). The model that is scored and timed
is the one calibrated with the first count; when that run fails (onnxruntime's calibrators
above the cap), the variant is quantized once more on ``--fallback-calib`` rows (default
32) and that model is scored, as the "calibration rows of the scored model" column says.

Latency: ``graphc.bench`` (all variants of a model interleaved round-robin in one call, the
first model rotated every round, ``--threads`` threads, the same ``--batches`` rows for all)
is called ``--rounds`` times; each call gives every variant's p50 and its ratio to FP32's p50
in that call, and the table shows the median ratio over the calls. Runs per call (batch 1 /
batch 32, warm-up runs before each call in brackets)::

    cnn       300 [30] / 60 [5]      (about 0.2 ms / 3 ms per FP32 run)
    minilm     40 [3]  /  6 [1]
    resnet50   15 [2]  /  3 [1]
    bert       10 [2]  /  2 [1]      (about 4 s per FP32 run at batch 32 x 128)

``--runs-scale`` multiplies the run counts (at least 1 each), e.g. 0.1 for a quick check.

Usage::

    python benchmarks/int8.py [--models cnn,minilm,resnet50,bert] [--calib 128,1024]
        [--eval 300] [--rounds 3] [--runs-scale 1] [--threads 2] [--batches 1,32]
        [--fallback-calib 32] [--mem-cap-gb 12] [--variants LABEL,...] [--workdir out/bench_int8]

Prints one Markdown table per model (progress on stderr). Exports and data files are kept in
``--workdir`` and reused; every quantized model is made afresh.

One script of over 400 lines on purpose: a benchmark is read and rerun as one piece (its
models, both tools' recipes, the interleaved measurement and the table), and its shared
recipes already live in ``graphc.models``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

from graphc.models import hf_configs, wordnet

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

SEQUENCE = 128
CALIB_BATCH = 16
EVAL_ROWS_RANDOM = 64  # held-out random inputs for the random-init models' logits cosine
ALL_MODELS = ("cnn", "minilm", "resnet50", "bert")
# (timed runs, warm-up runs) per bench call, by model and batch size (batch 1, else the large batch)
RUNS = {"cnn": ((300, 30), (60, 5)), "minilm": ((40, 3), (6, 1)),
        "resnet50": ((15, 2), (3, 1)), "bert": ((10, 2), (2, 1))}
POLL_SECONDS = 0.05


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- variants
ORT_VARIANTS = [
    ("ort quantize_static QDQ defaults", "ort:static-defaults"),
    ("ort quantize_static best (pre-processed, u8, per_channel, reduce_range)", "ort:static-best"),
    ("ort quantize_static best, calibrate_method=Entropy", "ort:static-best-entropy"),
    ("ort quantize_static best, calibrate_method=Percentile", "ort:static-best-percentile"),
    ("ort quantize_dynamic", "ort:dynamic"),
]
CALIBRATION_FREE = {"ort:dynamic"}  # quantized once: no calibration rows to vary


def graphc_variants(model: str) -> list[tuple[str, str]]:
    """(label, int8 options) of the graphc rows; ``fold,int8`` + options + ``samples``."""
    transformer = model in ("minilm", "bert")
    static = ["mode=static"] if transformer else []
    rows = [("graphc int8 (defaults)", [])]
    for calib in ("minmax", "percentile", "entropy", "mse"):
        rows.append((None, [*static, f"calib={calib}"]))
    if transformer:
        rows.append((None, ["mode=static", "smooth=0.5"]))
    rows.append((None, ["mode=dynamic"]))
    return [(label or "graphc int8:" + ":".join(opts), ":".join(opts)) for label, opts in rows]


def variants(model: str) -> list[tuple[str, str]]:
    return [*ORT_VARIANTS, *[(label, f"graphc:{opts}") for label, opts in graphc_variants(model)]]


def graphc_spec(options: str, samples: int) -> str:
    return "fold,int8:" + ":".join([*(o for o in options.split(":") if o), f"samples={samples}"])


# ------------------------------------------------------------------- child: quantize one
class _Reader:
    """onnxruntime CalibrationDataReader over an npz, ``CALIB_BATCH`` rows at a time."""

    def __init__(self, path: pathlib.Path, rows: int):
        with np.load(path) as npz:
            self.arrays = {k: npz[k][:rows] for k in npz.files if k != "labels"}
        self.rows = min(rows, len(next(iter(self.arrays.values()))))
        self.start = 0

    def get_next(self):
        if self.start >= self.rows:
            return None
        feeds = {k: v[self.start:self.start + CALIB_BATCH] for k, v in self.arrays.items()}
        self.start += CALIB_BATCH
        return feeds

    def rewind(self):
        self.start = 0


def ort_quantize(recipe: str, source: str, output: str, calib: str, samples: int) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_dynamic, quantize_static)

    os.chdir(pathlib.Path(output).parent)  # quant_pre_process leaves temporary files in the cwd
    if recipe == "ort:dynamic":
        quantize_dynamic(source, output, weight_type=QuantType.QInt8)
        return
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(pathlib.Path(calib), samples)
    if recipe == "ort:static-defaults":
        quantize_static(source, output, reader, quant_format=QuantFormat.QDQ)
        return
    methods = {"ort:static-best": CalibrationMethod.MinMax, "ort:static-best-entropy": CalibrationMethod.Entropy,
               "ort:static-best-percentile": CalibrationMethod.Percentile}
    pre = output + ".pre.onnx"
    try:
        quant_pre_process(source, pre)
    except Exception:  # its symbolic shape inference fails on some exports (MiniLM)
        quant_pre_process(source, pre, skip_symbolic_shape=True)
    try:
        quantize_static(pre, output, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[recipe])
    finally:
        pathlib.Path(pre).unlink(missing_ok=True)


def child_main(job: dict) -> None:
    """Make one variant (``job``: recipe, source, output, calib, samples); write its result."""
    start = time.perf_counter()
    recipe = job["recipe"]
    if recipe.startswith("graphc:"):
        from graphc.pipeline import OptimizeRequest, optimize

        spec = graphc_spec(recipe[len("graphc:"):], job["samples"])
        report = optimize(OptimizeRequest(model=pathlib.Path(job["source"]), passes=spec,
                                          output=pathlib.Path(job["output"]), data=pathlib.Path(job["calib"]),
                                          progress=False))
        stats = report.passes[-1].stats
        extra = {k: stats[k] for k in ("calibration_seconds", "calibration_state_bytes") if k in stats}
    else:
        ort_quantize(recipe, job["source"], job["output"], job["calib"], job["samples"])
        extra = {}
    result = {"seconds": time.perf_counter() - start, "peak_bytes": own_peak_rss(), **extra}
    pathlib.Path(job["result"]).write_text(json.dumps(result))


def own_peak_rss() -> int:
    """This process's peak RSS since its ``exec`` (``VmHWM``), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_child(argv: list[str], log_path: pathlib.Path, cap_bytes: int, timeout: float) -> dict:
    """Run ``argv`` in a fresh process; kill it above ``cap_bytes`` RSS or after ``timeout``.
    Returns status ("ok", "killed", "timeout", "error"), peak RSS bytes and the log's last line."""
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    start, status, peak_seen = time.monotonic(), None, 0
    while True:
        pid, wait_status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_seen = max(peak_seen, rss_bytes(proc.pid))
        if peak_seen > cap_bytes and status is None:
            status = "killed"
            os.kill(proc.pid, signal.SIGKILL)
        elif time.monotonic() - start > timeout and status is None:
            status = "timeout"
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS)
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    peak = peak_seen  # a finished child reports its own VmHWM (make_variant); see the docstring
    last = ""
    if proc.returncode != 0 and status is None:
        status = "error"
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
    return {"status": status or "ok", "peak_bytes": peak, "message": last}


def make_variant(recipe: str, source: pathlib.Path, output: pathlib.Path, calib: pathlib.Path, samples: int,
                 args) -> dict:
    result_path = output.with_name(output.name + ".result.json")
    result_path.unlink(missing_ok=True)
    output.unlink(missing_ok=True)
    job = {"recipe": recipe, "source": str(source), "output": str(output), "calib": str(calib),
           "samples": samples, "result": str(result_path)}
    run = run_child([sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(job)],
                    output.with_name(output.name + ".log"), int(args.mem_cap_gb * 2**30), args.child_timeout)
    if run["status"] == "ok":
        run.update(json.loads(result_path.read_text()))
        result_path.unlink()
    return run


# ---------------------------------------------------------------------------- data
def random_feeds(model: str, rows: int, seed: int) -> dict[str, np.ndarray]:
    return hf_configs.bert_feeds(rows, seed) if model == "bert" else hf_configs.image_feeds(rows, seed)


def export_main(model: str, path: pathlib.Path) -> None:
    """Child: export a random-init model with graphc.models.hf_configs (seed 0)."""
    if model == "resnet50":
        hf_configs.export_resnet(hf_configs.hf_resnet50(), path)
    else:
        hf_configs.export_bert(hf_configs.hf_bert(), path)


def run_session_rows(path: pathlib.Path, feeds: dict[str, np.ndarray], threads: int, batch: int = 16) -> np.ndarray:
    from graphc.runtime import open_session

    session = open_session(path, threads)
    rows = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, rows, batch)])


def mean_cosine(reference: np.ndarray, outputs: np.ndarray) -> float:
    from graphc.metrics import cosine_per_sample

    return float(cosine_per_sample(reference.astype(np.float64), outputs.astype(np.float64)).mean())


def cnn_top1(path: pathlib.Path, threads: int) -> float:
    from graphc.data import load_dataset, model_signature
    from graphc.metrics import evaluate
    from graphc.model_io import load_model
    from graphc.runtime import open_session, run_session

    dataset = load_dataset(MODELS / "fashion_mnist_test.npz", model_signature(load_model(path)))
    session = open_session(path, threads)
    return evaluate(lambda feeds: run_session(session, feeds), dataset, "top1")


class Setup:
    """One benchmark model: its FP32 source, calibration file, bench rows and metric."""

    def __init__(self, model: str, args, work: pathlib.Path):
        self.model, self.threads = model, args.threads
        self.fp32_ms: dict[int, list[float]] = {}  # FP32 p50 of every bench round, by batch size
        self.extra_name, self.extra_metric = None, None  # a second metric column (MiniLM: the probe)
        largest = max(*args.calib, args.fallback_calib)
        self.calib = work / f"{model}_calib{largest}.npz"
        self.bench_data = work / f"{model}_bench.npz"
        bench_rows = max(args.batches)
        if model == "cnn":
            import fashion_cnn

            self.source = MODELS / "fashion_cnn.onnx"
            self.metric_name = "top-1 (10k test)"
            images, _ = fashion_cnn.load_split("train")
            np.savez(self.calib, image=np.ascontiguousarray(images[:largest]))
            with np.load(MODELS / "fashion_mnist_test.npz") as npz:
                np.savez(self.bench_data, image=npz["image"][:bench_rows])
            self.metric = lambda path: cnn_top1(path, self.threads)
            return
        if model == "minilm":
            from graphc.models import minilm

            self.source = work / "minilm.onnx"
            if not self.source.exists():
                log("exporting MiniLM")
                minilm.export_minilm(self.source)
            glosses = wordnet.noun_glosses(largest + args.eval)
            np.savez(self.calib, **minilm.tokenize(glosses[:largest], max_length=SEQUENCE))
            held_out = minilm.tokenize(glosses[largest:], max_length=SEQUENCE)
            self.metric_name = f"embedding cosine vs FP32 ({args.eval} held-out glosses)"
            from graphc.models import supersense

            probe = supersense.Probe()
            self.extra_name = (f"supersense probe accuracy ({supersense.TRAIN} train / {supersense.TEST} test "
                               f"glosses)")
            self.extra_metric = lambda path: probe.accuracy(path, self.threads)
        else:
            self.source = work / f"{model}.onnx"
            if not self.source.exists():
                log(f"exporting {model} (benchmarks/prune.py recipe, in a child process)")
                subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--export", model,
                                str(self.source)], check=True, cwd=ROOT)
            np.savez(self.calib, **random_feeds(model, largest, seed=1))
            held_out = random_feeds(model, EVAL_ROWS_RANDOM, seed=2)
            self.metric_name = f"logits cosine vs FP32 ({EVAL_ROWS_RANDOM} held-out random inputs)"
        np.savez(self.bench_data, **{k: v[:bench_rows] for k, v in held_out.items()})
        reference = run_session_rows(self.source, held_out, self.threads)
        self.metric = lambda path: mean_cosine(reference, run_session_rows(path, held_out, self.threads))


# --------------------------------------------------------------------------- latency
def speedups(paths: list[pathlib.Path], setup: Setup, args) -> dict[int, list[list[float]]]:
    """Per batch size: for each ``graphc.bench`` call (round), FP32 p50 / variant p50 of every
    path (``paths[0]`` is FP32)."""
    from graphc.bench import bench

    result: dict[int, list[list[float]]] = {}
    for batch in args.batches:
        runs, warmup = RUNS[setup.model][0 if batch == 1 else 1]
        runs, warmup = max(1, round(runs * args.runs_scale)), max(1, round(warmup * args.runs_scale))
        result[batch] = []
        for round_index in range(args.rounds):
            log(f"[{setup.model}] bench batch {batch}, round {round_index + 1}/{args.rounds}: "
                f"{len(paths)} models x {runs} runs ({warmup} warm-up)")
            timings = bench(paths, threads=args.threads, data=setup.bench_data, batch=batch, warmup=warmup, runs=runs)
            result[batch].append([timings[0].p50_ms / t.p50_ms for t in timings])
            setup.fp32_ms.setdefault(batch, []).append(timings[0].p50_ms)
    return result


# ------------------------------------------------------------------------------ main
def fmt_mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def failure(run: dict, cap_gb: float) -> str:
    """Why a quantization run made no model, in a few words."""
    if run["status"] == "killed":
        return f"killed > {cap_gb:g} GB"
    if run["status"] == "timeout":
        return "timeout"
    return run["message"][:100] or run["status"]


def make_logged(model: str, label: str, recipe: str, setup: "Setup", output: pathlib.Path, count: int, args) -> dict:
    run = make_variant(recipe, setup.source, output, setup.calib, count, args)
    seconds, peak = quantize_cell(run, args.mem_cap_gb)
    log(f"[{model}] {label} @ {count} rows: {run['status']}, {seconds} s, peak RSS {peak}"
        + (f" ({run['message']})" if run["message"] else ""))
    return run


def quantize_cell(run: dict | None, cap_gb: float) -> tuple[str, str]:
    """(seconds cell, peak RSS cell) of one quantization run."""
    if run is None:
        return "-", "-"
    if run["status"] == "killed":
        return "-", f"killed > {cap_gb:g} GB"
    if run["status"] == "timeout":
        return "-", f"timeout (peak {fmt_mib(run['peak_bytes'])})"
    if run["status"] == "error":
        return "-", f"error: {run['message'][:60]}"
    return f"{run['seconds']:.1f}", fmt_mib(run["peak_bytes"])


def run_model(model: str, args) -> str:
    from graphc.model_io import file_size
    from graphc.report import markdown_table
    from graphc.stats import human_bytes

    work = args.workdir
    started = time.perf_counter()
    setup = Setup(model, args, work)
    made = []  # (label, scored model or None, its calibration rows cell, {count: run})
    for label, recipe in variants(model):
        if args.variants and not any(v in label for v in args.variants):
            continue
        counts = args.calib[:1] if recipe in CALIBRATION_FREE else args.calib
        stem = recipe.replace(":", "_").replace("=", "-").replace(",", "_").rstrip("_") or "graphc"
        runs: dict[int, dict] = {}
        for count in counts:
            runs[count] = make_logged(model, label, recipe, setup, work / f"{model}-{stem}-n{count}.onnx", count, args)
            if count != counts[0]:
                (work / f"{model}-{stem}-n{count}.onnx").unlink(missing_ok=True)  # only one model is scored
        scored, rows_cell = work / f"{model}-{stem}-n{counts[0]}.onnx", "-" if recipe in CALIBRATION_FREE else str(counts[0])
        first = runs[counts[0]]
        if first["status"] != "ok":
            scored, rows_cell = None, f"not made: {failure(first, args.mem_cap_gb)}"
            if recipe not in CALIBRATION_FREE and args.fallback_calib:
                output = work / f"{model}-{stem}-n{args.fallback_calib}.onnx"
                retry = make_logged(model, label, recipe, setup, output, args.fallback_calib, args)
                if retry["status"] == "ok":
                    scored = output
                    rows_cell = f"{args.fallback_calib} ({counts[0]}: {failure(first, args.mem_cap_gb)})"
        made.append((label, scored, rows_cell, runs))
    timed = [("FP32", setup.source)] + [(label, path) for label, path, _, _ in made if path is not None]
    ratios = speedups([p for _, p in timed], setup, args)
    speed = {label: [f"{statistics.median(r[i] for r in ratios[b]):.2f}x" for b in args.batches]
             for i, (label, _) in enumerate(timed)}
    def metrics(path: pathlib.Path) -> list[str]:
        cells = [f"{setup.metric(path):.4f}"]
        if setup.extra_metric is not None:
            cells.append(f"{100 * setup.extra_metric(path):.2f}%")
        return cells

    rows = [["FP32", *metrics(setup.source), *speed["FP32"], human_bytes(file_size(setup.source)), "-",
             *["" for _ in args.calib], *["" for _ in args.calib]]]
    for label, path, rows_cell, runs in made:
        cells = [quantize_cell(runs.get(count), args.mem_cap_gb) for count in args.calib]
        if path is None:
            metric = ["-", *(["-"] if setup.extra_metric else [])]
            spd, size = ["-" for _ in args.batches], "-"
        else:
            metric, spd, size = metrics(path), speed[label], human_bytes(file_size(path))
            log(f"[{model}] {label}: {', '.join(metric)}")
        rows.append([label, *metric, *spd, size, rows_cell, *[c[0] for c in cells], *[c[1] for c in cells]])
    header = ["variant", setup.metric_name, *([setup.extra_name] if setup.extra_name else []),
              *[f"speed b{b}" for b in args.batches], "size", "calibration rows of the scored model",
              *[f"quantize s @{n}" for n in args.calib], *[f"peak RSS MiB @{n}" for n in args.calib]]
    fp32 = ", ".join(f"b{b} {statistics.median(ms):.3g} ms" for b, ms in setup.fp32_ms.items())
    return (f"### {model}: FP32 p50 {fp32} (median of {args.rounds} rounds); {time.perf_counter() - started:.0f} s\n\n"
            + markdown_table([header, *rows]))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma-separated, from {','.join(ALL_MODELS)}")
    ap.add_argument("--calib", default="128,1024", help="calibration row counts (the first one's models are scored)")
    ap.add_argument("--fallback-calib", type=int, default=32, help="rows to calibrate the scored model on when "
                    "the first --calib count fails (onnxruntime above the memory cap); 0: none")
    ap.add_argument("--eval", type=int, default=300, help="held-out glosses for MiniLM (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="graphc.bench calls per batch size (median ratio)")
    ap.add_argument("--runs-scale", type=float, default=1.0, help="multiplies the documented run counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--mem-cap-gb", type=float, default=12.0, help="kill a quantization above this RSS")
    ap.add_argument("--child-timeout", type=float, default=3600.0, help="seconds before a quantization is killed")
    ap.add_argument("--variants", default="", help="only the variants whose label contains one of these "
                    "comma-separated strings (default: all)")
    ap.add_argument("--workdir", type=pathlib.Path, default=ROOT / "out" / "bench_int8")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [m for m in args.models if m not in ALL_MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}; choose from {','.join(ALL_MODELS)}")
    try:
        args.calib = [int(n) for n in args.calib.split(",")]
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error("--calib and --batches take comma-separated integers, e.g. 128,1024")
    if min(args.calib) < 1 or min(args.batches) < 1 or args.rounds < 1:
        ap.error("--calib, --batches and --rounds must be positive")
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(json.loads(argv[1]))
    if argv[:1] == ["--export"]:
        return export_main(argv[1], pathlib.Path(argv[2]))
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    from graphc.cpu_features import cpu_features

    started = time.perf_counter()
    print(f"onnxruntime {onnxruntime.__version__}, CPU {cpu_features().describe()}, {args.threads} threads; "
          f"calibration rows {'/'.join(map(str, args.calib))} (batches of {CALIB_BATCH}; models from "
          f"{args.calib[0]} rows scored and timed); speed = median over {args.rounds} interleaved graphc.bench rounds "
          f"of FP32 p50 / variant p50 (runs scale {args.runs_scale:g}); peak RSS of each quantization's own process, "
          f"killed above {args.mem_cap_gb:g} GB\n", flush=True)
    for model in args.models:
        print(run_model(model, args), flush=True)
        print(flush=True)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
