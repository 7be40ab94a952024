"""A seeded fuzz corpus of bad models, data, specs and output paths (issue 14, build item 5),
each run through every verb in its own subprocess under a memory cap and a timeout.

The promise checked on every run: exit 0 or 2 (never 1, never a signal, never the cap); on
exit 2 exactly one line on stderr and no traceback; every input file byte-identical after the
run; on failure nothing new in the output directory. The corpus is built here from the
bundled CNN and small graphs; ``FAST`` cases run in the fast loop, the rest are ``slow``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import resource
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from tests import CNN, MODELS

MEMORY_CAP = 3 * 2**30  # address space of each run
TIMEOUT_S = 180
SEED = 14


@dataclass
class Case:
    name: str
    argv: list[str]
    inputs: list[pathlib.Path] = field(default_factory=list)
    out_dir: pathlib.Path | None = None


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _digest(path: pathlib.Path) -> str:
    if path.is_dir():
        return ",".join(f"{p.name}:{_digest(p)}" for p in sorted(path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def run_case(case: Case) -> str | None:
    """None when the run kept the promise, else what broke it."""
    before = {p: _digest(p) for p in case.inputs}
    listing = sorted(os.listdir(case.out_dir)) if case.out_dir else []
    try:
        run = subprocess.run([sys.executable, "-m", "graphc", *case.argv], capture_output=True, text=True,
                             timeout=TIMEOUT_S, preexec_fn=_cap, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{case.name}: no answer within {TIMEOUT_S} s"
    lines = run.stderr.strip().splitlines()
    if run.returncode not in (0, 2):
        return f"{case.name}: exit {run.returncode}: {run.stderr.strip()[-400:]}"
    if run.returncode == 2 and (len(lines) != 1 or "Traceback" in run.stderr):
        return f"{case.name}: exit 2 with {len(lines)} lines: {run.stderr.strip()[-400:]}"
    changed = [str(p) for p in case.inputs if _digest(p) != before[p]]
    if changed:
        return f"{case.name}: changed its inputs {changed}"
    if run.returncode == 2 and case.out_dir and sorted(os.listdir(case.out_dir)) != listing:
        return f"{case.name}: left {sorted(set(os.listdir(case.out_dir)) - set(listing))} behind on failure"
    return None


# ---------------------------------------------------------------- the corpus ----------

def _tiny(inputs=None, nodes=None, outputs=None, initializers=(), opset=17) -> onnx.ModelProto:
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    graph = oh.make_graph(nodes if nodes is not None else [oh.make_node("Relu", ["x"], ["y"])], "g",
                          inputs if inputs is not None else [x], outputs if outputs is not None else [y],
                          list(initializers))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _bad_models(directory: pathlib.Path, rng: random.Random) -> dict[str, pathlib.Path]:
    """name -> a model file that is damaged or hostile."""
    cnn = CNN.read_bytes()
    models: dict[str, bytes | onnx.ModelProto] = {}
    for i in range(4):
        models[f"truncated_{i}"] = cnn[:rng.randrange(1, len(cnn))]
    for i in range(6):
        flipped = bytearray(cnn)
        for _ in range(rng.choice([1, 4, 32])):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        models[f"bitflip_{i}"] = bytes(flipped)
    models["empty"] = b""
    models["text"] = b"not a model\n" * 10
    models["cyclic"] = _tiny(nodes=[oh.make_node("Add", ["x", "b"], ["a"]), oh.make_node("Relu", ["a"], ["b"]),
                                    oh.make_node("Identity", ["a"], ["y"])])
    models["undefined_input"] = _tiny(nodes=[oh.make_node("Add", ["x", "ghost"], ["y"])])
    models["no_outputs"] = _tiny(outputs=[])
    models["huge_declared_dims"] = _tiny(
        inputs=[oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2**40, 2**20])],
        outputs=[oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2**40, 2**20])])
    big = onnx.TensorProto(name="w", dims=[2**20, 2**20], data_type=onnx.TensorProto.FLOAT)  # no values
    models["initializer_without_data"] = _tiny(nodes=[oh.make_node("MatMul", ["x", "w"], ["y"])], initializers=[big])
    nodes = [oh.make_node("Constant", [], ["c0"], value=oh.make_tensor("v", onnx.TensorProto.INT64, [1], [1]))]
    nodes += [oh.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0) for i in range(40)]
    nodes += [oh.make_node("Size", ["c40"], ["s"]), oh.make_node("Cast", ["s"], ["f"], to=onnx.TensorProto.FLOAT),
              oh.make_node("Add", ["x", "f"], ["y"])]
    models["concat_doubling"] = _tiny(nodes=nodes)
    models["opset_from_the_future"] = _tiny(opset=99)
    models["unknown_op"] = _tiny(nodes=[oh.make_node("NoSuchOp", ["x"], ["y"])])
    models["sequence_output"] = _tiny(nodes=[oh.make_node("SplitToSequence", ["x"], ["y"])],
                                      outputs=[oh.make_tensor_sequence_value_info("y", onnx.TensorProto.FLOAT, None)])
    for key, location in (("escape", "../../etc/passwd"), ("absolute", "/etc/passwd"), ("nul", "w\0.bin"),
                          ("long_name", "w" * 400), ("missing", "nowhere.bin")):
        weight = onnx.TensorProto(name="w", dims=[4], data_type=onnx.TensorProto.FLOAT,
                                  data_location=onnx.TensorProto.EXTERNAL)
        weight.external_data.add(key="location", value=location)
        models[f"external_{key}"] = _tiny(nodes=[oh.make_node("Add", ["x", "w"], ["y"])], initializers=[weight])
    paths = {}
    for name, model in models.items():
        path = directory / f"{name}.onnx"
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        paths[name] = path
    return paths


def _bad_data(directory: pathlib.Path, rng: random.Random) -> dict[str, pathlib.Path]:
    with np.load(MODELS / "fashion_mnist_calib.npz") as npz:
        image, labels = npz["image"][:32], npz["labels"][:32]
    files = {}
    np.savez(directory / "pickled.npz", image=np.array([{"a": 1}] * 4, dtype=object))
    files["pickled"] = directory / "pickled.npz"
    header = __import__("io").BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": (2**44, 1, 28, 28)})
    with zipfile.ZipFile(directory / "huge_header.npz", "w") as archive:
        archive.writestr("image.npy", header.getvalue() + b"\0" * 100)
    files["huge_header"] = directory / "huge_header.npz"
    np.savez(directory / "good.npz", image=image, labels=labels)
    good = (directory / "good.npz").read_bytes()
    (directory / "truncated.npz").write_bytes(good[:rng.randrange(100, len(good))])
    files["truncated"] = directory / "truncated.npz"
    np.savez(directory / "wrong_dtype.npz", image=image.astype(np.float64), labels=labels)
    files["wrong_dtype"] = directory / "wrong_dtype.npz"
    np.savez(directory / "wrong_name.npz", picture=image)
    files["wrong_name"] = directory / "wrong_name.npz"
    np.savez(directory / "labels_2d.npz", image=image, labels=labels.reshape(-1, 1).repeat(2, 1))
    files["labels_2d"] = directory / "labels_2d.npz"
    np.savez(directory / "labels_short.npz", image=image, labels=labels[:5])
    files["labels_short"] = directory / "labels_short.npz"
    with zipfile.ZipFile(directory / "traversal.npz", "w") as archive:
        archive.writestr("../image.npy", (directory / "good.npz").read_bytes()[:10])
    files["traversal"] = directory / "traversal.npz"
    np.savez(directory / "empty_rows.npz", image=image[:0], labels=labels[:0])
    files["empty_rows"] = directory / "empty_rows.npz"
    return files


_SPEC_ALPHABET = "fold,prune:int8=ratio0.5:x;by=activation-1e999,,::"


def _bad_specs(rng: random.Random) -> list[str]:
    specs = ["", ",", "fold,,fold", "prune:ratio=2", "prune:ratio=-1", "prune:ratio=nan", "prune:ratio=1e400",
             "int8:calib=nope", "int8:samples=0", "int8:samples=99999999999", "nosuchpass", "prune:nosuch=1",
             "distill", "int8,distill", "fold:1", "prune:0.3:0.4"]
    specs += ["".join(rng.choice(_SPEC_ALPHABET) for _ in range(rng.randrange(1, 30))) for _ in range(8)]
    return specs


def corpus(directory: pathlib.Path) -> list[Case]:
    rng = random.Random(SEED)
    out = directory / "out"
    out.mkdir()
    models = _bad_models(directory, rng)
    data = _bad_data(directory, rng)
    cnn = directory / "cnn.onnx"
    cnn.write_bytes(CNN.read_bytes())
    good = directory / "good.npz"
    cases = []
    for name, model in models.items():
        inputs = [model]
        cases += [Case(f"optimize-fold/{name}", ["optimize", model, "--passes", "fold", "-o", out / "o.onnx"], inputs, out),
                  Case(f"optimize-fold,int8/{name}", ["optimize", model, "--passes", "fold,int8", "-o", out / "o.onnx"],
                       inputs, out),
                  Case(f"optimize-prune/{name}", ["optimize", model, "--passes", "prune:0.3", "-o", out / "o.onnx"],
                       inputs, out),
                  Case(f"inspect/{name}", ["inspect", model], inputs),
                  Case(f"bench/{name}", ["bench", model, "--runs", "1", "--warmup", "0", "--json", out / "b.json"],
                       inputs, out),
                  Case(f"eval/{name}", ["eval", model, "--data", good, "--metric", "top1"], [model, good])]
    for name, path in data.items():
        inputs = [cnn, path]
        cases += [Case(f"calib-data/{name}", ["optimize", cnn, "--passes", "int8", "--data", path, "-o", out / "o.onnx"],
                       inputs, out),
                  Case(f"eval-data/{name}", ["eval", cnn, "--data", path, "--metric", "top1"], inputs),
                  Case(f"bench-data/{name}", ["bench", cnn, "--data", path, "--runs", "1", "--warmup", "0"], inputs)]
    for i, spec in enumerate(_bad_specs(rng)):
        cases.append(Case(f"spec/{i}:{spec!r}", ["optimize", cnn, "--passes", spec, "-o", out / "o.onnx"], [cnn], out))
    link = out / "link.onnx"
    link.symlink_to(cnn)
    cases += [
        Case("output/onto-model", ["optimize", cnn, "--passes", "fold", "-o", cnn], [cnn], out),
        Case("output/symlink-to-model", ["optimize", cnn, "--passes", "fold", "-o", link], [cnn], out),
        Case("output/report-onto-data", ["optimize", cnn, "--passes", "fold,int8", "--data", good, "-o", out / "o.onnx",
                                         "--report", good], [cnn, good], out),
        Case("output/report-onto-output", ["optimize", cnn, "--passes", "fold", "-o", out / "o.onnx", "--report",
                                           out / "o.onnx"], [cnn], out),
        Case("output/bench-json-onto-model", ["bench", cnn, "--runs", "1", "--json", cnn], [cnn], out),
        Case("output/bench-json-symlink", ["bench", cnn, "--runs", "1", "--json", link], [cnn], out),
        Case("output/into-a-file", ["optimize", cnn, "--passes", "fold", "-o", cnn / "o.onnx"], [cnn], out),
        Case("flags/huge-batch", ["bench", cnn, "--batch", "100000000"], [cnn]),
        Case("flags/huge-shape", ["optimize", cnn, "--passes", "fold", "--shape", "batch=100000000", "-o",
                                  out / "o.onnx"], [cnn], out),
        Case("flags/threads", ["bench", cnn, "--threads", "100000"], [cnn]),
        Case("flags/bad-shape", ["optimize", cnn, "--passes", "fold", "--shape", "image=0x0", "-o", out / "o.onnx"],
             [cnn], out),
    ]
    for i, case in enumerate(cases):  # each case its own output directory: cases run two at a time
        own = out / f"case{i}"
        own.mkdir()
        if (out / "link.onnx") in case.argv:
            (own / "link.onnx").symlink_to(cnn)
        case.argv = [str(own / a.name) if isinstance(a, pathlib.Path) and a.parent == out else str(a)
                     for a in case.argv]
        if case.out_dir is not None:
            case.out_dir = own
    return cases


FAST = {"optimize-fold/truncated_0", "optimize-fold/bitflip_0", "optimize-prune/bitflip_1", "inspect/cyclic",
        "bench/undefined_input", "optimize-fold,int8/concat_doubling", "inspect/huge_declared_dims",
        "optimize-fold/external_escape", "eval/sequence_output", "calib-data/pickled", "calib-data/huge_header",
        "eval-data/labels_2d", "calib-data/traversal", "output/symlink-to-model", "output/report-onto-data",
        "flags/huge-batch"}


def _run_all(cases: list[Case]) -> list[str]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return [problem for problem in pool.map(run_case, cases) if problem]


def test_fast_fuzz_sample(tmp_path):
    cases = [c for c in corpus(tmp_path) if c.name in FAST]
    assert len(cases) == len(FAST)
    problems = _run_all(cases)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_every_fuzz_case(tmp_path):
    cases = corpus(tmp_path)
    assert len(cases) > 200
    problems = _run_all(cases)
    assert not problems, f"{len(problems)} of {len(cases)}:\n" + "\n".join(problems)
