"""onnxruntime sessions: one place that opens them (thread and provider settings), runs
them, and taps intermediate tensors.

The tensor tap (``tap``) is the one way graphc streams data through a model to look at its
intermediate tensors (calibration ranges, activation and Taylor scores, BatchNorm statistics,
shape measurement, distillation targets). Its rules:

1. the model is opened once with the wanted tensors as extra outputs; the model given is
   left as it was (a path is read without its external weights, and the skeleton with the
   extra outputs is written beside it, never over it);
2. each batch of ``batch_size`` rows runs in pieces of about ``run_bytes`` exposed bytes
   (the first piece is one row, the next ones sized from the bytes that row exposed; a model
   with a fixed batch runs whole batches), so memory is bounded whatever the batch size; rows
   are cut along each input's batch axis (``Dataset.axes``), an input without one goes whole
   with every piece;
3. every exposed tensor of a piece is handed to the reducer, one at a time, and dropped as
   soon as the reducer returns: what a caller keeps is what its reducer accumulates.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from graphc.data import count_rows, take_rows
from graphc.errors import GraphcError, first_line
from graphc.model_io import proto_bytes, write_graph_with_external_weights, write_with_external_weights

if TYPE_CHECKING:
    from graphc.data import Dataset

# A proto larger than this opens from a temporary file whose weights are external data,
# written tensor by tensor: a session made from the serialized bytes holds about twice the
# model's size more than one made from a file, and serializing the whole model costs one
# more copy while it opens (measured with BERT-base, 420 MB: +1166 MB RSS from bytes,
# +522 MB from a file).
FILE_SESSION_BYTES = 64 * 2**20
RUN_BYTES = 64 * 2**20  # exposed tensor bytes per tapped run, about (rule 2)

ort.set_default_logger_severity(4)  # only fatal: graphc reports failures itself, in one line


def session_options(threads: int | None = None, spinning: bool = True,
                    profile_prefix: str | None = None, optimized: bool = True) -> ort.SessionOptions:
    """Options of every session graphc opens. ``spinning=False`` makes idle intra-op threads
    block instead of spin-waiting after a run; benchmarks that interleave several sessions
    need it, else the pools of the sessions that just ran keep the cores busy (measured on
    2 cores with 7 interleaved CNN sessions: FP32 batch-32 p50 22 ms spinning, 3.5 ms not).
    ``optimized=False``: no onnxruntime graph optimizations: a run error names the model's own
    node (onnxruntime's fused and re-laid-out nodes carry other names), and probes that only
    look at values or shapes avoid an onnxruntime 1.32 abort (optimizing some QDQ models with
    If subgraphs once their input shapes are fixed: silero-vad-op15 after fold,int8)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
                 profile_prefix: str | None = None, optimized: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session for a model (proto or path); failure is a GraphcError.
    ``profile_prefix``: profile every run into ``<prefix>_<time>.json``; ``optimized``: see
    ``session_options``."""
    options = session_options(threads, spinning, profile_prefix, optimized)
    register_graphc_ops(model, options)
    try:
        if isinstance(model, onnx.ModelProto):
            if proto_bytes(model) > FILE_SESSION_BYTES:
                with tempfile.TemporaryDirectory() as tmp:
                    path = write_with_external_weights(model, pathlib.Path(tmp))
                    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return ort.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException, RuntimeError) as exc:
        raise GraphcError(f"onnxruntime cannot run {what}: {first_line(exc)}") from None


def register_graphc_ops(model: onnx.ModelProto | str | os.PathLike, options: ort.SessionOptions) -> None:
    """Register graphc's kernel library with ``options`` when the model imports ``ai.graphc``
    (a path is read without its external weights); a missing library is a GraphcError."""
    from graphc import kernels

    try:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    except Exception:  # not a model: onnxruntime's own error says so
        return
    if kernels.uses_graphc_ops(proto):
        try:
            kernels.register(options)
        except kernels.KernelLibraryError as exc:
            raise GraphcError(str(exc)) from None


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run all outputs; an input mismatch is reported as a GraphcError."""
    try:
        return session.run(None, feeds)
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail) as exc:
        raise GraphcError(f"onnxruntime failed to run the model: {first_line(exc)}") from None


@dataclass(frozen=True)
class Piece:
    """The rows of one tapped run: batch number (from 0) and rows [start, stop) of the data."""

    batch: int
    start: int
    stop: int


@dataclass(frozen=True)
class TapRun:
    """What a tap ran: rows, batches, and onnxruntime runs (pieces)."""

    rows: int
    batches: int
    runs: int


def exposing_session(model: onnx.ModelProto | os.PathLike, names: Sequence[str], threads: int | None = None,
                     what: str = "the model", optimized: bool = True) -> ort.InferenceSession:
    """A session of ``model`` with ``names`` as extra outputs (rule 1)."""
    if not isinstance(model, onnx.ModelProto):
        skeleton = onnx.load(str(model), load_external_data=False)
        existing = {o.name for o in skeleton.graph.output}
        skeleton.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
        exposed = pathlib.Path(model).with_name(pathlib.Path(model).stem + ".exposed.onnx")
        onnx.save(skeleton, str(exposed))
        try:
            return open_session(exposed, threads, what=what, optimized=optimized)
        finally:
            exposed.unlink(missing_ok=True)
    existing = {o.name for o in model.graph.output}
    count = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    try:
        return open_session(model, threads, what=what, optimized=optimized)
    finally:
        del model.graph.output[count:]


def tap(model: onnx.ModelProto | os.PathLike, names: Sequence[str], data: Dataset,
        reduce: Callable[[str, np.ndarray, Piece], None], batch_size: int = 16, threads: int | None = None,
        run_bytes: int = RUN_BYTES, what: str = "the model", optimized: bool = True) -> TapRun:
    """Stream ``data`` through ``model`` and hand every tensor in ``names`` (graph outputs
    included) of every piece to ``reduce(name, values, piece)`` (rules 1-3; ``optimized``:
    see ``session_options``)."""
    names = list(dict.fromkeys(names))
    if not names:
        return TapRun(0, 0, 0)
    session = exposing_session(model, names, threads, what, optimized)
    position = {o.name: i for i, o in enumerate(session.get_outputs())}
    batches = runs = 0
    piece_rows = None if data.fixed_batch else 1  # rows of the next run; None: whole batches
    offset = 0
    for feeds, _ in data.batches(batch_size):
        total, begin = count_rows(feeds, data.axes), 0
        while begin < total:
            end = total if piece_rows is None else min(total, begin + piece_rows)
            outputs = run_session(session, take_rows(feeds, begin, end, data.axes))
            piece = Piece(batches, offset + begin, offset + end)
            exposed_bytes = 0
            for name in names:
                values = outputs[position[name]]
                outputs[position[name]] = None  # freed as soon as it is reduced
                exposed_bytes += values.nbytes
                reduce(name, values, piece)
                del values
            del outputs
            runs += 1
            if piece_rows is not None:
                per_row = max(exposed_bytes / (end - begin), 1.0)
                piece_rows = int(min(max(run_bytes // per_row, 1), max(batch_size, 1)))
            begin = end
        offset += total
        batches += 1
    return TapRun(offset, batches, runs)


def tap_graph(graph: gs.Graph, names: Sequence[str], data: Dataset, reduce: Callable[[str, np.ndarray, Piece], None],
              batch_size: int = 16, threads: int | None = None, run_bytes: int = RUN_BYTES,
              what: str = "the model") -> TapRun:
    """Stream ``data`` through ``graph`` with the tensor tap (``graphc.runtime.tap``), from a
    temporary file with external weights: no second in-memory copy of the weights."""
    with tempfile.TemporaryDirectory(prefix="graphc-tap-") as tmp:
        path = write_graph_with_external_weights(graph, onnx.ModelProto(ir_version=graph.ir_version or onnx.IR_VERSION),
                                                 pathlib.Path(tmp))
        return tap(path, sorted(set(names)), data, reduce, batch_size, threads, run_bytes, what)
