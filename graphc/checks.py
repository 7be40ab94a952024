"""The check run on the model after every pass, and on the input model before any pass.

Four conditions: ``onnx.checker`` accepts it, ONNX shape inference runs in strict mode
without error, onnxruntime opens a session on it, and that session runs once on the sample
inputs (the first rows of ``--data``, else synthetic ones; ``run_checked``). A model the
passes wrote that breaks one is a bug in graphc (``BrokenModelError``, exit 1); the input
model is held to the same four first (``check_input``, then ``run_checked`` with
``after=None``): one that already breaks them is bad input (exit 2), not a broken pass
(the pipeline runs the input on synthetic inputs only where it can: ``pipeline._input_run``).

Messages are one line and name what failed: the checker's and onnxruntime's multi-line
messages are joined, and a run failure names the node onnxruntime reports
(``Conv node '/cv2/Conv': Input channels C is not equal to ...``).

The first three read one temporary file written with external weights
(``graphc.model_io.write_with_external_weights``, tensor by tensor), not the proto: the
in-memory checker and shape inference each serialize the whole model and parse it again
(BERT-base: about 1.3 GB on top of the model, the peak of ``fold,int8``), and are limited to
2 GB. From the file they hold only the graph structure. The session is returned, so the
pipeline runs the same session for the sample run, the exact-pass check and ``--verify``.
"""

from __future__ import annotations

import pathlib
import re
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from graphc.errors import GraphcError
from graphc.model_io import write_with_external_weights
from graphc.runtime import open_session

_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in
                    ("Fail", "InvalidArgument", "RuntimeException", "NotImplemented", "InvalidGraph", "EPFail"))
_NODE = re.compile(r"while running (\S+) node\.\s*Name:\s*'([^']*)'\s*Status Message:\s*(.*)", re.DOTALL)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
MESSAGE_CHARS = 400  # a joined message is cut here: one line, not a dump


class BrokenModelError(GraphcError):
    """A pass produced an invalid model: a bug in graphc, not in the user's input."""

    exit_code = 1


def one_line(error: BaseException | str) -> str:
    """A (multi-line) message as one line of at most ``MESSAGE_CHARS`` characters: the
    checker names the node on its second line, so the first line alone is not enough."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."


def run_failure(error: BaseException) -> str:
    """onnxruntime's run error as ``<Op> node '<name>': <message>`` (its prefix dropped)."""
    text = _ORT_PREFIX.sub("", " ".join(str(error).split()))
    found = _NODE.search(text)
    if found:
        op, name, message = found.groups()
        text = f"{op} node {name!r}: {message}"
    return one_line(text)


def _problem(model: onnx.ModelProto, what: str, threads: int | None):
    """(the first of the three structural conditions ``model`` breaks as one line, or None;
    the session when it opened)."""
    with tempfile.TemporaryDirectory(prefix="graphc-check-") as tmp:
        path = write_with_external_weights(model, pathlib.Path(tmp))
        try:
            onnx.checker.check_model(str(path))
            onnx.shape_inference.infer_shapes_path(str(path), str(pathlib.Path(tmp) / "inferred.onnx"),
                                                   strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            return one_line(exc), None
        try:
            return None, open_session(path, threads, what=what)
        except GraphcError as exc:
            return str(exc), None


def check_model(model: onnx.ModelProto, after: str, threads: int | None = None) -> ort.InferenceSession:
    """The model a pass wrote meets the three structural conditions, else BrokenModelError
    (exit 1); returns its session (for ``run_checked``)."""
    problem, session = _problem(model, f"the model {after}", threads)
    if problem is not None:
        raise BrokenModelError(problem if problem.startswith("onnxruntime") else
                               f"{after} produced an invalid model: {problem}")
    return session


def check_input(model: onnx.ModelProto, what: str, threads: int | None = None) -> ort.InferenceSession:
    """The input model meets the same three conditions, else a GraphcError (bad input, exit
    2): graphc would refuse what it wrote from it, and blame the pass. Returns its session."""
    problem, session = _problem(model, what, threads)
    if problem is not None:
        raise GraphcError(problem if problem.startswith("onnxruntime") else
                          f"{what}: invalid model (every model graphc writes must pass strict ONNX shape "
                          f"inference; this one does not): {problem}")
    return session


def run_checked(session: ort.InferenceSession, feeds: dict[str, np.ndarray], after: str | None,
                model: onnx.ModelProto | None = None, what: str = "the model",
                source: str = "sample inputs") -> list[np.ndarray]:
    """The fourth condition: one run on ``feeds`` (its outputs are returned). A failure is
    ``<after> produced a model that fails at run time: ...`` (BrokenModelError, exit 1), or
    with ``after=None`` (the input model) ``<what> does not run on <source>: ...`` (exit 2).
    With ``model`` given, a failure is run again without graph optimizations, so that the
    message names the model's node, not one onnxruntime made by fusing or re-laying it out."""
    try:
        return session.run(None, feeds)
    except _ORT_ERRORS as exc:
        problem = _unoptimized_failure(model, feeds) if model is not None else None
        problem = problem or run_failure(exc)
        if after is not None:
            raise BrokenModelError(f"{after} produced a model that fails at run time: {problem}") from None
        raise GraphcError(f"{what} does not run on {source}: {problem}") from None


def _unoptimized_failure(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> str | None:
    """The run failure of ``model`` in a session without graph optimizations (None if it runs)."""
    try:
        open_session(model, optimized=False).run(None, feeds)
    except _ORT_ERRORS as exc:
        return run_failure(exc)
    except GraphcError:
        return None
    return None
