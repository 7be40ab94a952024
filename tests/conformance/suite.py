"""The ONNX backend test suite as graphc's conformance suite.

Cases come from the installed onnx wheel, so nothing is downloaded: the node tests are
regenerated from the wheel's own case code (``onnx.backend.test.case.node.collect_testcases``,
what ``backend-test-tools generate-data`` writes to disk) and the wheel's ``simple``,
``pytorch-converted`` and ``pytorch-operator`` model directories are read with their
``test_data_set_0`` protobufs. A case counts only where onnxruntime runs the original model
and matches the shipped reference outputs (the others test onnxruntime, not graphc); every
pass must then write a model that runs and matches those references, or refuse in one line
(a ``GraphcError`` with exit code 2, which the pipeline turns into exit 2).
"""

from __future__ import annotations

import collections
import functools
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np
import onnx

DATA_KINDS = ("simple", "pytorch-converted", "pytorch-operator")


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]
    rtol: float
    atol: float

    @property
    def op(self) -> str:
        """The op type the case is about (its first node's)."""
        return self.model.graph.node[0].op_type if self.model.graph.node else ""


def _read_tensor(path: pathlib.Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return onnx.numpy_helper.to_array(tensor)


def _directory_cases() -> list[Case]:
    root = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data"
    cases = []
    for kind in DATA_KINDS:
        for model_path in sorted((root / kind).glob("*/model.onnx")):
            data = model_path.parent / "test_data_set_0"
            inputs = tuple(_read_tensor(p) for p in sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem[6:])))
            outputs = tuple(_read_tensor(p) for p in sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem[7:])))
            cases.append(Case(f"{kind}/{model_path.parent.name}", onnx.load(str(model_path)), inputs, outputs,
                              1e-3, 1e-7))
    return cases


@functools.cache
def all_cases() -> tuple[Case, ...]:
    """Every case with tensor inputs and outputs (sequence/map/optional I/O left out)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case code's own overflow warnings
        node = collect_testcases()
    cases = [Case(c.name, c.model, tuple(c.data_sets[0][0]), tuple(c.data_sets[0][1]), c.rtol, c.atol)
             for c in node if c.data_sets]
    cases += _directory_cases()
    return tuple(c for c in cases if all(isinstance(v, np.ndarray) for v in (*c.inputs, *c.outputs)))


def case(name: str) -> Case:
    return next(c for c in all_cases() if c.name == name)


def matches(case: Case, got: list[np.ndarray]) -> bool:
    """``got`` equals the reference outputs to the case's tolerance (at least 1e-4 / 1e-5:
    onnxruntime and the numpy references differ in rounding)."""
    rtol, atol = max(case.rtol, 1e-4), max(case.atol, 1e-5)
    return len(got) == len(case.outputs) and all(
        g.shape == w.shape and (g.dtype.kind in "OSU" and (g == w).all()
                                or np.allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol,
                                               equal_nan=True))
        for g, w in zip(got, case.outputs))


def run(model: onnx.ModelProto | pathlib.Path, case: Case) -> list[np.ndarray]:
    from graphc.runtime import open_session

    session = open_session(model)
    return session.run(None, {i.name: v for i, v in zip(session.get_inputs(), case.inputs)})


@functools.cache
def onnxruntime_conforms(name: str) -> bool:
    """Whether onnxruntime runs the original model of case ``name`` and matches its references."""
    c = case(name)
    try:
        return matches(c, run(c.model, c))
    except Exception:
        return False


def outcome(c: Case, passes: str, directory: pathlib.Path, with_data: bool = False) -> str:
    """What graphc does with one case: ``exact``, ``refused: <line>`` (exit 2), or a failure:
    ``wrong outputs``, ``fails to run: ...``, ``exit 1: ...``. ``with_data``: the case's own
    inputs are the ``--data`` (calibration, scores), as an ``.npz`` keyed by input name."""
    from graphc.checks import BrokenModelError
    from graphc.errors import GraphcError
    from graphc.pipeline import OptimizeRequest, optimize

    source, output = directory / f"{c.name.replace('/', '_')}.onnx", directory / f"{c.name.replace('/', '_')}.out.onnx"
    onnx.save(c.model, str(source))
    data = None
    if with_data:
        from graphc.data import model_signature

        data = directory / f"{c.name.replace('/', '_')}.npz"
        np.savez(data, **{s.name: v for s, v in zip(model_signature(c.model), c.inputs)})
    try:
        optimize(OptimizeRequest(model=source, passes=passes, output=output, data=data, progress=False))
    except BrokenModelError as exc:
        return f"exit 1: {exc}"
    except GraphcError as exc:
        return f"refused: {exc}" if exc.exit_code == 2 else f"exit {exc.exit_code}: {exc}"
    except Exception as exc:  # an internal error: exit 1 on the command line
        return f"exit 1: {type(exc).__name__}: {exc}"
    try:
        got = run(output, c)
    except Exception as exc:
        return f"fails to run: {str(exc).splitlines()[0][:200]}"
    if matches(c, got):
        return "exact"
    return _within_tolerance(c, passes, got) or "wrong outputs"


def _within_tolerance(c: Case, passes: str, got: list[np.ndarray]) -> str | None:
    """``within tolerance`` when a lossy pass of ``passes`` (int8, prune: a declared
    ``--verify`` tolerance) moved the outputs, but no further than that tolerance allows
    from the reference outputs; None otherwise (and for exact-only pass lists)."""
    from graphc.errors import GraphcError
    from graphc.passes import build_passes
    from graphc.spec import parse_spec
    from graphc.verify import Tolerance, compare, enforce

    lossy = [p for p in build_passes(parse_spec(passes)) if not p.exact and p.tolerance() != Tolerance()]
    if not lossy or len(got) != len(c.outputs) or any(g.shape != w.shape or g.dtype.kind not in "fc"
                                                     for g, w in zip(got, c.outputs)):
        return None
    names = [f"output {i}" for i in range(len(got))]
    comparisons = compare(names, c.outputs, got)
    try:
        for p in lossy:
            enforce(p.name, p.tolerance(), comparisons)
    except GraphcError:
        return None
    return f"within tolerance (cosine {min(v.cosine for v in comparisons):.4f})"


def sample(per_op: int = 1) -> list[str]:
    """A fixed spread of case names: the first ``per_op`` conforming cases of every op type."""
    chosen: dict[str, list[str]] = {}
    for c in sorted(all_cases(), key=lambda c: c.name):
        names = chosen.setdefault(c.op, [])
        if len(names) < per_op and onnxruntime_conforms(c.name):
            names.append(c.name)
    return sorted(n for names in chosen.values() for n in names)


def tally(passes: str, directory: pathlib.Path) -> tuple[collections.Counter, dict[str, list[str]]]:
    """Outcome counts of ``passes`` on every conforming case, and the cases per refusal line
    (first 120 characters, case-specific paths cut)."""
    import re

    counts: collections.Counter = collections.Counter()
    reasons: dict[str, list[str]] = {}
    for c in all_cases():
        if not onnxruntime_conforms(c.name):
            continue
        result = outcome(c, passes, directory)
        kind = result.split(":")[0]
        counts[kind] += 1
        if kind != "exact":
            line = re.sub(r"\S*/\S*\.onnx\S*", "M", result)[:120]
            reasons.setdefault(line, []).append(c.name)
    return counts, reasons


if __name__ == "__main__":  # python -m tests.conformance.suite fold prune:0.3 fold,int8
    import sys
    import tempfile

    for spec in sys.argv[1:] or ["fold", "prune:0.3", "fold,int8"]:
        with tempfile.TemporaryDirectory() as tmp:
            counts, reasons = tally(spec, pathlib.Path(tmp))
        print(f"{spec}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
        for line, names in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(names):4d}  {line}  (e.g. {names[0]})", flush=True)
