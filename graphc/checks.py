"""The structural check run on the model after every pass.

Three conditions: ``onnx.checker`` accepts it, ONNX shape inference runs in strict mode
without error, and onnxruntime opens a session on it.

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


def check_model(model: onnx.ModelProto, after: str) -> None:
    with tempfile.TemporaryDirectory(prefix="graphc-check-") as tmp:
        path = write_with_external_weights(model, pathlib.Path(tmp))
        try:
            onnx.checker.check_model(str(path))
            onnx.shape_inference.infer_shapes_path(str(path), str(pathlib.Path(tmp) / "inferred.onnx"),
                                                   strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise BrokenModelError(f"{after} produced an invalid model: {first_line(exc)}") from None
        try:
            open_session(path, what=f"the model {after}")
        except GraphcError as exc:
            raise BrokenModelError(str(exc)) from None
