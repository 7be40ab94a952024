"""The structural check run on the model after every pass.

Three conditions: ``onnx.checker`` accepts it, ONNX shape inference runs in strict mode
without error, and onnxruntime opens a session on it. The input model is held to the same
three before any pass runs (``check_input``): a model that already breaks them is bad input
(exit 2), not a broken pass (exit 1).

All three read one temporary file written with external weights
(``graphc.model_io.write_with_external_weights``, tensor by tensor), not the proto: the
in-memory checker and shape inference each serialize the whole model and parse it again
(BERT-base: about 1.3 GB on top of the model, the peak of ``fold,int8``), and are limited to
2 GB. From the file they hold only the graph structure.
"""

from __future__ import annotations

import pathlib
import tempfile

import onnx

from graphc.errors import GraphcError, first_line
from graphc.model_io import write_with_external_weights
from graphc.runtime import open_session


class BrokenModelError(GraphcError):
    """A pass produced an invalid model: a bug in graphc, not in the user's input."""

    exit_code = 1


def _problem(model: onnx.ModelProto, what: str) -> str | None:
    """The first of the three conditions ``model`` breaks, as one line, or None."""
    with tempfile.TemporaryDirectory(prefix="graphc-check-") as tmp:
        path = write_with_external_weights(model, pathlib.Path(tmp))
        try:
            onnx.checker.check_model(str(path))
            onnx.shape_inference.infer_shapes_path(str(path), str(pathlib.Path(tmp) / "inferred.onnx"),
                                                   strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            return first_line(exc)
        try:
            open_session(path, what=what)
        except GraphcError as exc:
            return str(exc)
    return None


def check_model(model: onnx.ModelProto, after: str) -> None:
    """The model a pass wrote meets the three conditions, else BrokenModelError (exit 1)."""
    problem = _problem(model, f"the model {after}")
    if problem is not None:
        raise BrokenModelError(problem if problem.startswith("onnxruntime") else
                               f"{after} produced an invalid model: {problem}")


def check_input(model: onnx.ModelProto, what: str) -> None:
    """The input model meets the same three conditions, else a GraphcError (bad input, exit
    2): graphc would refuse what it wrote from it, and blame the pass."""
    problem = _problem(model, what)
    if problem is not None:
        raise GraphcError(problem if problem.startswith("onnxruntime") else
                          f"{what}: invalid model (every model graphc writes must pass strict ONNX shape "
                          f"inference; this one does not): {problem}")
