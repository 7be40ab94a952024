"""Benchmark: how much accuracy does ``sparsify`` cost, and does ``distill`` win it back?
(issue 16's acceptance tables; every row measured in one run on data that never steered training)

``--model cnn`` (the default): the bundled Fashion-MNIST CNN, top-1 on the full 10k test
split. Distillation trains on the Fashion-MNIST train split (Debian ``dataset-fashion-mnist``)
less its last ``--holdout`` images, which are the ``--eval-data`` that picks the best epoch.
Rows:

1. the dense model;
2. ``sparsify:RATIO`` one shot (default 0.8, unstructured, magnitude);
3. ``sparsify:RATIO,distill:...``: distillation with the mask fixed (``keep_zeros``);
4. ``distill:...:sparsity=RATIO``: sparsity reached while training (cubic schedule);
5. ``sparsify:pattern=2:4,distill:...`` and 6. ``sparsify:RATIO:pattern=block:block=1x4,distill:...``;
7. ``distill:...:sparsity=RATIO:pattern=block:block=1x4`` (the block pattern reached while training);
8. row 3 with ``int8`` after it (1024 train images as calibration data).

Acceptance: rows 3-5 and 7 within 1 point of row 1; row 8 within 0.5 point of row 3 with the
sparsity unchanged (the sparsity column is measured on the written model, through
``graphc inspect --sparsity``'s reader: an int8 weight's zero is its zero point).

``--model minilm``: all-MiniLM-L6-v2 (``models/minilm.py``), the encoder's MatMuls (the
embedding tables are Gather inputs and stay dense). One-shot rows: magnitude and wanda at each
of ``--ratios`` (default 0.5, 0.7, 0.8; wanda's norms on 512 training glosses), then with
``--distill-ratio`` (off by default: 96 minutes for the 80% row on 2 cores, 2026-12-01) the distilled rows
(``distill:...:sparsity=R`` gradual, ``--by`` wanda, with the MiniLM recipe of
``benchmarks/distill.py``), each followed by ``int8`` (graphc's defaults) on it. ``--distill-rows``
picks the kinds at each ratio: ``plain`` (that row), ``prune`` (``prune:0.3:by=taylor`` first, in
the same pipeline, so the teacher is the dense model) and ``block`` (``pattern=block:block=1x4``).
Columns: embedding cosine vs the dense model on ``--test-glosses`` glosses and the WordNet
supersense probe accuracy (``models/supersense.py``).

Usage: ``python benchmarks/sparsify.py [--model cnn|minilm] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

# the data splits, the in-process pipeline run and the row measurements of benchmarks/distill.py
# (this script's folder is on sys.path when it runs)
from distill import embedding_scores, optimize, top1, write_splits

ROOT = pathlib.Path(__file__).resolve().parents[1]
CNN = ROOT / "models" / "fashion_cnn.onnx"
CNN_DISTILL = "epochs=5:T=4:alpha=0.7:lr=0.001:batch=64"
MINILM_DISTILL = ("epochs=6:loss=cosine:lr=0.0005:batch=32:patience=0:freeze=*word_embeddings*:"
                  "layers=*/output/LayerNorm/*:mask=attention_mask")
MINILM_HOLDOUT = 512


def measured_sparsity(path: pathlib.Path) -> tuple[float, str]:
    """Zero share of the layers that have zeros, and the patterns all of them conform to."""
    from graphc.model_io import load_model
    from graphc.passes.sparsify.inspect import CHECKED, sparsity_summary

    rows = [r for r in sparsity_summary(load_model(path)) if r["sparsity"] > 0]
    if not rows:
        return 0.0, ""
    share = sum(r["sparsity"] * r["weights"] for r in rows) / sum(r["weights"] for r in rows)
    patterns = [p for p in CHECKED if all(r["conforms"].get(p) for r in rows)]
    return share, ",".join(patterns)


def run_cnn(args) -> int:
    train, holdout, calib = write_splits(args.out, args.holdout)
    r, distill = args.ratio, f"distill:{args.distill}"
    plans = [
        ("dense", None, {}),
        (f"sparsify:{r}", f"sparsify:{r}", {}),
        (f"sparsify:{r},{distill}", f"sparsify:{r},{distill}", {"train_data": train, "eval_data": holdout}),
        (f"{distill}:sparsity={r}", f"{distill}:sparsity={r}", {"train_data": train, "eval_data": holdout}),
        (f"sparsify:pattern=2:4,{distill}", f"sparsify:pattern=2:4,{distill}",
         {"train_data": train, "eval_data": holdout}),
        (f"sparsify:{r}:pattern=block:block=1x4,{distill}", f"sparsify:{r}:pattern=block:block=1x4,{distill}",
         {"train_data": train, "eval_data": holdout}),
        (f"{distill}:sparsity={r}:pattern=block:block=1x4", f"{distill}:sparsity={r}:pattern=block:block=1x4",
         {"train_data": train, "eval_data": holdout}),
    ]
    rows = []
    for i, (name, passes, extra) in enumerate(plans):
        if passes is None:
            rows.append((name, CNN, 0.0, ""))
            continue
        metric = {"metric": "top1"} if "eval_data" in extra else {}
        path, seconds, report = optimize(CNN, passes, args.out / f"row{i}.onnx", **extra, **metric)
        stats = report["passes"][-1]["stats"]
        note = f"best epoch {stats['best_epoch']}/{stats['epochs_run']}, holdout top1 {stats['top1']}" \
            if "best_epoch" in stats else ""
        rows.append((name, path, seconds, note))
        print(f"# {name}: {seconds:.0f} s {note}", flush=True)
    quantized, seconds, _ = optimize(rows[2][1], "int8", args.out / "row2.int8.onnx", data=calib)
    rows.append((f"{rows[2][0]},int8", quantized, seconds, "int8 on row 3"))
    base = top1(CNN)
    table, records = [], []
    for name, path, seconds, note in rows:
        acc = top1(path)
        share, patterns = measured_sparsity(path)
        records.append({"model": name, "top1": acc, "drop_points": 100 * (base - acc), "sparsity": share,
                        "conforms": patterns, "seconds": round(seconds, 1), "note": note})
        table.append(f"| {name} | {100 * acc:.2f}% | {100 * (base - acc):+.2f} | {100 * share:.1f}% | "
                     f"{patterns} | {seconds:.0f} s | {note} |")
    print("| model | top-1 (10k test) | drop (points) | sparsity of the sparse layers | conforms | time | notes |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))
    with np.load(train) as npz:
        print(f"train {len(npz['labels'])} images, holdout {args.holdout}; distill options {args.distill}")
    (args.out / "sparsify_cnn.json").write_text(json.dumps(records, indent=1) + "\n")
    return 0


def run_minilm(args) -> int:
    from graphc.models import minilm, supersense, wordnet
    from graphc.runtime import open_session

    source = args.out / "minilm.onnx"
    if not source.exists():
        minilm.export_minilm(source)
    train_start = args.test_glosses + MINILM_HOLDOUT
    data = wordnet.gloss_npz(args.out / "wanda_data.npz", 512, train_start, args.seq)
    test_feeds = supersense.gloss_feeds(wordnet.noun_glosses(args.test_glosses))
    rows = [("dense", source, 0.0, "")]
    for ratio in args.ratios:
        for by in ("magnitude", "wanda"):
            name = f"sparsify:{ratio}:by={by}"
            path, seconds, _ = optimize(source, name, args.out / f"{by}{ratio}.onnx", data=data,
                                        threads=args.threads)
            rows.append((name, path, seconds, "one shot"))
        for block in args.one_shot_blocks:  # the block patterns the kernels read, scored as the better one-shot row
            name = f"sparsify:{ratio}:by=wanda:pattern=block:block={block}"
            path, seconds, _ = optimize(source, name, args.out / f"wanda{ratio}_{block}.onnx", data=data,
                                        threads=args.threads)
            rows.append((name, path, seconds, "one shot"))
    if args.distill_ratio:
        holdout = wordnet.gloss_npz(args.out / "holdout.npz", MINILM_HOLDOUT, args.test_glosses, args.seq)
        train = wordnet.gloss_npz(args.out / "train.npz", args.train_glosses, train_start, args.seq)
        for ratio in args.distill_ratio:
            for kind in args.distill_rows:
                name = f"distill:{args.distill}:sparsity={ratio}:by={args.by}"
                if kind == "prune":  # structure first (heads and FFN neurons), then sparsity while distilling
                    name = f"prune:{args.prune_ratio}:by=taylor,{name}"
                elif kind == "block":
                    name = f"{name}:pattern=block:block={args.block}"
                stem = f"distilled{'' if kind == 'plain' else kind}{ratio}"
                path, seconds, report = optimize(source, name, args.out / f"{stem}.onnx", data=data,
                                                 train_data=train, eval_data=holdout, metric="cosine",
                                                 threads=args.threads)
                stats = report["passes"][-1]["stats"]
                rows.append((name, path, seconds, f"best epoch {stats['best_epoch']}/{stats['epochs_run']}, "
                                                  f"holdout cosine {stats['cosine']}"))
                print(f"# {name}: {seconds:.0f} s, best epoch {stats['best_epoch']}, holdout cosine "
                      f"{stats['cosine']}", flush=True)
                quantized, seconds, _ = optimize(path, "int8", args.out / f"{stem}.int8.onnx", data=data,
                                                 threads=args.threads)
                rows.append((f"{name},int8", quantized, seconds, "int8 (graphc defaults) on the row above"))
    probe = supersense.Probe()
    reference = supersense.embed(open_session(source, args.threads), test_feeds)
    table, records, base_probe = [], [], None
    for name, path, seconds, note in rows:
        cosine, accuracy = embedding_scores(path, args.threads, test_feeds, reference, probe)
        base_probe = accuracy if base_probe is None else base_probe
        share, patterns = measured_sparsity(path)
        records.append({"model": name, "cosine": cosine, "probe_accuracy": accuracy, "sparsity": share,
                        "conforms": patterns, "probe_drop_points": 100 * (base_probe - accuracy),
                        "seconds": round(seconds, 1)})
        table.append(f"| {name} | {100 * share:.1f}% | {patterns} | {cosine:.4f} | {100 * accuracy:.2f}% | "
                     f"{100 * (base_probe - accuracy):+.2f} | {seconds:.0f} s | {note} |")
    print(f"| model | sparsity of the sparse layers | conforms | cosine vs dense ({args.test_glosses} test glosses) | "
          f"supersense probe | drop (points) | time | notes |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    (args.out / "sparsify_minilm.json").write_text(json.dumps(records, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "minilm"), default="cnn")
    parser.add_argument("--ratio", type=float, default=0.8, help="cnn: the sparsity of rows 2-4 and 6")
    parser.add_argument("--distill", default=None, help=f"distill options (cnn {CNN_DISTILL}; minilm {MINILM_DISTILL})")
    parser.add_argument("--holdout", type=int, default=5000, help="cnn: train images held out as --eval-data")
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.5, 0.7, 0.8], help="minilm: one-shot ratios")
    parser.add_argument("--distill-ratio", type=float, nargs="*", default=[], help="minilm: distilled sparsities")
    parser.add_argument("--by", default="wanda", help="minilm: the distilled rows' score")
    parser.add_argument("--distill-rows", nargs="*", choices=("plain", "prune", "block"), default=["plain"],
                        help="minilm: at each --distill-ratio, gradual sparsity alone (plain), after "
                             "prune:PRUNE_RATIO:by=taylor (prune), or in --block blocks (block)")
    parser.add_argument("--prune-ratio", type=float, default=0.3, help="minilm: the prune row's structured ratio")
    parser.add_argument("--block", default="1x4", help="minilm: the block row's block shape")
    parser.add_argument("--one-shot-blocks", nargs="*", default=[],
                        help="minilm: at each one-shot ratio, also wanda in these block shapes (e.g. 1x4 8x4 16x64)")
    parser.add_argument("--train-glosses", type=int, default=40000)
    parser.add_argument("--test-glosses", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    args.distill = args.distill or (CNN_DISTILL if args.model == "cnn" else MINILM_DISTILL)
    args.out = args.out or ROOT / "out" / f"bench-sparsify-{args.model}"
    args.out.mkdir(parents=True, exist_ok=True)
    return run_cnn(args) if args.model == "cnn" else run_minilm(args)


if __name__ == "__main__":
    sys.exit(main())
