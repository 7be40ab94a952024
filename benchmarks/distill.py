"""Benchmark: does ``distill`` win back what ``prune`` loses? (issue 5's acceptance table)

On the bundled Fashion-MNIST CNN, measured in one run on the full 10k test split:

1. the unpruned model;
2. ``prune:RATIO`` (default 0.5);
3. ``prune:RATIO,distill:...`` trained on the Fashion-MNIST train split (Debian
   ``dataset-fashion-mnist``): the last ``--holdout`` train images (default 5000) are held
   out as ``--eval-data`` for best-epoch selection, so the test split never steers training;
4. ``... ,int8`` when the ``int8`` pass is registered (run on the distilled model with 1024
   train images as calibration data), else a row saying it is pending.

Prints one table (top-1, drop vs unpruned, params, size on disk, size ratio) and writes
``OUT/distill.json``. Acceptance: row 3 within 1 point of row 1 in <= 5 epochs; row 4
within 1.5 points and >= 3x smaller on disk than row 1.

Usage: ``python benchmarks/distill.py [--epochs 5] [--out out/bench-distill]`` (needs
``graphc setup training``; about 2 minutes per epoch on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CNN = ROOT / "models" / "fashion_cnn.onnx"
TEST = ROOT / "models" / "fashion_mnist_test.npz"


def load_recipe():
    spec = importlib.util.spec_from_file_location("fashion_cnn", ROOT / "models" / "fashion_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_splits(out: pathlib.Path, holdout: int) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    images, labels = load_recipe().load_split("train")
    paths = out / "train.npz", out / "holdout.npz", out / "calib.npz"
    np.savez(paths[0], image=images[:-holdout], labels=labels[:-holdout])
    np.savez(paths[1], image=images[-holdout:], labels=labels[-holdout:])
    np.savez(paths[2], image=images[:1024], labels=labels[:1024])
    return paths


def top1(model: pathlib.Path) -> float:
    from graphc.data import load_dataset, model_signature
    from graphc.metrics import evaluate
    from graphc.model_io import load_model
    from graphc.runtime import open_session, run_session

    loaded = load_model(model)
    session = open_session(loaded)
    return evaluate(lambda feeds: run_session(session, feeds), load_dataset(TEST, model_signature(loaded)), "top1",
                    batch_size=500)


def optimize(model: pathlib.Path, passes: str, out: pathlib.Path, **kwargs) -> tuple[pathlib.Path, float, dict]:
    from graphc.pipeline import OptimizeRequest, optimize as run

    start = time.perf_counter()
    report = run(OptimizeRequest(model=model, passes=passes, output=out, progress=False, **kwargs))
    return out, time.perf_counter() - start, report.as_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--distill", default="T=4:alpha=0.7:lr=0.0005:batch=64",
                        help="distill options after epochs (key=value joined by ':')")
    parser.add_argument("--holdout", type=int, default=5000)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench-distill")
    args = parser.parse_args(argv)
    from graphc.model_io import file_size
    from graphc.passes import PASSES
    from graphc.stats import model_stats
    from graphc.model_io import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    train, holdout, calib = write_splits(args.out, args.holdout)
    distill = f"distill:epochs={args.epochs}:{args.distill}"
    rows = [("unpruned", CNN, 0.0, "")]
    pruned, seconds, _ = optimize(CNN, f"prune:{args.ratio}", args.out / "pruned.onnx")
    rows.append((f"prune:{args.ratio}", pruned, seconds, ""))
    # one pipeline, so the teacher is the unpruned model as loaded (not the pruned one)
    distilled, seconds, report = optimize(CNN, f"prune:{args.ratio},{distill}", args.out / "distilled.onnx",
                                          train_data=train, eval_data=holdout, metric="top1")
    stats = report["passes"][1]["stats"]
    rows.append((f"prune:{args.ratio},{distill}", distilled, seconds,
                 f"best epoch {stats['best_epoch']}/{stats['epochs_run']}, holdout top1 {stats['top1']}"))
    if "int8" in PASSES:
        quantized, seconds, _ = optimize(distilled, "int8", args.out / "distilled.int8.onnx", data=calib)
        rows.append((f"prune:{args.ratio},{distill},int8", quantized, seconds, "int8 on the distilled model"))
    else:
        rows.append((f"prune:{args.ratio},{distill},int8", None, 0.0, "pending: int8 is not registered yet"))

    base_top1, base_size = top1(CNN), file_size(CNN)
    table, records = [], []
    for name, path, seconds, note in rows:
        if path is None:
            table.append(f"| {name} | pending | | | | | {note} |")
            records.append({"model": name, "pending": True})
            continue
        acc, size = top1(path), file_size(path)
        params = model_stats(load_model(path)).params
        records.append({"model": name, "path": str(path), "top1": acc, "drop_points": 100 * (base_top1 - acc),
                        "params": params, "size_bytes": size, "size_ratio": base_size / size,
                        "seconds": round(seconds, 1), "note": note})
        table.append(f"| {name} | {100 * acc:.2f}% | {100 * (base_top1 - acc):+.2f} | {params / 1e3:.2f}k | "
                     f"{size / 1024:.1f} KiB | {base_size / size:.2f}x | {seconds:.0f} s | {note} |")
    print("| model | top-1 (10k test) | drop (points) | params | size | smaller | time | notes |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    (args.out / "distill.json").write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
