"""Benchmark: does ``distill`` win back what ``prune`` loses? (issue 5's acceptance tables)

``--model cnn`` (the default): the bundled Fashion-MNIST CNN, measured in one run on the
full 10k test split:

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

``--model minilm``: all-MiniLM-L6-v2 (``models/minilm.py``, TorchScript export, output the
normalised sentence embedding), measured in one run:

1. the unpruned model (the teacher);
2. ``prune:RATIO:PRUNE`` (default 0.3: attention heads and FFN neurons; the hidden size
   stays, LayerNorm blocks it; ``--prune`` default ``by=taylor``, importance measured on the
   first 512 training glosses as ``--data``);
3. ``prune:RATIO:PRUNE,distill:loss=cosine:...`` in the same pipeline (the teacher is the
   unpruned model), trained on ``--train-glosses`` unlabelled WordNet noun glosses (Debian
   ``wordnet-base``) tokenized to ``--seq`` tokens (default 48, longer than 99% of glosses;
   ``mask=attention_mask`` groups them by length and cuts each batch to its longest gloss),
   best epoch picked by embedding cosine on 512 other glosses (``--eval-data``, same length).

Every row is measured on data that never steered training: embedding cosine vs the unpruned
model on ``--test-glosses`` further glosses (full length, up to 128 tokens), and the WordNet
supersense probe (``models/supersense.py``: logistic regression on frozen embeddings,
4000 train / 1000 test glosses, disjoint from all the others). Gloss sets (``wordnet.noun_glosses``
order): test ``[0, T)``, holdout ``[T, T + 512)``, train after them. Acceptance: row 3 cosine
>= 0.98 and probe accuracy within 2 points of row 1. Prints one table (cosine, probe accuracy
and its drop, params, size, time) and writes ``OUT/distill_minilm.json``.

Usage: ``python benchmarks/distill.py [--epochs 5] [--out out/bench-distill]`` (needs
``graphc setup training``; about 2 minutes per epoch on 2 cores);
``python benchmarks/distill.py --model minilm [--out out/bench-distill-minilm]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from graphc.models import fashion_cnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
CNN = ROOT / "models" / "fashion_cnn.onnx"
TEST = ROOT / "models" / "fashion_mnist_test.npz"
DEFAULTS = {  # per model: epochs, distill options after epochs, prune ratio
    "cnn": (5, "T=4:alpha=0.7:lr=0.0005:batch=64", 0.5),
    "minilm": (6, "loss=cosine:lr=0.0005:batch=32:patience=0:freeze=*word_embeddings*:layers=*/output/LayerNorm/*:"
                  "mask=attention_mask", 0.3),
}
PRUNE_DEFAULTS = {"cnn": "", "minilm": "by=taylor"}  # prune options after the ratio
MINILM_HOLDOUT = 512


def write_splits(out: pathlib.Path, holdout: int) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    images, labels = fashion_cnn.load_split("train")
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


def embedding_scores(path: pathlib.Path, threads: int, test_feeds: dict, reference: np.ndarray, probe) -> tuple[float, float]:
    """A MiniLM row's mean embedding cosine against ``reference`` on ``test_feeds`` and its
    supersense probe accuracy."""
    from graphc.metrics import cosine_per_sample
    from graphc.models import supersense
    from graphc.runtime import open_session

    session = open_session(path, threads)
    cosine = float(cosine_per_sample(supersense.embed(session, test_feeds), reference).mean())
    return cosine, probe.accuracy(session)


def optimize(model: pathlib.Path, passes: str, out: pathlib.Path, **kwargs) -> tuple[pathlib.Path, float, dict]:
    from graphc.pipeline import OptimizeRequest, optimize as run

    start = time.perf_counter()
    report = run(OptimizeRequest(model=model, passes=passes, output=out, progress=False, **kwargs))
    return out, time.perf_counter() - start, report.as_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEFAULTS), default="cnn")
    parser.add_argument("--ratio", type=float, default=None, help="prune ratio (cnn 0.5, minilm 0.3)")
    parser.add_argument("--epochs", type=int, default=None, help="distill epochs (cnn 5, minilm 6)")
    parser.add_argument("--prune", default=None, help="prune options after the ratio (key=value joined by ':'; "
                        "cnn none, minilm by=taylor)")
    parser.add_argument("--distill", default=None, help="distill options after epochs (key=value joined by ':'; "
                        f"cnn {DEFAULTS['cnn'][1]}, minilm {DEFAULTS['minilm'][1]})")
    parser.add_argument("--holdout", type=int, default=5000, help="cnn: train images held out as --eval-data")
    parser.add_argument("--train-glosses", type=int, default=40000, help="minilm: glosses distill trains on")
    parser.add_argument("--test-glosses", type=int, default=1000, help="minilm: glosses the cosine is measured on")
    parser.add_argument("--seq", type=int, default=48, help="minilm: training tokens per gloss")
    parser.add_argument("--threads", type=int, default=2, help="minilm: onnxruntime threads")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="work directory (default out/bench-distill, or out/bench-distill-minilm)")
    args = parser.parse_args(argv)
    epochs, options, ratio = DEFAULTS[args.model]
    args.epochs = epochs if args.epochs is None else args.epochs
    args.distill = options if args.distill is None else args.distill
    args.ratio = ratio if args.ratio is None else args.ratio
    args.prune = PRUNE_DEFAULTS[args.model] if args.prune is None else args.prune
    if args.out is None:
        args.out = ROOT / "out" / ("bench-distill" if args.model == "cnn" else "bench-distill-minilm")
    args.out.mkdir(parents=True, exist_ok=True)
    return run_cnn(args) if args.model == "cnn" else run_minilm(args)


def prune_spec(args) -> str:
    return f"prune:{args.ratio}" + (f":{args.prune}" if args.prune else "")


def run_minilm(args) -> int:
    from graphc.models import minilm, supersense, wordnet
    from graphc.model_io import file_size, load_model
    from graphc.runtime import open_session
    from graphc.stats import model_stats

    source = args.out / "minilm.onnx"
    if not source.exists():
        minilm.export_minilm(source)
    test_count, holdout_start = args.test_glosses, args.test_glosses
    train_start = holdout_start + MINILM_HOLDOUT
    holdout = wordnet.gloss_npz(args.out / "holdout.npz", MINILM_HOLDOUT, holdout_start, args.seq)
    train = wordnet.gloss_npz(args.out / "train.npz", args.train_glosses, train_start, args.seq)
    test_feeds = supersense.gloss_feeds(wordnet.noun_glosses(test_count))
    prune_data = wordnet.gloss_npz(args.out / "prune_data.npz", 512, train_start, args.seq)
    distill, prune = f"distill:epochs={args.epochs}:{args.distill}", prune_spec(args)
    rows = [("unpruned", source, 0.0, "")]
    pruned, seconds, _ = optimize(source, prune, args.out / "pruned.onnx", data=prune_data, threads=args.threads)
    rows.append((prune, pruned, seconds, ""))
    distilled, seconds, report = optimize(source, f"{prune},{distill}", args.out / "distilled.onnx",
                                          data=prune_data, train_data=train, eval_data=holdout, metric="cosine",
                                          threads=args.threads)
    stats = report["passes"][1]["stats"]
    rows.append((f"{prune},{distill}", distilled, seconds,
                 f"best epoch {stats['best_epoch']}/{stats['epochs_run']}, holdout cosine {stats['cosine']}"))

    probe = supersense.Probe()
    reference = supersense.embed(open_session(source, args.threads), test_feeds)
    base_size = file_size(source)
    table, records, base_probe = [], [], None
    for name, path, seconds, note in rows:
        cosine, accuracy = embedding_scores(path, args.threads, test_feeds, reference, probe)
        base_probe = accuracy if base_probe is None else base_probe
        size, params = file_size(path), model_stats(load_model(path)).params
        records.append({"model": name, "path": str(path), "cosine": cosine, "probe_accuracy": accuracy,
                        "probe_drop_points": 100 * (base_probe - accuracy), "params": params, "size_bytes": size,
                        "size_ratio": base_size / size, "seconds": round(seconds, 1), "note": note})
        table.append(f"| {name} | {cosine:.4f} | {100 * accuracy:.2f}% | {100 * (base_probe - accuracy):+.2f} | "
                     f"{params / 1e6:.2f}M | {size / 2 ** 20:.1f} MiB | {base_size / size:.2f}x | {seconds:.0f} s | "
                     f"{note} |")
    print(f"| model | cosine vs unpruned ({test_count} test glosses) | supersense probe | drop (points) | params | "
          f"size | smaller | time | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print(f"train {args.train_glosses} glosses x {args.seq} tokens, holdout {MINILM_HOLDOUT}, "
          f"threads {args.threads}; probe {supersense.TRAIN}/{supersense.TEST} glosses")
    (args.out / "distill_minilm.json").write_text(json.dumps(records, indent=1) + "\n")
    return 0


def run_cnn(args) -> int:
    from graphc.model_io import file_size
    from graphc.passes import PASSES
    from graphc.stats import model_stats
    from graphc.model_io import load_model

    train, holdout, calib = write_splits(args.out, args.holdout)
    distill, prune = f"distill:epochs={args.epochs}:{args.distill}", prune_spec(args)
    data = calib if args.prune else None  # by=activation|taylor, recalibrate=true
    rows = [("unpruned", CNN, 0.0, "")]
    pruned, seconds, _ = optimize(CNN, prune, args.out / "pruned.onnx", data=data)
    rows.append((prune, pruned, seconds, ""))
    # one pipeline, so the teacher is the unpruned model as loaded (not the pruned one)
    distilled, seconds, report = optimize(CNN, f"{prune},{distill}", args.out / "distilled.onnx", data=data,
                                          train_data=train, eval_data=holdout, metric="top1")
    stats = report["passes"][1]["stats"]
    rows.append((f"{prune},{distill}", distilled, seconds,
                 f"best epoch {stats['best_epoch']}/{stats['epochs_run']}, holdout top1 {stats['top1']}"))
    if "int8" in PASSES:
        quantized, seconds, _ = optimize(distilled, "int8", args.out / "distilled.int8.onnx", data=calib)
        rows.append((f"{prune},{distill},int8", quantized, seconds, "int8 on the distilled model"))
    else:
        rows.append((f"{prune},{distill},int8", None, 0.0, "pending: int8 is not registered yet"))

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
