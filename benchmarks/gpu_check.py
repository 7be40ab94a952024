"""The GPU check: graphc's GPU side on a machine with an NVIDIA GPU and nothing reachable outside
it, in one run that writes one file (the build issue's GPU check script; the kernels issue's GPU
benchmark).

On the GPU machine: ``bash benchmarks/gpu_check.sh OUT_FILE`` (it installs graphc and the one
wheel it carries, then runs this). Here, without a GPU, the same code runs on the CPU at toy
sizes, with Triton's interpreter (what ``tests/driver/test_gpu_check.py`` runs):
``TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check.txt``.

Sections of the file:

1. machine: the GPU, torch / Triton / onnxruntime versions, the CPU.
2. TensorRT: ``graphc build --target tensorrt`` of the bundled CNN after
   ``fold,int8:target=tensorrt``, with the engine where a TensorRT builder imports, else the
   reason there is none (the manifest's note).
3. kernels: graphc's Triton INT8 kernels (dense; block-sparse with 80% of the 64x64 weight tiles
   empty) beside ``torch._int_mm`` (dense INT8), torch's 2:4 semi-structured sparse matmul (INT8
   and FP16, 2:4 weights) and FP16 ``torch.mm``, at BERT-base shapes (M = 1, 32, 128; K x N =
   768 x 3072, 3072 x 768, 768 x 768): median ms (``triton.testing.do_bench`` on a GPU), dense-
   equivalent TOP/s, speed vs FP16, and whether each INT8 result equals the int64 product.
4. models: the bundled CNN and a random-init BERT (BERT-base, 128 tokens; ``--quick``: 2 layers,
   hidden 64, 16 tokens) as FP32 on onnxruntime's CPU (the reference), and on the device with
   graphc's torch executor (``graphc.torch_executor``): FP32, FP16, and graphc's ``fold,int8``
   model (static QDQ for the CNN, dynamic for BERT, MatMulInteger on the Triton kernel on a GPU):
   median latency at two batch sizes, speed vs FP16, and the max output difference against
   onnxruntime on the CPU (FP32 variants vs the FP32 model; the INT8 model vs onnxruntime running
   that same INT8 model, and vs FP32).

The file ends with every figure as JSON after a ``## json`` line. A section that fails says
so with its error and the script exits 1 after writing the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CNN = ROOT / "models" / "fashion_cnn.onnx"
CALIB = ROOT / "models" / "fashion_mnist_calib.npz"
TEST = ROOT / "models" / "fashion_mnist_test.npz"
FULL_SHAPES = [(m, k, n) for m in (1, 32, 128) for k, n in ((768, 3072), (3072, 768), (768, 768))]
QUICK_SHAPES = [(1, 64, 128), (17, 128, 64)]


# --- timing ---------------------------------------------------------------------------------------

def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, runs: int) -> float:
    """Median wall time of ``fn`` in ms (after two warm-up calls), the device synchronized."""
    for _ in range(2):
        fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def kernel_ms(fn, device, runs: int) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return median_ms(fn, device, runs)


# --- sections -------------------------------------------------------------------------------------

def machine(device) -> dict:
    import onnxruntime
    import torch
    import triton

    from graphc.cpu_features import cpu_features, cpu_name

    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "onnxruntime": onnxruntime.__version__, "device": str(device), "cpu": f"{cpu_name()} ({cpu_features().describe()})",
            "cpu_cores": os.cpu_count(), "triton_interpret": os.environ.get("TRITON_INTERPRET", "")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def int8_cnn(work: pathlib.Path, passes: str) -> pathlib.Path:
    from graphc.cli import main

    out = work / f"cnn.{passes.replace(',', '_').replace(':', '_').replace('=', '_')}.onnx"
    if not out.exists() and main(["optimize", str(CNN), "--passes", passes, "--data", str(CALIB), "-o", str(out),
                                  "--quiet"]) != 0:
        raise RuntimeError(f"graphc optimize --passes {passes} failed")
    return out


def tensorrt_section(work: pathlib.Path, device) -> dict:
    from graphc import tensorrt_engine
    from graphc.cli import main
    from graphc.runtime import open_session

    model = int8_cnn(work, "fold,int8:target=tensorrt")
    art = work / "cnn-tensorrt"
    code = main(["build", str(model), "--target", "tensorrt", "-o", str(art), "--shape", "image=32x1x28x28", "--force"])
    if code != 0:
        raise RuntimeError(f"graphc build --target tensorrt exited {code}")
    manifest = json.loads((art / "manifest.json").read_text())
    engine = manifest["tensorrt"]["engine"]
    result = {"engine": engine, "engine_bytes": (art / engine).stat().st_size if engine else None,
              "note": manifest["tensorrt"]["engine_note"], "builder": manifest["tensorrt"]["builder"]}
    if engine and device.type == "cuda":  # run it: outputs against onnxruntime's on the CPU
        images = np.load(TEST)["image"][:32]
        got = next(iter(tensorrt_engine.run_engine(tensorrt_engine.builder_module(), art / engine,
                                                   {"image": images}).values()))
        want = open_session(model).run(None, {"image": images})[0]
        result.update(max_diff_vs_onnxruntime=max_diff(got, want),
                      top1_agrees_with_onnxruntime=float(np.mean(got.argmax(1) == want.argmax(1))))
    return result


def tile_sparse(rng, k, n, block, share):
    weight = rng.integers(-128, 128, (k, n)).astype(np.int8)
    zero = rng.random((-(-k // block), -(-n // block))) < share
    weight[np.kron(zero, np.ones((block, block), bool))[:k, :n]] = 0
    return weight


def two_four(rng, k, n):
    """Random int8 [K, N] with two non-zeros in every 4 consecutive weights along K."""
    weight = rng.integers(-128, 128, (k, n)).astype(np.int8)
    weight[weight == 0] = 1
    keep = np.argsort(rng.random((k // 4, 4, n)), axis=1) < 2
    return (weight.reshape(k // 4, 4, n) * keep).reshape(k, n).astype(np.int8)


def describe(exc: BaseException) -> str:
    """An exception as one short line for the results file."""
    from graphc.errors import first_line

    return f"{type(exc).__name__}: {first_line(exc)[:160]}"


def kernel_section(device, shapes, runs: int, share: float) -> list[dict]:
    import torch

    from graphc.kernels.triton.kernels import block_sparse_int8_matmul, dense_int8_matmul, upload
    from graphc.kernels.triton.layout import pack_blocks

    rng = np.random.default_rng(0)
    rows, zp, block = [], 77, 64 if device.type == "cuda" else 16
    for m, k, n in shapes:
        a = torch.from_numpy(rng.integers(0, 256, (m, k)).astype(np.uint8)).to(device)
        a_signed = (a.to(torch.int32) - 128).to(torch.int8)
        dense, sparse, pair = tile_sparse(rng, k, n, block, 0.0), tile_sparse(rng, k, n, block, share), two_four(rng, k, n)
        weights = {name: torch.from_numpy(w).to(device) for name, w in (("dense", dense), ("sparse", sparse), ("pair", pair))}
        wide = lambda t: t.to(torch.float64)  # noqa: E731  (every product of 8-bit values is exact in float64)
        centred = wide(a.to(torch.int32) - zp)
        reference = {"dense": centred @ wide(weights["dense"]), "sparse": centred @ wide(weights["sparse"]),
                     "int_mm": wide(a_signed) @ wide(weights["dense"]), "pair": wide(a_signed) @ wide(weights["pair"])}
        a16 = torch.randn(m, k, device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
        w16 = torch.randn(k, n, device=device, dtype=a16.dtype)
        sums = weights["dense"].to(torch.int32).sum(0, dtype=torch.int32)
        packed = pack_blocks(sparse, block, block)
        uploaded = upload(packed, device)
        bm = 16 if m <= 16 else block
        variants = {
            "fp16 torch.mm" if device.type == "cuda" else "fp32 torch.mm (cpu)": (lambda: a16 @ w16, None),
            "graphc triton dense int8": (lambda: dense_int8_matmul(a, weights["dense"], zp, bm, block, block, sums), "dense"),
            f"graphc triton block-sparse int8 ({share:.0%} tiles empty)":
                (lambda: block_sparse_int8_matmul(a, packed, zp, bm, uploaded), "sparse"),
            "torch._int_mm int8": (lambda: torch._int_mm(a_signed, weights["dense"]), "int_mm"),
        }
        if device.type == "cuda":
            from torch.sparse import to_sparse_semi_structured

            pair_t = weights["pair"].t().contiguous()  # [N, K], 2:4 along K
            try:
                s8 = to_sparse_semi_structured(pair_t)
                f16 = to_sparse_semi_structured((pair_t != 0).to(torch.float16) * torch.randn_like(pair_t, dtype=torch.float16))
                variants["torch 2:4 semi-structured int8"] = (lambda: torch.mm(a_signed, s8.t()), "pair")
                variants["torch 2:4 semi-structured fp16"] = (lambda: torch.mm(a16, f16.t()), None)
            except Exception as exc:  # the sparse kernels' own limits: recorded, not fatal
                for key in ("torch 2:4 semi-structured int8", "torch 2:4 semi-structured fp16"):
                    variants[key] = (exc, None)
        baseline = None
        for name, (fn, check) in variants.items():
            row = {"m": m, "k": k, "n": n, "variant": name}
            rows.append(row)
            if isinstance(fn, Exception):
                row["error"] = describe(fn)
                continue
            try:
                out = fn()
                synchronize(device)
                row["ms"] = kernel_ms(fn, device, runs)
            except Exception as exc:
                row["error"] = describe(exc)
                continue
            row["tops"] = 2 * m * k * n / (row["ms"] * 1e-3) / 1e12
            if baseline is None:
                baseline = row["ms"]
            row["vs_fp16"] = baseline / row["ms"]
            if check is not None:
                row["exact"] = bool(torch.equal(wide(out), reference[check])) if out.dtype == torch.int32 else \
                    f"output {out.dtype} (not int32)"
    return rows


def bert_model(work: pathlib.Path, quick: bool):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from graphc.models import hf_configs

    sizes = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=256,
                 vocab_size=1000) if quick else {}
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(attn_implementation="eager", **sizes)).eval()
    path = work / ("bert-tiny.onnx" if quick else "bert-base.onnx")
    sequence, vocab = (16, 1000) if quick else (128, 30522)

    def feeds(rows):
        rng = np.random.default_rng(rows)
        return {"input_ids": rng.integers(0, vocab, (rows, sequence), dtype=np.int64),
                "attention_mask": np.ones((rows, sequence), np.int64),
                "token_type_ids": np.zeros((rows, sequence), np.int64)}
    if not path.exists():
        hf_configs.export_onnx(model, feeds(2), path, {n: {0: "batch", 1: "sequence"} for n in hf_configs.BERT_INPUTS})
    return path, feeds


def max_diff(a, b) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def model_section(device, work: pathlib.Path, quick: bool, runs: int) -> list[dict]:
    import onnx

    from graphc.cli import main

    images = np.load(TEST)["image"]
    cnn_name = onnx.load(str(CNN)).graph.input[0].name
    bert, bert_feeds = bert_model(work, quick)
    bert_int8 = work / (bert.stem + ".fold_int8.onnx")
    if not bert_int8.exists() and main(["optimize", str(bert), "--passes", "fold,int8", "-o", str(bert_int8), "--quiet"]) != 0:
        raise RuntimeError("graphc optimize --passes fold,int8 failed on the BERT")
    models = [("fashion CNN", CNN, int8_cnn(work, "fold,int8"), lambda rows: {cnn_name: images[:rows]}, (1, 2) if quick else (1, 32)),
              ("BERT-tiny" if quick else "BERT-base", bert, bert_int8, bert_feeds, (1, 2) if quick else (1, 8))]
    rows = []
    for name, fp32, int8, make_feeds, batches in models:
        try:
            rows += model_rows(device, name, fp32, int8, make_feeds, batches, runs)
        except Exception as exc:  # one model's failure is recorded; the other still runs
            traceback.print_exc()
            rows.append({"model": name, "failed": describe(exc)})
    return rows


def model_rows(device, name, fp32, int8, make_feeds, batches, runs: int) -> list[dict]:
    import onnxruntime as ort
    import torch

    from graphc.torch_executor import TorchExecutor

    rows = []
    sessions = {}
    for label, path, optimize in (("fp32", fp32, True), ("int8", int8, True), ("int8_plain", int8, False)):
        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    executors = {"fp32": TorchExecutor(fp32, device=device),
                 "fp16": TorchExecutor(fp32, device=device, half=True),
                 "graphc int8": TorchExecutor(int8, device=device)}
    for rows_in_batch in batches:
        feeds = make_feeds(rows_in_batch)
        reference = {label: s.run(None, feeds)[0] for label, s in sessions.items()}
        cpu_ms = median_ms(lambda: sessions["fp32"].run(None, feeds), torch.device("cpu"), max(2, runs // 4))
        row = {"model": name, "batch": rows_in_batch, "onnxruntime_cpu_fp32_ms": cpu_ms, "variants": {}}
        fp16_ms = None
        for label, executor in executors.items():
            device_feeds = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
            with torch.inference_mode():
                out = executor.run(device_feeds)[0].float().cpu().numpy()
                ms = median_ms(lambda: executor.run(device_feeds), device, runs)
            entry = {"ms": ms, "max_diff_vs_fp32": max_diff(out, reference["fp32"])}
            if label == "graphc int8":
                entry["max_diff_vs_onnxruntime_int8"] = max_diff(out, reference["int8"])
                entry["max_diff_vs_onnxruntime_int8_unfused"] = max_diff(out, reference["int8_plain"])
                entry["top1_agrees_with_fp32"] = float(np.mean(out.argmax(-1) == reference["fp32"].argmax(-1)))
            if label == "fp16":
                fp16_ms = ms
            row["variants"][label] = entry
        for entry in row["variants"].values():
            entry["vs_fp16"] = fp16_ms / entry["ms"] if fp16_ms else None
        row["output_scale"] = float(np.max(np.abs(reference["fp32"])))
        rows.append(row)
    return rows


# --- the file ----------------------------------------------------------------------------------------

def render(results: dict) -> str:
    lines = ["# graphc GPU check", "", "## machine", ""]
    lines += [f"- {k}: {v}" for k, v in results.get("machine", {}).items()]
    for section in ("tensorrt", "kernels", "models"):
        lines += ["", f"## {section}", ""]
        value = results.get(section)
        if isinstance(value, dict) and "failed" in value:
            lines.append(f"FAILED: {value['failed']}")
            continue
        if section == "tensorrt":
            lines.append(f"- engine: {value['engine']} ({value['engine_bytes']} bytes)" if value["engine"] else
                         f"- no engine: {value['note']}")
            if "max_diff_vs_onnxruntime" in value:
                lines.append(f"- run on the GPU: max output difference vs onnxruntime {value['max_diff_vs_onnxruntime']:.3g}, "
                             f"top-1 agrees on {value['top1_agrees_with_onnxruntime']:.0%} of 32 images")
            lines.append(f"- builder configuration: {json.dumps(value['builder'])}")
        elif section == "kernels":
            lines += ["| M | K | N | variant | ms | TOP/s | vs fp16 | exact vs int64 |", "|---|---|---|---|---|---|---|---|"]
            for r in value:
                if "error" in r:
                    lines.append(f"| {r['m']} | {r['k']} | {r['n']} | {r['variant']} | failed: {r['error']} | | | |")
                else:
                    lines.append(f"| {r['m']} | {r['k']} | {r['n']} | {r['variant']} | {r['ms']:.4f} | {r['tops']:.2f} | "
                                 f"{r['vs_fp16']:.2f}x | {r.get('exact', '')} |")
        else:
            lines += ["| model | batch | variant | ms | vs fp16 | max diff vs onnxruntime CPU (FP32) | vs onnxruntime INT8 (fused / unfused) |",
                      "|---|---|---|---|---|---|---|"]
            for r in value:
                if "failed" in r:
                    lines.append(f"| {r['model']} | | failed: {r['failed']} | | | | |")
                    continue
                lines.append(f"| {r['model']} | {r['batch']} | onnxruntime CPU FP32 | {r['onnxruntime_cpu_fp32_ms']:.3f} | | "
                             f"(outputs up to {r['output_scale']:.3g}) | |")
                for label, e in r["variants"].items():
                    int8 = (f"{e['max_diff_vs_onnxruntime_int8']:.3g} / {e['max_diff_vs_onnxruntime_int8_unfused']:.3g}; "
                            f"top-1 = FP32's on {e['top1_agrees_with_fp32']:.0%}") if "max_diff_vs_onnxruntime_int8" in e else ""
                    speed = f"{e['vs_fp16']:.2f}x" if e["vs_fp16"] else ""
                    lines.append(f"| {r['model']} | {r['batch']} | torch executor {label} | {e['ms']:.3f} | {speed} | "
                                 f"{e['max_diff_vs_fp32']:.3g} | {int8} |")
    lines += ["", f"total seconds: {results['seconds']:.1f}", "", "## json", "", json.dumps(results, indent=1, default=str)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, required=True, help="the one file the results go to")
    ap.add_argument("--device", default=None, help="cuda (default where there is one) or cpu")
    ap.add_argument("--quick", action="store_true", help="toy sizes (the CPU test)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per median (default 20 on a GPU, 2 on the CPU)")
    ap.add_argument("--work", type=pathlib.Path, default=None, help="folder for the models it builds (default: a temporary one)")
    args = ap.parse_args(argv)

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runs = args.runs or (20 if device.type == "cuda" else 2)
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="graphc-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    start, failed = time.perf_counter(), False
    results = {"machine": machine(device)}
    print(f"graphc GPU check on {results['machine'].get('gpu', device)}", flush=True)
    sections = [("tensorrt", lambda: tensorrt_section(work, device)),
                ("kernels", lambda: kernel_section(device, QUICK_SHAPES if args.quick else FULL_SHAPES, runs, 0.8)),
                ("models", lambda: model_section(device, work, args.quick, runs))]
    for name, run in sections:
        t0 = time.perf_counter()
        try:
            results[name] = run()
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"failed": describe(exc)}
            failed = True
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    if isinstance(results.get("models"), list):
        failed |= any("failed" in row for row in results["models"])
    results["seconds"] = time.perf_counter() - start
    text = render(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
