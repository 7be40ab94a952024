"""graphc ``int8`` side by side with onnxruntime.quantization, measured in one run.

Models and metrics:

- the bundled Fashion-MNIST CNN (``models/fashion_cnn.onnx``): top-1 on the 10k test split;
  calibration on the first ``--calib`` training images (Debian ``dataset-fashion-mnist``);
- all-MiniLM-L6-v2 (``models/minilm.py``, TorchScript export): mean embedding cosine vs FP32
  on ``--eval`` held-out WordNet noun glosses (Debian ``wordnet-base``, text after ``|``),
  calibration on ``--calib`` other glosses; 128 tokens.

Variants: FP32; onnxruntime ``quantize_static`` QDQ defaults; its best static settings
(preprocessed, u8 activations, per_channel, reduce_range); ``quantize_dynamic``; graphc
``fold,int8`` with no options (auto) and with each calibration method (static).

Columns: metric, latency p50 speed-up vs FP32 at batch 1 and batch 32 (``graphc.bench``:
interleaved round-robin, ``--threads`` threads), file size, quantization wall time and peak
RSS of the process that quantized (each variant is quantized in a fresh process).

Usage: ``python benchmarks/int8.py [--models cnn,minilm] [--calib 512] [--eval 300]
[--runs 30] [--batches 1,32] [--workdir out/bench_int8]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import resource
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))
import wordnet  # noqa: E402  (models/wordnet.py)
SEQUENCE = 128


# ------------------------------------------------------------------------------- data
def fashion_calibration(rows: int) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(MODELS))
    import fashion_cnn

    images, _ = fashion_cnn.load_split("train")
    return {"image": np.ascontiguousarray(images[:rows])}


# ---------------------------------------------------------------------- quantization
class _Reader:
    """onnxruntime CalibrationDataReader over an npz, 16 rows at a time."""

    def __init__(self, path: pathlib.Path):
        with np.load(path) as npz:
            self.arrays = {k: npz[k] for k in npz.files if k != "labels"}
        self.start = 0

    def get_next(self):
        rows = len(next(iter(self.arrays.values())))
        if self.start >= rows:
            return None
        feeds = {k: v[self.start:self.start + 16] for k, v in self.arrays.items()}
        self.start += 16
        return feeds

    def rewind(self):
        self.start = 0


def _quantize(recipe: str, source: str, output: str, calib: str, queue) -> None:
    """Child process: make one variant; report (seconds, peak RSS MiB) or an error."""
    try:
        start = time.perf_counter()
        if recipe.startswith("graphc:"):
            from graphc.pipeline import OptimizeRequest, optimize

            optimize(OptimizeRequest(model=pathlib.Path(source), passes=recipe[len("graphc:"):],
                                     output=pathlib.Path(output), data=pathlib.Path(calib), progress=False))
        else:
            from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                                  quantize_dynamic, quantize_static)

            os.chdir(pathlib.Path(output).parent)  # quant_pre_process leaves temporary files in the cwd
            reader = type("Reader", (_Reader, CalibrationDataReader), {})(pathlib.Path(calib))
            if recipe == "ort:static-defaults":
                quantize_static(source, output, reader, quant_format=QuantFormat.QDQ)
            elif recipe == "ort:static-best":
                pre = output + ".pre.onnx"
                try:
                    quant_pre_process(source, pre)
                except Exception:  # its symbolic shape inference fails on some exports (MiniLM)
                    quant_pre_process(source, pre, skip_symbolic_shape=True)
                quantize_static(pre, output, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
                pathlib.Path(pre).unlink()
            elif recipe == "ort:dynamic":
                quantize_dynamic(source, output, weight_type=QuantType.QInt8)
            else:
                raise ValueError(recipe)
        seconds = time.perf_counter() - start
        queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None))
    except Exception as exc:  # reported in the table, the run goes on
        queue.put((None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


def make_variant(recipe: str, source: pathlib.Path, output: pathlib.Path, calib: pathlib.Path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_quantize, args=(recipe, str(source), str(output), str(calib), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def variants(model: str) -> list[tuple[str, str]]:
    graphc_rows = [("graphc int8 (defaults)", "graphc:fold,int8")]
    static = "" if model == "cnn" else ":mode=static"
    for calib in ("minmax", "percentile", "entropy", "mse"):
        graphc_rows.append((f"graphc int8{static}:calib={calib}", f"graphc:fold,int8{static}:calib={calib}"))
    return [("ort quantize_static QDQ defaults", "ort:static-defaults"),
            ("ort quantize_static best (pre-processed, u8, per_channel, reduce_range)", "ort:static-best"),
            ("ort quantize_dynamic", "ort:dynamic"), *graphc_rows]


# --------------------------------------------------------------------------- metrics
def cnn_metric(path: pathlib.Path, threads: int) -> float:
    import onnx

    from graphc.data import load_dataset, model_signature
    from graphc.metrics import evaluate
    from graphc.runtime import open_session, run_session

    dataset = load_dataset(MODELS / "fashion_mnist_test.npz", model_signature(onnx.load(path)))
    session = open_session(path, threads)
    return evaluate(lambda feeds: run_session(session, feeds), dataset, "top1")


def embedding_metric(path: pathlib.Path, reference: np.ndarray, feeds: dict, threads: int) -> float:
    from graphc.metrics import cosine_per_sample
    from graphc.runtime import open_session

    session = open_session(path, threads)
    outputs = np.concatenate([session.run(None, {k: v[i:i + 32] for k, v in feeds.items()})[0]
                              for i in range(0, len(reference), 32)])
    return float(cosine_per_sample(reference.astype(np.float64), outputs.astype(np.float64)).mean())


# ------------------------------------------------------------------------------ main
def prepare(model: str, work: pathlib.Path, calib_rows: int, eval_rows: int):
    """(source model, calibration npz, bench npz, metric function) for one benchmark model."""
    if model == "cnn":
        source = MODELS / "fashion_cnn.onnx"
        calib = work / "cnn_calib.npz"
        np.savez(calib, **fashion_calibration(calib_rows))
        bench = work / "cnn_bench.npz"
        with np.load(MODELS / "fashion_mnist_test.npz") as npz:
            np.savez(bench, image=npz["image"][:64])
        return source, calib, bench, lambda path, threads: cnn_metric(path, threads), "top-1 (10k test)"
    sys.path.insert(0, str(MODELS))
    import minilm

    source = work / "minilm.onnx"
    if not source.exists():
        minilm.export_minilm(source)
    glosses = wordnet.noun_glosses(calib_rows + eval_rows)
    calib = work / "minilm_calib.npz"
    np.savez(calib, **minilm.tokenize(glosses[:calib_rows], max_length=SEQUENCE))
    held_out = minilm.tokenize(glosses[calib_rows:], max_length=SEQUENCE)
    bench = work / "minilm_bench.npz"
    np.savez(bench, **{k: v[:64] for k, v in held_out.items()})
    from graphc.runtime import open_session

    fp32 = open_session(source, 2)
    reference = np.concatenate([fp32.run(None, {k: v[i:i + 32] for k, v in held_out.items()})[0]
                                for i in range(0, len(glosses) - calib_rows, 32)])
    return (source, calib, bench, lambda path, threads: embedding_metric(path, reference, held_out, threads),
            f"embedding cosine vs FP32 ({eval_rows} held-out glosses)")


def run_model(model: str, args, work: pathlib.Path) -> list[list[str]]:
    from graphc.bench import bench
    from graphc.model_io import file_size
    from graphc.stats import human_bytes

    source, calib, bench_data, metric, metric_name = prepare(model, work, args.calib, args.eval)
    rows_out = []
    made = [("FP32", source, None, None, None)]
    for label, recipe in variants(model):
        output = work / f"{model}-{recipe.replace(':', '_').replace(',', '_').replace('=', '-')}.onnx"
        seconds, rss, error = make_variant(recipe, source, output, calib)
        made.append((label, output, seconds, rss, error))
        print(f"[{model}] {label}: {'error ' + error if error else f'{seconds:.1f}s, {rss:.0f} MiB'}", file=sys.stderr)
    ok = [m for m in made if m[4] is None]
    latency = {}
    for batch in args.batches:
        results = bench([m[1] for m in ok], threads=args.threads, data=bench_data, batch=batch,
                        warmup=args.warmup, runs=args.runs)
        latency[batch] = {str(m[1]): r.p50_ms for m, r in zip(ok, results)}
    for label, path, seconds, rss, error in made:
        if error:
            rows_out.append([model, label, "error: " + error, "", "", "", "", ""])
            continue
        score = metric(path, args.threads)
        speed = [f"{latency[b][str(source)] / latency[b][str(path)]:.2f}x" for b in args.batches]
        rows_out.append([model, label, f"{score:.4f}", *speed, human_bytes(file_size(path)),
                         "" if seconds is None else f"{seconds:.1f}", "" if rss is None else f"{rss:.0f}"])
        print(f"[{model}] {label}: {metric_name} {score:.4f}", file=sys.stderr)
    return rows_out, metric_name


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,minilm")
    ap.add_argument("--calib", type=int, default=512, help="calibration rows (default 512)")
    ap.add_argument("--eval", type=int, default=300, help="held-out glosses for MiniLM (default 300)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--workdir", type=pathlib.Path, default=ROOT / "out" / "bench_int8")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from graphc.cpu_features import cpu_features
    from graphc.report import markdown_table

    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, CPU {cpu_features().describe()}, {args.threads} threads, "
          f"{args.calib} calibration rows, p50 over {args.runs} interleaved runs\n")
    for model in args.models.split(","):
        rows, metric_name = run_model(model, args, args.workdir)
        header = ["model", "variant", metric_name, *[f"speed-up b{b} (p50 vs FP32)" for b in args.batches],
                  "size", "quantize s", "peak RSS MiB"]
        print(markdown_table([header, *rows]))
        print()


if __name__ == "__main__":
    main()
