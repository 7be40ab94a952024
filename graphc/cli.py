"""The ``graphc`` command line: optimize, inspect, bench, eval, build, setup.

Every user error prints one line (``graphc: error: ...``) and exits 2; a bug in graphc
exits 1 (``GRAPHC_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import traceback

from graphc import __version__
from graphc.errors import GraphcError, first_line

PASS_SPEC_HELP = """\
pass spec (--passes): passes joined by ',' and run in order. Each pass is
  NAME                         the pass with default options
  NAME:VALUE                   sets the pass's main option (prune:0.5 == prune:ratio=0.5)
  NAME:KEY=VALUE[:KEY=VALUE]   sets named options (int8:calib=entropy:per_channel=true)
Booleans are true/false (also 1/0, yes/no). Unknown passes or options and bad values are
errors that list the valid ones.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _passes_help() -> str:
    from graphc.passes import PASSES
    from graphc.spec import describe_options

    lines = [PASS_SPEC_HELP, "passes:"]
    for name, cls in sorted(PASSES.items()):
        lines.append(f"  {name}: {cls.summary}")
        lines += [f"      {line}" for line in describe_options(cls.Options, cls.main_option)]
    return "\n".join(lines)


def _add_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", action="append", metavar="NAME=DxDx..",
                        help="concrete shape for a dynamic input (image=1x3x224x224) or dim (batch=8); "
                             "repeatable or comma-separated")


def _add_batch_axis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-axis", action="append", metavar="NAME=AXIS",
                        help="the axis of input NAME that concatenates samples (state=1), or NAME=none for an "
                             "input passed whole with every run (a constant per call); default: from the "
                             "model's symbolic dims (graphc.data); repeatable or comma-separated")


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="onnxruntime intra-op threads (default: onnxruntime's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="graphc", description="graphc: an ONNX graph-level compression compiler "
                           "(prune, quantize, distill on the ONNX graph).")
    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    opt = sub.add_parser("optimize", help="run passes on a model and write the result",
                         description="Run graph-rewrite passes on MODEL and write OUT atomically; the input "
                                     "is never modified. Prints a report table (size, params, MACs, per pass).",
                         epilog=_passes_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    opt.add_argument("model", type=pathlib.Path, metavar="MODEL", help="input .onnx model")
    opt.add_argument("--passes", required=True, metavar="SPEC", help="passes to run (see below)")
    opt.add_argument("-o", "--output", required=True, type=pathlib.Path, metavar="OUT", help="output .onnx path")
    opt.add_argument("--data", type=pathlib.Path, metavar="D",
                     help="calibration / sample inputs: .npz keyed by input name or a directory of "
                          "<input>.npy (default: synthetic inputs)")
    opt.add_argument("--train-data", type=pathlib.Path, metavar="T", help="training inputs (same formats)")
    opt.add_argument("--eval-data", type=pathlib.Path, metavar="E", help="evaluation inputs with labels")
    opt.add_argument("--metric", metavar="M", help="evaluation metric: top1, top5, cosine, agreement")
    opt.add_argument("--verify", action="store_true",
                     help="compare outputs with the original after every pass; stop when a pass exceeds "
                          "its declared tolerance")
    opt.add_argument("--report", type=pathlib.Path, metavar="R.json", help="also write the report as JSON")
    opt.add_argument("--bench", action="store_true",
                     help="also measure latency of the input and output models side by side (batch 1)")
    opt.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_shape(opt)
    _add_batch_axis(opt)
    _add_threads(opt)

    ins = sub.add_parser("inspect", help="inputs, outputs, opset, ops, params, size, MACs",
                         description="Describe MODEL: inputs/outputs with shapes and dtypes, opset, op histogram, "
                                     "parameter count, file size, MACs per op type and total (one batch at "
                                     "the resolved input shapes).")
    ins.add_argument("model", type=pathlib.Path, metavar="MODEL")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    for section in _inspect_sections():
        ins.add_argument(f"--{section.flag}", action="store_true", help=section.help)
    _add_shape(ins)
    _add_batch_axis(ins)

    ben = sub.add_parser("bench", help="latency p50/p90 and size of models side by side",
                         description="Measure onnxruntime latency (p50/p90 over warm runs, all models interleaved "
                                     "in one run) and size; ratios against the first model.")
    ben.add_argument("models", nargs="+", type=pathlib.Path, metavar="MODEL")
    ben.add_argument("--data", type=pathlib.Path, metavar="D", help="inputs (.npz or .npy dir); first --batch rows")
    ben.add_argument("--batch", type=int, default=1, help="batch size for dynamic first axes (default 1)")
    ben.add_argument("--runs", type=int, default=30, help="timed runs per model (default 30)")
    ben.add_argument("--warmup", type=int, default=5, help="warm-up runs per model (default 5)")
    ben.add_argument("--seconds", type=float, default=0.0, metavar="S",
                     help="more interleaved rounds until they have taken S seconds in all (at most 10000; "
                          "default 0: --runs only): narrows the 95%% interval of a fast model's ratio")
    ben.add_argument("--json", type=pathlib.Path, metavar="PATH", help="also write results as JSON")
    _add_shape(ben)
    _add_batch_axis(ben)
    _add_threads(ben)

    ev = sub.add_parser("eval", help="accuracy of a model on labelled or reference data",
                        description="Evaluate MODEL on --data with --metric. top1/top5 need integer 'labels'; "
                                    "cosine compares with float 'labels' or --reference outputs; agreement "
                                    "compares argmax with --reference.")
    ev.add_argument("model", type=pathlib.Path, metavar="MODEL")
    ev.add_argument("--data", required=True, type=pathlib.Path, metavar="D")
    ev.add_argument("--metric", required=True, choices=["top1", "top5", "cosine", "agreement"])
    ev.add_argument("--reference", type=pathlib.Path, metavar="REF", help="reference model for cosine/agreement")
    ev.add_argument("--batch", type=int, default=64, help="evaluation batch size (default 64)")
    _add_batch_axis(ev)
    _add_threads(ev)

    bld = sub.add_parser("build", help="an artifact directory an app loads without graphc (manifest, checksums)",
                         description="graphc build MODEL --target ort -o DIR: the model, its .ort form, graphc's kernel "
                                     "library when the model needs it, and manifest.json (see graphc.artifact). "
                                     "graphc build --check DIR re-verifies one.")
    bld.add_argument("model", nargs="?", help="the model to build (omit with --check)")
    bld.add_argument("--target", choices=("ort", "tensorrt"), default="ort",
                     help="ort: onnxruntime (the default); tensorrt: TensorRT's rules checked, its builder configuration "
                          "in the manifest (graphc.tensorrt_plan)")
    bld.add_argument("--sparse-weights", action="store_true", help="tensorrt: ask for 2:4 sparse weights (checked)")
    bld.add_argument("--workspace", type=int, default=1024, metavar="MB", help="tensorrt: builder workspace (MiB)")
    _add_shape(bld)
    bld.add_argument("-o", "--output", metavar="DIR", help="the artifact directory to write")
    bld.add_argument("--report", metavar="R.json", help="graphc optimize's report of the model: its passes go into the manifest")
    bld.add_argument("--force", action="store_true", help="replace an existing DIR")
    bld.add_argument("--check", metavar="DIR", help="verify an artifact: checksums, no stray files, the model runs")
    st = sub.add_parser("setup", help="prepare an optional environment (training: for the distill pass)",
                        description="Create graphc's isolated training environment for the distill pass: a venv "
                                    "at $GRAPHC_HOME/training-venv (default ~/.cache/graphc/training-venv) with "
                                    "pinned onnxruntime-training-cpu 1.19.2, onnx and numpy. Idempotent.")
    st.add_argument("what", choices=["training"], help="the environment to prepare")
    st.add_argument("--python", metavar="PY", help="interpreter for the venv (Python 3.8-3.11; default: this one)")
    st.add_argument("--force", action="store_true", help="rebuild even when the environment is ready")
    return parser


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value <= 0:
        raise GraphcError(f"{flag} must be a positive integer, got {value}")
    cores = os.cpu_count() or 1
    if flag == "--threads" and value is not None and value > cores:
        raise GraphcError(f"--threads {value}: this machine has {cores} cores; give at most {cores}")


def cmd_optimize(args) -> int:
    from graphc.data import parse_batch_axes, parse_shapes
    from graphc.pipeline import OptimizeRequest, optimize

    _positive(args.threads, "--threads")
    request = OptimizeRequest(
        model=args.model, passes=args.passes, output=args.output, data=args.data, train_data=args.train_data,
        eval_data=args.eval_data, metric=args.metric, verify=args.verify, report=args.report,
        shapes=parse_shapes(args.shape), batch_axes=parse_batch_axes(args.batch_axis), threads=args.threads, progress=not args.quiet and sys.stderr.isatty(),
        bench=args.bench)
    report = optimize(request)
    print(report.markdown())
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


def cmd_inspect(args) -> int:
    from graphc.data import check_shape_overrides, model_signature, parse_batch_axes, parse_shapes
    from graphc.describe import describe, render
    from graphc.model_io import load_model

    model = load_model(args.model)
    shapes = check_shape_overrides(model_signature(model, parse_batch_axes(args.batch_axis)), parse_shapes(args.shape))
    info = describe(model, args.model, shapes)
    sections = [s for s in _inspect_sections() if getattr(args, s.flag.replace("-", "_"))]
    for section in sections:
        info[section.key] = section.collect(model, shapes)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("\n".join([render(info), *(section.render(info[section.key]) for section in sections)]))
    return 0


def _inspect_sections():
    """The ``graphc inspect`` sections the passes declare, in pass order."""
    from graphc.passes import PASSES

    return [cls.inspect for cls in PASSES.values() if cls.inspect is not None]


def cmd_bench(args) -> int:
    from graphc.bench import bench, bench_table
    from graphc.data import parse_batch_axes, parse_shapes

    for flag in ("threads", "batch", "runs"):
        _positive(getattr(args, flag), f"--{flag}")
    if args.warmup < 0:
        raise GraphcError(f"--warmup must be >= 0, got {args.warmup}")
    if not (0.0 <= args.seconds <= 3600.0):  # also refuses nan
        raise GraphcError(f"--seconds must be in [0, 3600], got {args.seconds}")
    from graphc.model_io import check_output_paths

    check_output_paths({"--json": args.json}, {**{f"MODEL {m}": m for m in args.models}, "--data": args.data})
    results = bench(args.models, threads=args.threads, data=args.data, shapes=parse_shapes(args.shape),
                    batch=args.batch, warmup=args.warmup, runs=args.runs, batch_axes=parse_batch_axes(args.batch_axis),
                    min_seconds=args.seconds)
    print(bench_table(results))
    print(f"threads: {args.threads or 'default'}, batch {args.batch}, {results[0].runs} interleaved runs per model "
          f"after {args.warmup} warm-up; 95% interval: paired bootstrap over the rounds (one that reaches 1.00x "
          f"is no measured difference)")
    if args.json:
        from graphc.model_io import write_text_atomically

        write_text_atomically(args.json, json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    return 0


def cmd_eval(args) -> int:
    from graphc.data import load_dataset, model_signature, output_batch_axes, parse_batch_axes
    from graphc.metrics import evaluate
    from graphc.model_io import load_model
    from graphc.runtime import open_session, run_session

    _positive(args.threads, "--threads")
    _positive(args.batch, "--batch")
    model = load_model(args.model)
    dataset = load_dataset(args.data, model_signature(model, parse_batch_axes(args.batch_axis)))
    session = open_session(model, args.threads, what=str(args.model))
    reference = None
    if args.reference is not None:
        ref_session = open_session(load_model(args.reference), args.threads, what=str(args.reference))
        reference = lambda feeds: run_session(ref_session, feeds)  # noqa: E731
    axis = output_batch_axes(model).get(model.graph.output[0].name, 0)
    value = evaluate(lambda feeds: run_session(session, feeds), dataset, args.metric, reference, args.batch, axis)
    print(f"{args.metric}: {value:.4f} ({len(dataset)} samples, {args.model})")
    return 0


def cmd_build(args) -> int:
    from graphc import artifact

    if args.check is not None:
        if args.model is not None or args.output is not None:
            raise GraphcError("--check DIR verifies an artifact; give no MODEL and no -o with it")
        manifest = artifact.check(args.check)
        for warning in manifest["warnings"]:
            print(f"warning: {warning}")
        print(f"{args.check}: ok ({len(manifest['files'])} files, {manifest['precision']}, target {manifest['target']})")
        return 0
    if args.model is None or args.output is None:
        raise GraphcError("give MODEL and -o DIR (or --check DIR)")
    from graphc.model_io import check_output_paths

    check_output_paths({"-o": args.output}, {"MODEL": args.model, "--report": args.report})
    from graphc.data import parse_shapes

    if args.target != "tensorrt" and (args.sparse_weights or args.shape):
        raise GraphcError("--sparse-weights and --shape go with --target tensorrt")
    _positive(args.workspace, "--workspace")
    built = artifact.build(args.model, args.output, report=args.report, force=args.force, target=args.target,
                           shapes=parse_shapes(args.shape), sparse_weights=args.sparse_weights,
                           workspace_mb=args.workspace)
    manifest = built.manifest
    note = f"; {manifest['ort_note']}" if manifest["ort_note"] and args.target == "ort" else ""
    if manifest["tensorrt"] is not None and manifest["tensorrt"]["engine_note"]:
        note += f"; {manifest['tensorrt']['engine_note']}"
    print(f"wrote {built.directory}: {', '.join(manifest['files'])} and {artifact.MANIFEST} "
          f"({manifest['precision']}{note})")
    return 0


def cmd_setup(args) -> int:
    from graphc.training_env import setup

    setup(python=args.python, force=args.force)
    return 0


COMMANDS = {"optimize": cmd_optimize, "inspect": cmd_inspect, "bench": cmd_bench, "eval": cmd_eval,
            "build": cmd_build, "setup": cmd_setup}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except GraphcError as exc:
        print(f"graphc {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"graphc {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (graphc inspect M | head): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in graphc: one line, traceback on request
        if os.environ.get("GRAPHC_DEBUG"):
            traceback.print_exc()
        print(f"graphc {args.command}: internal error: {type(exc).__name__}: {first_line(exc)} "
              f"(set GRAPHC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
