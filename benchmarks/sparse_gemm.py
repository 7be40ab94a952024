"""Benchmark: graphc's sparse INT8 GEMM paths against onnxruntime's dense GEMMs (issue 17).

For each shape (M rows of activations; K x N weight, BERT-base's 768 x 3072, 3072 x 768 and
768 x 768), sparsity, pattern and thread count, one interleaved run (non-spinning sessions,
each variant once per round, ``--rounds`` rounds, the median per variant) of:

- ``ort-fp32``: onnxruntime ``MatMul`` on the float weight;
- ``ort-int8``: ``MatMulInteger`` (uint8 activations x int8 weight -> int32);
- ``ort-dqmm``: ``DynamicQuantizeMatMul`` (float in, float out, the activation quantized inside);
- ``graphc-<path>``: ``ai.graphc.SparseMatMulInteger`` (same contract as ``MatMulInteger``) with
  each kernel path this machine has (``GRAPHC_ISA``);
- ``graphc-dqmm``: ``ai.graphc.SparseDynamicQuantizeMatMul`` (same contract as
  ``DynamicQuantizeMatMul``), default path.

Weights: ``--weight-bits`` (default: what graphc ``int8`` writes on this CPU, 7 bits where u8 x s8
products saturate, which is also what lets the AVX2 path use vpmaddubsw). Patterns: ``unstructured`` (random zeros), ``1x4`` (whole groups of 4 along K, what the
vector paths skip), ``16x64`` (whole 16-output x 64-reduction blocks, ``sparsify:pattern=block:
block=16x64``: the weight tiles the AMX path skips) and ``2:4``. GOP/s are dense-equivalent (2 M K N per run). The ``vs int8``
column is ``ort-int8``'s time over the best graphc path's (above 1: graphc faster); ``vs dqmm``
compares the float-in/float-out forms. The weights are the same in every variant of a row
(onnxruntime's time can depend on them: zeros cost less power on some CPUs).

``--layers L`` puts L copies of each variant's node in its session (each with its own weight, drawn
with the same pattern and sparsity, all reading the same input, each its own output): the per-run cost of Python and
onnxruntime (the ``floor``) is paid once for L GEMMs and the weights stream from memory layer
after layer, as they do in a model; times are per layer. Without it (L = 1) each run is one
GEMM, and at M = 1 the floor is most of a 768 x 768 run.

Usage: ``python benchmarks/sparse_gemm.py [--m 1 32 128] [--sparsity 0 0.5 0.7 0.8 0.9]
[--patterns unstructured 1x4 2:4] [--threads 1 2] [--rounds 20] [--layers 1] [--json FILE]``.
Prints the CPU model, its ISA paths and one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphc import kernels  # noqa: E402
from graphc.cpu_features import cpu_name, default_weight_bits  # noqa: E402
from graphc.kernels.layout import pack  # noqa: E402
from graphc.runtime import open_session  # noqa: E402

SHAPES = [(768, 3072), (3072, 768), (768, 768)]
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1), helper.make_opsetid(kernels.DOMAIN, 1)]


def sparse_weight(rng: np.random.Generator, k: int, n: int, sparsity: float, pattern: str, bits: int = 8) -> np.ndarray:
    top = 2 ** (bits - 1) - 1
    weight = rng.integers(-top, top + 1, (k, n)).astype(np.int8)
    if pattern == "unstructured":
        weight[rng.random((k, n)) < sparsity] = 0
    elif pattern == "1x4":
        weight[np.repeat(rng.random((k // 4, n)) < sparsity, 4, axis=0)] = 0
    elif pattern == "16x64":  # whole 16-output x 64-reduction blocks: the AMX tiles graphc's AMX path skips
        weight[np.kron(rng.random((k // 64, n // 16)) < sparsity, np.ones((64, 16), bool))] = 0
    elif pattern == "8x4":  # whole 8-output x 4-reduction blocks: one index per 32 weights on the AVX2 panel kernel
        weight[np.kron(rng.random((k // 4, n // 8)) < sparsity, np.ones((4, 8), bool))] = 0
    elif pattern == "2:4":  # 50% whatever --sparsity says
        order = np.argsort(rng.random((k // 4, 4, n)), axis=1)[:, :2]
        grouped = weight.reshape(k // 4, 4, n)
        np.put_along_axis(grouped, order, 0, axis=1)
    return weight


def model(node, inputs, layer_initializers):
    """A graph of one copy of ``node`` per entry of ``layer_initializers`` (that layer's weights, each
    renamed ``<name>_<i>``: distinct weights that stream from memory one layer after another, as in a
    model), each with its own output ``Y<i>``; all read the same inputs. One run pays the per-run
    cost once. (The layers' weights must differ: with byte-identical copies onnxruntime's dense
    INT8 GEMM at M = 1 ran 3x faster per layer than with distinct ones.)"""
    out = {"MatMulInteger": TensorProto.INT32, "SparseMatMulInteger": TensorProto.INT32,
           "Identity": TensorProto.UINT8}.get(node.op_type, TensorProto.FLOAT)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    nodes, outputs, initializers = [], [], []
    for i, own in enumerate(layer_initializers):
        names = {tensor.name for tensor in own}
        nodes.append(helper.make_node(node.op_type, [f"{name}_{i}" if name in names else name for name in node.input],
                                      [f"Y{i}"], domain=node.domain, **attributes))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", out, None))
        for tensor in own:
            renamed = onnx.TensorProto()
            renamed.CopyFrom(tensor)
            renamed.name = f"{tensor.name}_{i}"
            initializers.append(renamed)
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=OPSETS)


def variants(weights: list[np.ndarray], scale: np.ndarray) -> dict:
    """Every variant's model, one layer per weight in ``weights`` (all K x N)."""
    k, n = weights[0].shape
    x_float = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])
    x_int = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k]),
             helper.make_tensor_value_info("zp", TensorProto.UINT8, [])]
    w_scale = numpy_helper.from_array(scale, "b_scale")
    compressed = []
    for weight in weights:
        columns = pack(weight)
        compressed.append([numpy_helper.from_array(columns.col_ptr, "col_ptr"),
                           numpy_helper.from_array(columns.block_k, "block_k"),
                           numpy_helper.from_array(columns.values, "values")])
    int8 = [[numpy_helper.from_array(weight, "W")] for weight in weights]
    return {
        "ort-fp32": model(helper.make_node("MatMul", ["X", "W"], ["Y"]), [x_float],
                          [[numpy_helper.from_array(weight.astype(np.float32) * scale, "W")] for weight in weights]),
        # the per-run floor: a session that only copies A (Python's and onnxruntime's cost of a run)
        "floor": model(helper.make_node("Identity", ["A"], ["Y"]), x_int[:1], [[] for _ in weights]),
        "ort-int8": model(helper.make_node("MatMulInteger", ["A", "W", "zp"], ["Y"]), x_int, int8),
        "ort-dqmm": model(helper.make_node("DynamicQuantizeMatMul", ["X", "W", "b_scale"], ["Y"], domain="com.microsoft"),
                          [x_float], [own + [w_scale] for own in int8]),
        "graphc": model(helper.make_node("SparseMatMulInteger", ["A", "zp", "col_ptr", "block_k", "values"], ["Y"],
                                         domain=kernels.DOMAIN, K=k), x_int, compressed),
        "graphc-dqmm": model(helper.make_node("SparseDynamicQuantizeMatMul", ["X", "col_ptr", "block_k", "values",
                                              "b_scale"], ["Y"], domain=kernels.DOMAIN, K=k),
                             [x_float], [own + [w_scale] for own in compressed]),
    }


def sessions(weights, scale, threads: int, isas: list[str], against: pathlib.Path | None = None) -> dict:
    """Every variant's session, graphc's once per path; with ``against``, one more: graphc's op on
    its default path from that library (``graphc-against``), for an A/B of two builds in one run."""
    found = {}
    for name, proto in variants(weights, scale).items():
        for isa in (isas if name == "graphc" else [None]):
            if isa:
                os.environ["GRAPHC_ISA"] = isa  # read when the session creates the kernel
            found[f"graphc-{isa}" if isa else name] = open_session(proto, threads=threads, spinning=False)
            os.environ.pop("GRAPHC_ISA", None)
        if name == "graphc" and against is not None:
            given = os.environ.get("GRAPHC_KERNELS_LIBRARY")
            os.environ["GRAPHC_KERNELS_LIBRARY"] = str(against)  # read when the session registers the ops
            try:
                found["graphc-against"] = open_session(proto, threads=threads, spinning=False)
            finally:
                if given is None:
                    os.environ.pop("GRAPHC_KERNELS_LIBRARY")
                else:
                    os.environ["GRAPHC_KERNELS_LIBRARY"] = given
    return found


def net_ratio(reference: float, candidate: float, floor: float) -> float:
    """reference / candidate with ``floor`` (the per-run cost both pay) taken from both; the plain
    ratio where a time is within the floor's noise (not above 1.2 x floor)."""
    if min(reference, candidate) <= 1.2 * floor:
        return reference / candidate
    return (reference - floor) / (candidate - floor)


def time_interleaved(runs: dict, feeds: dict, rounds: int) -> dict[str, float]:
    times = {name: [] for name in runs}
    for name, session in runs.items():  # warm-up
        session.run(None, feeds[name])
    for r in range(rounds):
        names = list(runs)
        names = names[r % len(names):] + names[:r % len(names)]  # the first rotates every round
        for name in names:
            start = time.perf_counter()
            runs[name].run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--patterns", nargs="+", default=["unstructured", "1x4", "16x64", "2:4"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in SHAPES],
                        help="K x N weights (default BERT-base's; all-MiniLM-L6-v2's are 384x1536 1536x384 384x384)")
    parser.add_argument("--layers", type=int, default=1,
                        help="GEMM nodes per session, each with its own weight (the same pattern and sparsity, its own "
                             "draw): a stack of layers, the per-run cost paid once per run, the weights streamed one "
                             "layer after another; times and GOP/s are per layer")
    parser.add_argument("--against", type=pathlib.Path, metavar="LIBRARY",
                        help="another build of graphc's kernel library (e.g. one from before a change): its op on the "
                             "default path runs interleaved with the rest (column graphc-against), and 'vs against' "
                             "is its time over this library's default path")
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--weight-bits", type=int, choices=(7, 8), default=default_weight_bits(),
                        help="weight range: what graphc int8 writes on this CPU (7 where u8 x s8 saturates)")
    args = parser.parse_args(argv)
    isas = kernels.supported_isas()
    print(f"CPU: {cpu_name()}; graphc kernel paths: {', '.join(isas)} (default {kernels.default_isa()}); "
          f"{args.weight_bits}-bit weights; {args.rounds} interleaved rounds, median, non-spinning sessions"
          + (f"; {args.layers} layers per session, times per layer" if args.layers > 1 else "") + "\n")
    if args.against is not None and not args.against.is_file():
        parser.error(f"--against {args.against}: not a file")
    graphc_names = [f"graphc-{isa}" for isa in isas]
    against = ["graphc-against"] if args.against else []
    header = ["threads", "M", "K x N", "pattern", "sparsity", "ort-fp32", "ort-int8", "ort-dqmm", *graphc_names,
              "graphc-dqmm", *against, "vs int8", "vs dqmm", *(["vs against"] if against else []), "floor us",
              "vs int8 net"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rng = np.random.default_rng(0)
    records = []
    for threads in args.threads:
        for k, n in (tuple(int(v) for v in shape.split("x")) for shape in args.shapes):
            for pattern in args.patterns:
                for sparsity in ([0.5] if pattern == "2:4" else args.sparsity):
                    weights = [sparse_weight(rng, k, n, sparsity, pattern, args.weight_bits)
                               for _ in range(args.layers)]
                    scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
                    runs = sessions(weights, scale, threads, isas, args.against)
                    for m in args.m:
                        x = rng.normal(size=(m, k)).astype(np.float32)
                        a = {"A": rng.integers(0, 256, (m, k)).astype(np.uint8), "zp": np.array(128, np.uint8)}
                        feeds = {name: ({"X": x} if name in ("ort-fp32", "ort-dqmm", "graphc-dqmm") else
                                        {"A": a["A"]} if name == "floor" else a) for name in runs}
                        seconds = {name: t / args.layers for name, t in time_interleaved(runs, feeds, args.rounds).items()}
                        gops = {name: 2 * m * k * n / t / 1e9 for name, t in seconds.items()}
                        best = min(seconds[name] for name in graphc_names)
                        record = {"threads": threads, "m": m, "k": k, "n": n, "pattern": pattern,
                                  "sparsity": round(float(np.mean([(weight == 0).mean() for weight in weights])), 3), "seconds": seconds,
                                  "vs_int8": seconds["ort-int8"] / best,
                                  "vs_dqmm": seconds["ort-dqmm"] / seconds["graphc-dqmm"],
                                  "vs_int8_net": net_ratio(seconds["ort-int8"], best, seconds["floor"])}
                        if against:
                            record["vs_against"] = seconds["graphc-against"] / seconds[f"graphc-{kernels.default_isa()}"]
                        records.append(record)
                        cells = [str(threads), str(m), f"{k} x {n}", pattern, f"{record['sparsity']:.2f}"]
                        cells += [f"{gops[name]:.0f}" for name in ["ort-fp32", "ort-int8", "ort-dqmm", *graphc_names,
                                                                    "graphc-dqmm", *against]]
                        cells += [f"{record['vs_int8']:.2f}x", f"{record['vs_dqmm']:.2f}x"]
                        cells += [f"{record['vs_against']:.2f}x"] if against else []
                        cells += [f"{seconds['floor'] * 1e6:.1f}", f"{record['vs_int8_net']:.2f}x"]
                        print("| " + " | ".join(cells) + " |", flush=True)
    print("\nGOP/s dense-equivalent (2 M K N / median time); vs: onnxruntime's time / graphc's (above 1: graphc faster);"
          "\nfloor: the median time of a run of a session that only copies A (the per-run cost of Python and"
          "\nonnxruntime, which no kernel removes); vs int8 net: the same ratio with the floor taken from both times"
          + ("\nwith --layers L: each session runs L copies of its node (its own weight draw, its own output) per run; every time"
             "\nabove is the run's median over L, the floor included (a run of L Identity nodes, over L)"
             if args.layers > 1 else "")
          + (f"\ngraphc-against: graphc's op on the default path from {args.against}; vs against: its time over this"
             f"\nlibrary's default path (above 1: this library faster)" if against else ""))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
