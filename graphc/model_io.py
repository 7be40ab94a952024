"""Load and save ONNX models safely.

Rules:
- loading never writes: the input file is only read;
- a file that is missing, empty, not protobuf, truncated or not a valid ONNX model is refused
  with one line that names the file and the reason;
- external data is resolved inside the model's directory only; a location that escapes it
  (absolute path, ``..``) or a missing data file is refused;
- saving is atomic: the model is written to a temporary file in the target directory and
  renamed into place (missing parent directories are created), so a failure never leaves a
  half-written output. Models over 2 GB are
  saved with their weights in one external data file ``<name>.data`` beside the model.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from graphc.errors import GraphcError, first_line

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27  # leave headroom below protobuf's 2 GB limit


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """All tensors of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_tensors(sub)


def _check_external_locations(model: onnx.ModelProto, path: pathlib.Path) -> None:
    base = path.parent.resolve()
    for tensor in iter_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise GraphcError(
                f"{path}: external data location {location!r} of tensor {tensor.name!r} "
                f"is outside the model's directory; refused")
        if not target.is_file():
            raise GraphcError(f"{path}: external data file {location!r} of tensor {tensor.name!r} not found")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and validate an ONNX model (with its external data) from ``path``."""
    path = pathlib.Path(path)
    if not path.exists():
        raise GraphcError(f"{path}: no such file")
    if not path.is_file():
        raise GraphcError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise GraphcError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise GraphcError(f"{path}: not a valid ONNX model (cannot parse the protobuf: the file is "
                          f"truncated or not ONNX; {first_line(exc)})") from None
    if model.ir_version <= 0 or not model.opset_import or not model.HasField("graph"):
        raise GraphcError(f"{path}: not an ONNX model (no IR version, opset or graph)")
    _check_external_locations(model, path)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        raise GraphcError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise GraphcError(f"{path}: cannot read external data: {first_line(exc)}") from None
    return model


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model, its external data files included."""
    path = pathlib.Path(path)
    total = path.stat().st_size
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # size of an unreadable file is just its own size
        return total
    locations = {e.value for t in iter_tensors(model.graph) if uses_external_data(t)
                 for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations
                       if (path.parent / loc).is_file())


def needs_external_data(model: onnx.ModelProto) -> bool:
    return model.ByteSize() > EXTERNAL_DATA_THRESHOLD


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> pathlib.Path:
    """Write ``model`` to ``path`` atomically (external data beside it when over 2 GB)."""
    path = pathlib.Path(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GraphcError(f"{path}: cannot create the output directory: {first_line(exc)}") from None
    if path.is_dir():
        raise GraphcError(f"{path}: is a directory")
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=directory))
    try:
        staged = staging / path.name
        if needs_external_data(model):
            data_name = path.name + ".data"
            onnx.save_model(model, str(staged), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            os.replace(staging / data_name, directory / data_name)
        else:
            with open(staged, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so a reader
    never sees a half-written file."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
