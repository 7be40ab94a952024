"""onnxruntime sessions: one place that opens them, with thread and provider settings."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from graphc.errors import GraphcError, first_line

# A proto larger than this opens from a temporary file whose weights are external data,
# written tensor by tensor: a session made from the serialized bytes holds about twice the
# model's size more than one made from a file, and serializing the whole model costs one
# more copy while it opens (measured with BERT-base, 420 MB: +1166 MB RSS from bytes,
# +522 MB from a file).
FILE_SESSION_BYTES = 64 * 2**20
INLINE_TENSOR_BYTES = 4096  # smaller initializers stay inside the temporary model file
PAGE = 4096

ort.set_default_logger_severity(3)  # sessions graphc does not open itself (constant folding) stay quiet


def session_options(threads: int | None = None, spinning: bool = True,
                    profile_prefix: str | None = None) -> ort.SessionOptions:
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
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def open_session(model: onnx.ModelProto | str | os.PathLike, threads: int | None = None,
                 what: str = "the model", spinning: bool = True,
                 profile_prefix: str | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for a model (proto or path); failure is a GraphcError.
    ``profile_prefix``: profile every run into ``<prefix>_<time>.json``."""
    options = session_options(threads, spinning, profile_prefix)
    try:
        if isinstance(model, onnx.ModelProto):
            if model.ByteSize() > FILE_SESSION_BYTES:
                with tempfile.TemporaryDirectory() as tmp:
                    path = write_with_external_weights(model, pathlib.Path(tmp))
                    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return ort.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            RuntimeError) as exc:
        raise GraphcError(f"onnxruntime cannot run {what}: {first_line(exc)}") from None


def copy_fields(source, target, skip: str | None = None) -> None:
    """Copy every set field of a protobuf message but ``skip`` into an empty message."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def point_to_weights(target: onnx.TensorProto, data, offset: int, length: int) -> int:
    """Mark ``target`` as stored at ``offset`` in ``weights.bin``, whose ``length`` bytes were
    just written to ``data``; pad ``data`` to the next page. Returns the next offset."""
    target.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(length))):
        entry = target.external_data.add()
        entry.key, entry.value = key, value
    padding = -length % PAGE
    data.write(b"\0" * padding)
    return offset + length + padding


def write_with_external_weights(model: onnx.ModelProto, directory: pathlib.Path) -> pathlib.Path:
    """``model`` written to ``directory/model.onnx`` with its initializers (all but small
    and string ones) in ``weights.bin`` beside it, one tensor at a time, page-aligned: no
    serialized copy of the whole model is made, and ``model`` is not changed."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip="graph")
    copy_fields(model.graph, skeleton.graph, skip="initializer")
    offset = 0
    with open(directory / "weights.bin", "wb") as data:
        for tensor in model.graph.initializer:
            target = skeleton.graph.initializer.add()
            if (tensor.data_type == onnx.TensorProto.STRING or tensor.data_location == onnx.TensorProto.EXTERNAL
                    or tensor.ByteSize() <= INLINE_TENSOR_BYTES):
                target.CopyFrom(tensor)
                continue
            raw = tensor.raw_data if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).tobytes()
            copy_fields(tensor, target, skip="raw_data")
            for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                target.ClearField(name)
            data.write(raw)
            offset = point_to_weights(target, data, offset, len(raw))
            del raw
    path = directory / "model.onnx"
    path.write_bytes(skeleton.SerializeToString())
    return path


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run all outputs; an input mismatch is reported as a GraphcError."""
    try:
        return session.run(None, feeds)
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail) as exc:
        raise GraphcError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
