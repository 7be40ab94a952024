"""graphc ``prune`` measured side by side in one run, with Torch-Pruning 1.6.1 as the anchor.

Part 1, the two real models, graphc ``prune`` at ratios 0, 0.3 and 0.5 (default options, plus
``round_to=1``, ``target=macs`` and ``target=macs:latency=true`` at 0.3 and 0.5; the default
is ``round_to=8``; the last two remove the same MACs, so they show what ``latency=true``
costs in metric and gains in speed), metric before any fine-tuning:

- the bundled Fashion-MNIST CNN (``models/fashion_cnn.onnx``): top-1 on the 10k test split;
- all-MiniLM-L6-v2 (``models/minilm.py``, TorchScript export): mean embedding cosine vs the
  unpruned model on 300 WordNet noun glosses (Debian ``wordnet-base``, text after ``| ``,
  a fixed seeded sample), 128 tokens.

Part 2, random-init ``transformers`` configs (seed 0) exported with
``torch.onnx.export(dynamo=False, opset 17)``: ResNet-50 (``ResNetForImageClassification``,
1x3x224x224) and BERT-base (``BertForSequenceClassification``, eager attention, sequence 128).
Torch-Pruning 1.6.1 prunes the PyTorch models (``MagnitudePruner``, L1 importance, uniform
per-layer ``pruning_ratio`` 0.3 and 0.5, classifier ignored; BERT by its documented HF recipe:
whole heads via ``num_heads``/``prune_num_heads``, hidden size too, pooler ignored, then the
attention modules' head counts and the HF config updated); its models are exported the same
way. graphc prunes the unpruned ONNX export with ``prune:target=macs:ratio=r``, ``r`` chosen so
its MACs match Torch-Pruning's within 3% (first guess from graphc's plan: ``r`` = MACs to
remove / prunable MACs; then secant steps on the pruned model's measured MACs), plus a
``round_to=1`` variant, a ``round_to=32`` variant (onnxruntime's CPU kernels work on 32 output
channels at a time with AVX2: MLAS's NCHWc convolution computes filter sets of 4 blocks of 8
channels, ``FilterSetSize`` in ``snchwc.cpp``; its SGEMM packs 16-column panels), a
``latency=true:round_to=32`` variant (importance weighed by each layer's speed per MAC,
profiled on this machine at batch 1 with 2 threads: at equal MACs the slow layers give more)
and, for BERT, ``hidden=true`` and ``hidden=true:round_to=32`` variants. Both sides' MACs are counted
by ``graphc.stats`` on the ONNX files (attention score/context MatMuls included, which
Torch-Pruning's own counter leaves out); "MACs vs TP" flags a graphc model more than 3% away
(MISMATCH: the target is out of graphc's reach with those options).

Columns: parameters and MACs (``graphc.stats`` at batch 1; sequence 128), each with its ratio
to the unpruned model; speed-up of the p50 latency vs the unpruned model (onnxruntime FP32,
2 threads, ``graphc.bench``: all variants of a model interleaved in one call per batch size;
batch 1 and 32 in part 1, batch 1, 8 and 32 in part 2, batch 32 with a quarter of the runs);
the metric (part 1).

Setup (Torch-Pruning is a benchmark-only dependency, not one of graphc's)::

    pip install -q -c constraints.txt -e '.[export]' && pip install -q -c constraints.txt torch-pruning==1.6.1

Usage::

    python benchmarks/prune.py [--quick] [--models cnn,minilm,resnet50,bert] [--runs 20]
                               [--json out/bench_prune.json] [--workdir out/bench_prune]

The full run (``python benchmarks/prune.py --json out/bench_prune.json``) takes about 15 minutes
on 2 quiet cores (up to twice that when they are shared); ``--quick`` (3 timed runs after 1
warm-up, 1000 test images, 64 glosses) checks that everything works, in about 8 minutes.
Unpruned exports are kept in ``--workdir`` and reused; every pruned model is made afresh.

One script of over 400 lines on purpose: a benchmark is read and rerun as one piece (both
parts, Torch-Pruning's recipes, the MACs matching and the tables), and its shared recipes
already live in ``graphc.models``.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time

import numpy as np

from graphc.models import minilm, wordnet
from graphc.models.hf_configs import (bert_feeds, export_bert, export_resnet, hf_bert, hf_resnet50,
                                      image_feeds)

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SEQUENCE = 128
SEQ_SHAPES = {"sequence": (SEQUENCE,)}
RATIOS = (0.3, 0.5)
MAC_TOLERANCE = 0.03
THREADS = 2
PART2_BATCHES = (1, 8, 32)  # the anchor table is b1 / b8; the part 1 columns are b1 / b32
CNN_RUNS_SCALE = 10  # the CNN runs in well under a millisecond: more runs for a steady p50


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- data
def save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> pathlib.Path:
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------ measurement
def model_size(path: pathlib.Path, shapes=None) -> tuple[int, int]:
    """(parameters, MACs at batch 1) of an ONNX file."""
    from graphc.model_io import load_model
    from graphc.stats import model_stats

    stats = model_stats(load_model(path), shapes or {})
    return stats.params, stats.macs


def latencies(paths: list[pathlib.Path], data: pathlib.Path, batches, args, scale: int = 1,
              fewer_runs_from: int | None = None) -> dict[int, list[float]]:
    """p50 ms of every model per batch size: one interleaved ``graphc.bench`` call per batch
    (``scale`` times ``--runs`` timed runs; a quarter of them, at least 3, from batch
    ``fewer_runs_from`` up, where one run of the big models takes seconds)."""
    from graphc.bench import bench

    result = {}
    for batch in batches:
        runs, warmup = args.runs * scale, args.warmup * scale
        if fewer_runs_from is not None and batch >= fewer_runs_from:
            runs, warmup = max(3, runs // 4), max(1, warmup // 3)
        log(f"bench batch {batch}: {len(paths)} models, {runs} runs")
        timings = bench(paths, threads=THREADS, data=data, batch=batch, warmup=warmup, runs=runs)
        result[batch] = [r.p50_ms for r in timings]
    return result


def cnn_top1(path: pathlib.Path, rows: int) -> float:
    from graphc.data import load_dataset, model_signature
    from graphc.metrics import evaluate
    from graphc.model_io import load_model
    from graphc.runtime import open_session, run_session

    dataset = load_dataset(MODELS / "fashion_mnist_test.npz", model_signature(load_model(path))).take(rows)
    session = open_session(path, THREADS)
    return evaluate(lambda feeds: run_session(session, feeds), dataset, "top1")


def embeddings(path: pathlib.Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from graphc.runtime import open_session

    session = open_session(path, THREADS)
    rows = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i:i + 32] for k, v in feeds.items()})[0]
                           for i in range(0, rows, 32)])


def mean_cosine(reference: np.ndarray, other: np.ndarray) -> float:
    from graphc.metrics import cosine_per_sample

    return float(cosine_per_sample(reference, other).mean())


# ------------------------------------------------------------------------ graphc side
def graphc_prune(source: pathlib.Path, spec: str, output: pathlib.Path, shapes=None) -> pathlib.Path:
    from graphc.pipeline import OptimizeRequest, optimize

    log(f"graphc {spec}: {source.name} -> {output.name}")
    optimize(OptimizeRequest(model=source, passes=spec, output=output, shapes=dict(shapes or {}), progress=False,
                             threads=THREADS))  # latency=true profiles with the threads the models are timed with
    return output


def prunable_macs(source: pathlib.Path, hidden: bool, shapes) -> float:
    """MACs in graphc's prunable groups (what ``target=macs`` ratios are a share of)."""
    from graphc.graph import to_graph
    from graphc.model_io import load_model
    from graphc.passes.prune import PruneOptions, plan_pruning

    plan = plan_pruning(to_graph(load_model(source)), PruneOptions(ratio=0.0, target="macs", hidden=hidden),
                        shapes=dict(shapes))
    return plan.cost_total


def spec_for(ratio: float, extra: str) -> str:
    return f"prune:target=macs:ratio={ratio:.4f}{extra}"


def secant_ratio(points: list[tuple[float, float]], target: float) -> float:
    """The ratio where the line through the (ratio, MACs) point nearest ``target`` and the
    next nearest at least 0.01 away in ratio (variants of one option set differ slightly at
    one ratio) meets it, within graphc's range [0, 0.95]."""
    ranked = sorted(set(points), key=lambda p: abs(p[1] - target))
    r0, m0 = ranked[0]
    r1, m1 = next(((r, m) for r, m in ranked[1:] if abs(r - r0) >= 0.01 and m != m0), (r0, m0))
    if m1 == m0:
        return r0
    return min(0.95, max(0.0, r0 + (target - m0) * (r1 - r0) / (m1 - m0)))


def match_macs(source: pathlib.Path, target: int, extra: str, output: pathlib.Path, shapes,
               curve: list[tuple[float, float]], tries: int = 3) -> dict:
    """graphc ``target=macs`` pruned to ``target`` MACs (within 3% when reachable).

    ``curve`` holds (ratio, MACs) points of this option set: (0, unpruned) and either the
    plan's linear estimate (1, unpruned - prunable MACs) or the points measured so far, which
    replace it and which this call extends. Each try prunes at the secant ratio; the model
    nearest the target is kept at ``output``.
    """
    best = None
    for step in range(tries):
        ratio = secant_ratio(curve, target)
        if step and any(abs(ratio - r) < 1e-4 for r, _ in curve):
            break  # no new ratio to try (the target is out of reach)
        candidate = output.with_name(f"{output.stem}.try{step}.onnx")
        graphc_prune(source, spec_for(ratio, extra), candidate, shapes)
        params, macs = model_size(candidate, shapes)
        log(f"  ratio {ratio:.4f}: {macs / 1e9:.3f} GMACs (target {target / 1e9:.3f})")
        if len(curve) > 1 and curve[1][0] == 1.0:
            del curve[1]  # the plan's estimate gives way to measurements
        curve.append((ratio, macs))
        if best is None or abs(macs - target) < abs(best["macs"] - target):
            best = {"path": candidate, "ratio": ratio, "params": params, "macs": macs}
        if abs(macs - target) / target <= MAC_TOLERANCE / 2:
            break
    best["path"].replace(output)
    for leftover in output.parent.glob(f"{output.stem}.try*.onnx"):
        leftover.unlink()
    return {**best, "path": output, "spec": spec_for(best["ratio"], extra)}


# ----------------------------------------------------------------- torch / exports
def torch_pruning():
    """The ``torch_pruning`` module, 1.6.1 (a benchmark-only dependency)."""
    try:
        import torch_pruning as tp
        from importlib.metadata import version
    except ImportError:
        raise SystemExit("benchmarks/prune.py: resnet50/bert need Torch-Pruning: "
                         "pip install -c constraints.txt torch-pruning==1.6.1") from None
    if version("torch-pruning") != "1.6.1":
        log(f"warning: torch-pruning {version('torch-pruning')} installed, the anchor is 1.6.1")
    return tp


def tp_prune_resnet(model, ratio: float):
    import torch

    tp = torch_pruning()
    model = copy.deepcopy(model)
    example = {"pixel_values": torch.from_numpy(image_feeds(1)["pixel_values"])}
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[model.classifier],
                                       output_transform=lambda out: out.logits.sum())
    pruner.step()
    return model


def tp_prune_bert(model, ratio: float):
    """Torch-Pruning's HF BERT recipe (uniform, L1): heads whole, FFN and hidden size too."""
    import torch
    from transformers.models.bert.modeling_bert import BertSelfAttention

    tp = torch_pruning()
    model = copy.deepcopy(model)
    example = {k: torch.from_numpy(v) for k, v in bert_feeds(1).items()}
    attentions = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    heads = {linear: m.num_attention_heads for m in attentions for linear in (m.query, m.key, m.value)}
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, num_heads=heads, prune_num_heads=True,
                                       prune_head_dims=False, head_pruning_ratio=ratio,
                                       ignored_layers=[model.bert.pooler, model.classifier],
                                       output_transform=lambda out: out.logits.sum())
    pruner.step()
    for m in attentions:
        m.num_attention_heads = pruner.num_heads[m.query]
        m.all_head_size = m.query.out_features
    update_bert_config(model, attentions[0])
    return model


def update_bert_config(model, attention) -> None:
    """The config fields Torch-Pruning's recipe changes (uniform: every layer alike)."""
    layer = model.bert.encoder.layer[0]
    model.config.hidden_size = model.bert.embeddings.word_embeddings.embedding_dim
    model.config.num_attention_heads = attention.num_attention_heads
    model.config.intermediate_size = layer.intermediate.dense.out_features


# -------------------------------------------------------------------------- formatting
def fmt_count(n: float, base: float, unit: str = "") -> str:
    from graphc.stats import human

    return f"{human(n, unit)} ({n / base:.2f}x)"


def fmt_speed(base_ms: float, ms: float) -> str:
    return f"{base_ms / ms:.2f}x"


def speed_cells(lat: dict[int, list[float]], index: int) -> list[str]:
    return [fmt_speed(ms[0], ms[index]) for ms in lat.values()]


# ------------------------------------------------------------------ part 1: real models
def part1_variants(source: pathlib.Path, work: pathlib.Path, stem: str, shapes) -> list[tuple[str, pathlib.Path]]:
    made = [("unpruned (source)", source)]
    for ratio in (0.0, *RATIOS):
        for extra in ("",) if ratio == 0 else ("", ":round_to=1", ":target=macs", ":target=macs:latency=true"):
            spec = f"prune:ratio={ratio}{extra}"
            out = work / f"{stem}-r{ratio}{extra.replace(':', '-').replace('=', '')}.onnx"
            made.append((spec, graphc_prune(source, spec, out, shapes)))
    return made


def part1_rows(model: str, variants, shapes, lat, metric) -> list[dict]:
    rows = []
    for i, (label, path) in enumerate(variants):
        params, macs = model_size(path, shapes)
        rows.append({"model": model, "variant": label, "params": params, "macs": macs,
                     "p50_ms": {b: ms[i] for b, ms in lat.items()}, "metric": metric(path)})
    return rows


def run_cnn(args, work: pathlib.Path) -> list[dict]:
    source = MODELS / "fashion_cnn.onnx"
    variants = part1_variants(source, work, "cnn", {})
    with np.load(MODELS / "fashion_mnist_test.npz") as npz:
        data = save_npz(work / "cnn_bench.npz", {"image": npz["image"][:32]})
    lat = latencies([p for _, p in variants], data, (1, 32), args, scale=CNN_RUNS_SCALE)
    return part1_rows("cnn", variants, {}, lat, lambda path: cnn_top1(path, args.cnn_rows))


def run_minilm(args, work: pathlib.Path) -> list[dict]:
    source = work / "minilm.onnx"
    if not source.exists():
        log("exporting MiniLM")
        minilm.export_minilm(source)
    feeds = minilm.tokenize(wordnet.noun_glosses(args.glosses), max_length=SEQUENCE)
    data = save_npz(work / "minilm_bench.npz", {k: v[:32] for k, v in feeds.items()})
    variants = part1_variants(source, work, "minilm", SEQ_SHAPES)
    lat = latencies([p for _, p in variants], data, (1, 32), args)
    reference = embeddings(source, feeds)
    return part1_rows("minilm", variants, SEQ_SHAPES, lat, lambda path: mean_cosine(reference, embeddings(path, feeds)))


def part1_table(rows: list[dict], metric_name: str) -> str:
    from graphc.report import markdown_table

    base = rows[0]
    header = ["variant", "params", "MACs", "speed b1", "speed b32", metric_name]
    body = [[r["variant"], fmt_count(r["params"], base["params"]), fmt_count(r["macs"], base["macs"]),
             *[fmt_speed(base["p50_ms"][b], r["p50_ms"][b]) for b in (1, 32)], f"{r['metric']:.4f}"] for r in rows]
    return markdown_table([header, *body])


# ------------------------------------------------------------- part 2: Torch-Pruning anchor
def anchor_variants(name: str, model, export, work: pathlib.Path, shapes, hidden_variant: bool):
    """Rows to measure (variant, path, graphc spec, Torch-Pruning MACs to match), unpruned first."""
    source = work / f"{name}.onnx"
    if not source.exists():
        log(f"exporting {name}")
        export(model, source)
    base_params, base_macs = model_size(source, shapes)
    log(f"{name}: {base_params / 1e6:.2f}M params, {base_macs / 1e9:.3f} GMACs")
    pruners = {"resnet50": tp_prune_resnet, "bert": tp_prune_bert}
    first_guess = {hidden: [(0.0, base_macs), (1.0, base_macs - prunable_macs(source, hidden, shapes))]
                   for hidden in ((False, True) if hidden_variant else (False,))}
    curves: dict[str, list] = {}  # one MACs(ratio) curve per option set: observations never mix
    made = [{"variant": "unpruned", "path": source, "spec": ""}]
    for ratio in RATIOS:
        log(f"Torch-Pruning {name} ratio {ratio}")
        tp_path = export(pruners[name](model, ratio), work / f"{name}-tp{ratio}.onnx")
        made.append({"variant": f"Torch-Pruning {ratio}", "path": tp_path, "spec": ""})
        _, target = model_size(tp_path, shapes)
        extras = ["", ":round_to=1", ":round_to=32", ":latency=true:round_to=32",
                  *([":hidden=true", ":hidden=true:round_to=32"] if hidden_variant else [])]
        for extra in extras:
            out = work / f"{name}-graphc{ratio}{extra.replace(':', '-').replace('=', '')}.onnx"
            found = match_macs(source, target, extra, out, shapes, curves.setdefault(extra, list(first_guess["hidden=true" in extra])))
            made.append({"variant": f"graphc @ TP {ratio}{extra.replace(':', ' ')}", "path": found["path"],
                         "spec": found["spec"], "target_macs": target})
    return made


def part2_rows(name: str, made: list[dict], shapes, lat) -> list[dict]:
    rows = []
    for i, m in enumerate(made):
        params, macs = model_size(m["path"], shapes)
        row = {"model": name, "variant": m["variant"], "spec": m["spec"], "params": params, "macs": macs,
               "p50_ms": {b: ms[i] for b, ms in lat.items()}}
        if "target_macs" in m:
            row["macs_vs_tp"] = macs / m["target_macs"] - 1
        rows.append(row)
    return rows


def run_anchor_model(name: str, args, work: pathlib.Path) -> list[dict]:
    is_bert = name == "bert"
    torch_pruning()
    model = hf_bert() if is_bert else hf_resnet50()
    shapes = SEQ_SHAPES if is_bert else {}
    made = anchor_variants(name, model, export_bert if is_bert else export_resnet, work, shapes, is_bert)
    data = save_npz(work / f"{name}_bench.npz", bert_feeds(max(PART2_BATCHES)) if is_bert else image_feeds(max(PART2_BATCHES)))
    lat = latencies([m["path"] for m in made], data, PART2_BATCHES, args, fewer_runs_from=32)
    return part2_rows(name, made, shapes, lat)


def part2_table(rows: list[dict]) -> str:
    from graphc.report import markdown_table

    base = rows[0]
    header = ["variant", "graphc spec", "params M", "GMACs", "MACs vs TP", "speed b1 / b8 / b32"]
    body = []
    for r in rows:
        parity = ""
        if "macs_vs_tp" in r:
            parity = f"{r['macs_vs_tp']:+.1%} {'ok' if abs(r['macs_vs_tp']) <= MAC_TOLERANCE else 'MISMATCH'}"
        speed = " / ".join(fmt_speed(base["p50_ms"][b], r["p50_ms"][b]) for b in PART2_BATCHES)
        body.append([r["variant"], r["spec"] or "-", f"{r['params'] / 1e6:.2f} ({r['params'] / base['params']:.2f}x)",
                     f"{r['macs'] / 1e9:.2f} ({r['macs'] / base['macs']:.2f}x)", parity, speed])
    return markdown_table([header, *body])


# ------------------------------------------------------------------------------ main
TITLES = {"cnn": ("Bundled Fashion-MNIST CNN", "top-1"),
          "minilm": ("all-MiniLM-L6-v2 (sequence 128)", "cosine vs unpruned"),
          "resnet50": ("ResNet-50 (random init, 1x3x224x224)", None),
          "bert": ("BERT-base (random init, sequence 128)", None)}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,minilm,resnet50,bert")
    ap.add_argument("--quick", action="store_true", help="3 timed runs, 1000 test images, 64 glosses")
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per model and batch size (default 20; the CNN gets 10x)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs per model (default 3)")
    ap.add_argument("--json", type=pathlib.Path, default=None, help="also write every row as JSON")
    ap.add_argument("--workdir", type=pathlib.Path, default=ROOT / "out" / "bench_prune")
    args = ap.parse_args(argv)
    args.runs = args.runs or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.cnn_rows = 1000 if args.quick else 10000
    args.glosses = 64 if args.quick else 300
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(TITLES))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {','.join(TITLES)}")
    return args


def header_line(args) -> str:
    import onnxruntime
    import torch

    from graphc.cpu_features import cpu_features

    return (f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, CPU {cpu_features().describe()}, "
            f"{THREADS} threads, p50 over {args.runs} interleaved runs ({args.warmup} warm-up)"
            f"{', QUICK' if args.quick else ''}")


def print_model(model: str, rows: list[dict], args) -> None:
    title, metric = TITLES[model]
    if metric is not None:
        detail = f"{args.cnn_rows} test images" if model == "cnn" else f"{args.glosses} WordNet glosses"
        print(f"\n### {title}: graphc prune, metric before fine-tuning ({detail})\n")
        print(part1_table(rows, metric))
    else:
        print(f"\n### {title}: Torch-Pruning 1.6.1 vs graphc at the same MACs\n")
        print(part2_table(rows))
    sys.stdout.flush()


def main(argv=None) -> None:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    runners = {"cnn": run_cnn, "minilm": run_minilm,
               "resnet50": lambda a, w: run_anchor_model("resnet50", a, w),
               "bert": lambda a, w: run_anchor_model("bert", a, w)}
    if {"resnet50", "bert"} & set(args.models):
        torch_pruning()  # missing: one line saying how to install it, before any work
    start = time.perf_counter()
    print(header_line(args))
    results = {}
    for model in args.models:
        model_start = time.perf_counter()
        results[model] = runners[model](args, args.workdir)
        print_model(model, results[model], args)
        log(f"{model} done in {time.perf_counter() - model_start:.0f}s")
    elapsed = time.perf_counter() - start
    print(f"\ntotal {elapsed / 60:.1f} min")
    if args.json is not None:
        rows = [r for rs in results.values() for r in rs]
        args.json.write_text(json.dumps({"args": {"runs": args.runs, "warmup": args.warmup, "quick": args.quick,
                                                  "threads": THREADS}, "seconds": elapsed, "rows": rows},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
