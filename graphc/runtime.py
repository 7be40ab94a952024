"""onnxruntime sessions: one place that opens them, with thread and provider settings."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from graphc.errors import GraphcError, first_line
from graphc.model_io import needs_external_data, save_model

ort.set_default_logger_severity(3)  # sessions graphc does not open itself (constant folding) stay quiet


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """Options of every session graphc opens. ``spinning=False`` makes idle intra-op threads
    block instead of spin-waiting after a run; benchmarks that interleave several sessions
    need it, else the pools of the sessions that just ran keep the cores busy (measured on
    2 cores with 7 interleaved CNN sessions: FP32 batch-32 p50 22 ms spinning, 3.5 ms not)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model: onnx.ModelProto | str | os.PathLike, threads: int | None = None,
                 what: str = "the model", spinning: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session for a model (proto or path); failure is a GraphcError."""
    options = session_options(threads, spinning)
    try:
        if isinstance(model, onnx.ModelProto):
            if needs_external_data(model):
                with tempfile.TemporaryDirectory() as tmp:
                    path = save_model(onnx.ModelProto.FromString(model.SerializeToString()),
                                      pathlib.Path(tmp) / "model.onnx")
                    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return ort.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            RuntimeError) as exc:
        raise GraphcError(f"onnxruntime cannot run {what}: {first_line(exc)}") from None


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run all outputs; an input mismatch is reported as a GraphcError."""
    try:
        return session.run(None, feeds)
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail) as exc:
        raise GraphcError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
