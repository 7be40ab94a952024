"""The transformer fast path (``fuse``) side by side with FP32, graphc int8 and onnxruntime's
own tools, measured in one run (issue 15).

Models:

- ``minilm``: all-MiniLM-L6-v2 (``models/minilm.py``, TorchScript export), WordNet noun glosses
  (Debian ``wordnet-base``) padded to 128 tokens, as a sentence-embedding service batches them;
  calibration rows are the first ``--calib`` glosses, the held-out rows the next ``--eval``;
- ``bert``, ``distilbert``: random-init BERT-base and DistilBERT-base classifiers
  (``models/hf_configs.py``, seed 0), 128 random tokens, mask all ones (no padding: what is
  left is the attention itself); calibration and held-out rows are other random inputs.

Variants: ``FP32`` (``fold``), ``fused FP32`` (``fold,fuse``), ``graphc int8`` (``fold,int8``),
``fused + int8`` (``fold,fuse,int8``), onnxruntime ``quantize_dynamic`` (s8 weights) and
onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``, model_type
bert, FP32). Accuracy: the mean per-row cosine of each variant's output with FP32's on the
held-out rows. Latency: for each batch x threads, every variant in one
``graphc.profiling.time_models`` call (non-spinning sessions, round-robin, the first model
rotated every round, median wall time per run; at least ``--seconds`` per model), the ratio
to FP32 in the same call; then an onnxruntime profile per variant at batch 1 and the most
threads (kernel time per op type, its share of the variant's kernel time): what is left.

With ``--sparse R`` three more rows per ``--sparse-blocks`` block (issue 17): ``sparsify:R`` in
those blocks then ``int8`` run by onnxruntime's dense kernels, the same with ``sparse-int8``
(graphc's kernels), and that after ``fuse``.

Usage: ``python benchmarks/transformer.py [--models minilm,bert,distilbert] [--batches 1,8]
[--threads 1,2] [--seconds 3] [--sparse 0.8 [--sparse-blocks 1x4,16x64]] [--work DIR]``; prints Markdown tables, the CPU model and ISA.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

from graphc.cpu_features import cpu_features, cpu_name
from graphc.models import hf_configs
from graphc.profiling import profile_models, time_models
from graphc.runtime import open_session

SEQUENCE = 128
GRAPHC_VARIANTS = {"FP32": "fold", "fused FP32": "fold,fuse", "graphc int8": "fold,int8",
                   "fused + int8": "fold,fuse,int8"}
HEADS = {"minilm": (12, 384), "bert": (12, 768), "distilbert": (12, 768)}
PROFILE_OPS = 7


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)




def rows(model: str, count: int, start: int) -> dict[str, np.ndarray]:
    """``count`` input rows of ``model`` (glosses from ``start`` for MiniLM; random rows seeded
    by ``start`` for the classifiers)."""
    if model == "minilm":
        from graphc.models import minilm, wordnet

        glosses = wordnet.noun_glosses(start + count)[start:]
        return minilm.tokenize(glosses, max_length=SEQUENCE)
    feeds = hf_configs.bert_feeds(count, seed=start)
    return feeds if model == "bert" else {k: feeds[k] for k in hf_configs.DISTILBERT_INPUTS}


def export(model: str, work: pathlib.Path) -> pathlib.Path:
    path = work / f"{model}.onnx"
    if path.exists():
        return path
    log(f"exporting {model}")
    if model == "minilm":
        from graphc.models import minilm

        minilm.export_minilm(path)
    elif model == "bert":
        hf_configs.export_bert(hf_configs.hf_bert(), path)
    else:
        hf_configs.export_distilbert(hf_configs.hf_distilbert(), path)
    return path


def sparse_variants(ratio: float, blocks: list[str]) -> dict[str, str]:
    """``--sparse``: the same int8 on weights made ``ratio`` sparse in each of ``blocks`` (one shot:
    these rows are for speed; accuracy after distillation is benchmarks/sparsify.py's), run by
    onnxruntime's dense kernels and by graphc's sparse ones (``sparse-int8``, issue 17)."""
    rows = {}
    for block in blocks:
        sparse = f"sparsify:{ratio}:pattern=block:block={block}"
        rows.update({f"{sparse} int8 (dense kernels)": f"fold,{sparse},int8",
                     f"{sparse} int8, sparse-int8": f"fold,{sparse},int8,sparse-int8",
                     f"fused + {sparse} int8, sparse-int8": f"fold,fuse,{sparse},int8,sparse-int8"})
    return rows


def make_variants(model: str, source: pathlib.Path, work: pathlib.Path, calib: pathlib.Path,
                  sparse: float | None = None, blocks: tuple[str, ...] = ("1x4",)) -> dict[str, pathlib.Path]:
    paths = {}
    variants = dict(GRAPHC_VARIANTS, **(sparse_variants(sparse, list(blocks)) if sparse else {}))
    for i, (label, passes) in enumerate(variants.items()):
        out = work / f"{model}.variant{i}.onnx"
        command = [sys.executable, "-m", "graphc", "optimize", str(source), "--passes", passes, "-o", str(out),
                   "--quiet"]
        if "int8" in passes:
            command += ["--data", str(calib)]
        log(f"{model}: graphc {passes}")
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"graphc {passes} failed on {model}: {run.stderr.strip()}")
        notes = [line for line in run.stdout.splitlines() if line.startswith("note: fuse") or "speed_guard" in line]
        log(f"  {time.perf_counter() - started:.0f} s; " + " | ".join(notes))
        paths[label] = out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log(f"{model}: onnxruntime quantize_dynamic")
    paths["ort quantize_dynamic"] = work / f"{model}.ort_dynamic.onnx"
    quantize_dynamic(str(source), str(paths["ort quantize_dynamic"]), weight_type=QuantType.QInt8)
    from onnxruntime.transformers import optimizer

    log(f"{model}: onnxruntime transformer optimizer")
    heads, hidden = HEADS[model]
    optimized = optimizer.optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden)
    paths["ort transformer optimizer"] = work / f"{model}.ort_optimizer.onnx"
    optimized.save_model_to_file(str(paths["ort transformer optimizer"]))
    return paths


def outputs(path: pathlib.Path, feeds: dict[str, np.ndarray], threads: int, batch: int = 16) -> np.ndarray:
    session = open_session(path, threads)
    count = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, count, batch)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def run_model(model: str, args, work: pathlib.Path) -> str:
    source = export(model, work)
    calib = work / f"{model}.calib.npz"
    np.savez(calib, **rows(model, args.calib, 0 if model == "minilm" else 1))
    held_out = rows(model, args.eval, args.calib if model == "minilm" else 2)
    paths = make_variants(model, source, work, calib, args.sparse, args.sparse_blocks)
    labels = list(paths)
    models = {label: onnx.load(str(p)) for label, p in paths.items()}
    reference = outputs(paths["FP32"], held_out, max(args.threads))
    lines = [f"### {model}", ""]
    if "attention_mask" in held_out:
        tokens = held_out["attention_mask"].sum(1)
        lines.append(f"held-out rows: {len(tokens)}, tokens per row {tokens.min()}-{tokens.max()} "
                     f"(mean {tokens.mean():.1f}) of {SEQUENCE}")
    header = "| variant | cosine vs FP32 | " + " | ".join(f"b{b} t{t}" for b in args.batches for t in args.threads) + " |"
    table = {label: [f"{cosine(reference, outputs(paths[label], held_out, max(args.threads))):.4f}"] for label in labels}
    for batch in args.batches:
        feeds = {k: v[:batch] for k, v in held_out.items()}
        for threads in args.threads:
            log(f"{model}: timing batch {batch}, {threads} threads")
            times = dict(zip(labels, time_models([models[l] for l in labels], feeds, threads, seconds=args.seconds)))
            for label in labels:
                table[label].append(f"{times[label] / 1e3:.2f} ms ({times['FP32'] / times[label]:.2f}x)")
    lines += ["", header, "|" + "---|" * (2 + len(args.batches) * len(args.threads))]
    lines += [f"| {label} | " + " | ".join(table[label]) + " |" for label in labels]
    threads = max(args.threads)
    log(f"{model}: profiling batch 1, {threads} threads")
    profiles = profile_models([models[l] for l in labels], {k: v[:1] for k, v in held_out.items()}, threads,
                              seconds=args.seconds)
    lines += ["", f"Kernel time per op type, batch 1, {threads} threads (onnxruntime profile):", ""]
    for label, profile in zip(labels, profiles):
        by_op = collections.Counter()
        for name, us in profile.times.items():
            by_op[profile.executed[name].op if name in profile.executed else "?"] += us
        top = ", ".join(f"{op} {us / 1e3:.2f} ms ({100 * us / profile.total:.0f}%)"
                        for op, us in by_op.most_common(PROFILE_OPS))
        lines.append(f"- {label}: {profile.total / 1e3:.2f} ms in kernels: {top}")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,bert,distilbert")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and configuration")
    ap.add_argument("--calib", type=int, default=64, help="calibration rows for the int8 variants")
    ap.add_argument("--eval", type=int, default=64, help="held-out rows for the cosines (the first ones are timed)")
    ap.add_argument("--work", type=pathlib.Path, help="directory for the exports and variants (kept)")
    ap.add_argument("--sparse", type=float, help="also the sparse rows at this block sparsity (e.g. 0.8)")
    ap.add_argument("--sparse-blocks", default="1x4", help="the blocks of the sparse rows, comma-separated "
                    "(1x4: what the vector paths skip; 16x64: the AMX tiles)")
    args = ap.parse_args(argv)
    args.models = args.models.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    args.sparse_blocks = tuple(args.sparse_blocks.split(","))
    unknown = set(args.models) - set(HEADS)
    if unknown:
        ap.error(f"unknown models: {', '.join(sorted(unknown))} (known: {', '.join(HEADS)})")
    if max(args.batches) > args.eval:
        ap.error("--eval must be at least the largest batch")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    features = cpu_features()
    amx = "amx_int8" in pathlib.Path("/proc/cpuinfo").read_text()
    print(f"CPU: {cpu_name()} ({features.describe()}{', AMX-INT8' if amx else ''}); "
          f"sessions non-spinning, one interleaved run per batch x threads\n")
    with tempfile.TemporaryDirectory(prefix="graphc-transformer-") as tmp:
        work = args.work or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            print(run_model(model, args, work), flush=True)
            print()


if __name__ == "__main__":
    main()
