"""The structural check run on the model after every pass.

Three conditions: ``onnx.checker`` accepts it, ONNX shape inference runs in strict mode
without error, and onnxruntime opens a session on it.
"""

from __future__ import annotations

import onnx

from graphc.errors import GraphcError, first_line
from graphc.model_io import needs_external_data
from graphc.runtime import open_session


class BrokenModelError(GraphcError):
    """A pass produced an invalid model: a bug in graphc, not in the user's input."""

    exit_code = 1


def check_model(model: onnx.ModelProto, after: str) -> None:
    if not needs_external_data(model):  # the in-memory checker is limited to 2 GB
        try:
            onnx.checker.check_model(model)
            onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise BrokenModelError(f"{after} produced an invalid model: {first_line(exc)}") from None
    try:
        open_session(model, what=f"the model {after}")
    except GraphcError as exc:
        raise BrokenModelError(str(exc)) from None
