"""Every corpus model (``tests/corpus``: real exports shipped in packages and models written
for the patterns real exporters produce) through every pass, side by side in one run.

For each model and pass (``fold``, ``int8`` default, ``int8:target=tensorrt``, ``prune:0.3``,
``fuse``, ``sparsify:0.5``: one shot, unstructured, magnitude; no kernel runs its zeros)
it runs ``graphc optimize M --passes fold,P --verify`` in a fresh process and reads the
report: valid (exit 0; the written model passed graphc's after-pass checks: checker, strict
shape inference, a session, one run) or refused (exit 2, with its one-line reason), the
output cosine vs the FP32 original on the ``--verify`` sample inputs (16 rows of synthetic
inputs at the shapes below), and the latency ratio FP32 / optimized at batch 1 from
``graphc.bench.bench`` (both models interleaved, non-spinning sessions, one call per pair, at
least ``--runs`` rounds and more until ``--seconds``), with its 95% interval (a paired bootstrap
over the rounds, ``graphc.bench.speedup_interval``). That interval covers the noise within one
call, not a lasting difference between two sessions of one model; the cells of models a pass left
unchanged show the size of that (the summary prints their range). So a cell counts as a measured
slowdown, marked "slower", when its whole interval is below ``SLOWDOWN`` (0.97, the int8 speed
guard's 3% margin); the summary under the table counts them per pass.
Prints a Markdown table and the CPU it ran on.

    python benchmarks/corpus_table.py [--runs 50] [--seconds 1] [--models a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphc.bench import bench, speedup_interval  # noqa: E402
from graphc.cpu_features import cpu_features, cpu_name  # noqa: E402
from graphc.data import parse_shapes  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402

SLOWDOWN = 0.97  # a whole interval below this: a measured slowdown
PASSES = ["fold", "fold,int8", "fold,int8:target=tensorrt", "fold,prune:0.3", "fold,fuse", "fold,sparsify:0.5"]
# shapes for the dims the models leave open (batch 1; realistic sizes for the CNNs)
SHAPES = {
    "ppocr-rec": ["--shape", "x=1x3x48x320"], "ppocr-cls": ["--shape", "x=1x3x48x192"],
    "ppocr-det": ["--shape", "x=1x3x320x320"], "silero-vad": ["--shape", "input=1x512"],
    "silero-vad-op15": ["--shape", "input=1x512"], "silero-vad-ifless": ["--shape", "input=1x512"],
    "voicefilter-lite": ["--shape", "batch=1,time=10"], "tashkeel-bilstm": ["--shape", "batch=1,seq_len=64"],
    "voicefilter-embedder": ["--shape", "batch=1"], "open-nsfw": ["--shape", "batch=1"],
    "gru-state": ["--shape", "batch=1,time=16"],
    "lstm-state-unnamed": ["--shape", "x=1x16x8", "--shape", "h0=2x1x16", "--shape", "c0=2x1x16"],
}


def graphc(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, argv)], capture_output=True, text=True)


def one(model: pathlib.Path, name: str, passes: str, directory: pathlib.Path, runs: int, seconds: float) -> dict:
    out, report = directory / f"{name}.{passes}.onnx", directory / f"{name}.{passes}.json"
    args = [*SHAPES.get(name, []), *CORPUS[name].cli_args]
    run = graphc("optimize", model, "--passes", passes, "--verify", "-o", out, "--report", report, "--quiet", *args)
    if run.returncode != 0:
        line = (run.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": "refused" if run.returncode == 2 else f"exit {run.returncode}", "reason": line[:160]}
    data = json.loads(report.read_text())
    verify = data["passes"][-1].get("verify") or []
    cosines = [v["cosine"] for v in verify if v.get("cosine") is not None]
    result = {"status": "valid", "changed": any(p.get("changed") for p in data["passes"]),
              "cosine": min(cosines) if cosines else None,
              "size": data["passes"][-1]["after"]["size_bytes"] / data["before"]["size_bytes"]}
    try:
        before, after = bench([model, out], data=None, shapes=parse_shapes(_shape_items(args)), batch=1, runs=runs,
                              min_seconds=seconds)
        result["speed"] = before.p50_ms / after.p50_ms
        result["speed_interval"] = speedup_interval(before, after)
        result["runs"] = before.runs
    except Exception as exc:  # noqa: BLE001 - a model bench cannot run is reported, not fatal
        result["speed_error"] = str(exc)[:120]
    return result


def _shape_items(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--shape"]


def cell(r: dict) -> str:
    if r["status"] != "valid":
        return f"{r['status']}: {r['reason'].split('error: ', 1)[-1][:90]}"
    parts = ["valid" if r["changed"] else "valid (unchanged)"]
    if r.get("cosine") is not None:
        parts.append(f"cos {r['cosine']:.4f}")
    parts.append(f"size {r['size']:.2f}x")
    if "speed" in r:
        low, high = r["speed_interval"]
        parts.append(f"{r['speed']:.2f}x b1 ({low:.2f}-{high:.2f}{', slower' if slower(r) else ''})")
    else:
        parts.append("speed n/a")
    return ", ".join(parts)


def slower(r: dict) -> bool:
    """A measured slowdown: the whole 95% interval of FP32 / optimized below SLOWDOWN."""
    return r["status"] == "valid" and "speed" in r and r["speed_interval"][1] < SLOWDOWN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="at least this many interleaved rounds per pair")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="more rounds until a pair's have taken this long (a sub-millisecond model then gets "
                             "hundreds of runs, for a narrow interval)")
    parser.add_argument("--models", default=None, help="comma-separated corpus names (default: all)")
    parser.add_argument("--columns", nargs="+", default=PASSES, choices=PASSES, metavar="PASSES",
                        help=f"the columns to run (default all: {' '.join(PASSES)})")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    names = args.models.split(",") if args.models else sorted(CORPUS)
    columns = args.columns
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        for name in names:
            model = CORPUS[name].build(directory)
            results[name] = {p: one(model, name, p, directory, args.runs, args.seconds) for p in columns}
            print(f"{name}: " + " | ".join(cell(results[name][p]) for p in columns), file=sys.stderr, flush=True)
    print(f"CPU: {cpu_name()} ({cpu_features().describe()}); batch 1, graphc bench p50 ratios "
          f"(FP32 / optimized, interleaved, non-spinning; >1 is faster)\n")
    print("| model | origin | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name in names:
        print(f"| {name} | {CORPUS[name].origin.split(' (')[0]} | "
              + " | ".join(cell(results[name][p]) for p in columns) + " |")
    unchanged = [r["speed"] for n in names for r in results[n].values()
                 if r["status"] == "valid" and not r["changed"] and "speed" in r]
    if unchanged:
        print(f"\nunchanged models (the pass wrote the same graph): {min(unchanged):.2f}-{max(unchanged):.2f}x in "
              f"{len(unchanged)} cells, the noise between two sessions of one model")
    print(f"\nspeed: FP32 p50 / optimized p50 at batch 1 (95% interval); measured slowdowns (interval below "
          f"{SLOWDOWN}) per pass: "
          + "; ".join(f"{p} {sum(slower(results[n][p]) for n in names)} of {len(names)}"
                      + (f" ({', '.join(n for n in names if slower(results[n][p]))})"
                         if any(slower(results[n][p]) for n in names) else "") for p in columns))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
