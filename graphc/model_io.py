"""Load and save ONNX models safely.

Rules:
- loading never writes: the input file is only read;
- a file that is missing, empty, not protobuf, truncated or not a valid ONNX model is refused
  with one line that names the file and the reason;
- external data is resolved inside the model's directory only; a location that escapes it
  (absolute path, ``..``) or a missing data file is refused;
- saving is atomic: the model is written to a temporary file in the target directory and
  renamed into place (missing parent directories are created), so a failure never leaves a
  half-written output; an OS error while writing (permission, space, name length) is one
  line, exit 2;
- one output-path rule for every file a command writes (``check_output_paths``): an output
  that resolves (symlinks and hard links followed) to a file the command reads, or to
  another output of the same command, is refused before anything runs. Models over 2 GB are
  saved with their weights in one external data file ``<name>.data`` beside the model;
- temporary copies for onnxruntime, the checker and shape inference are written with their
  weights in ``weights.bin`` beside them, tensor by tensor and page-aligned
  (``write_with_external_weights`` from a proto, ``write_graph_with_external_weights`` from a
  graph), so no serialized copy of the whole model is ever made.

Every file graphc writes is written here.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError, EncodeError
from onnx.external_data_helper import uses_external_data

from graphc.errors import GraphcError, first_line

EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27  # leave headroom below protobuf's 2 GB limit
INLINE_TENSOR_BYTES = 4096  # smaller initializers stay inside a temporary model file
PAGE = 4096


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


def _external_field(tensor: onnx.TensorProto, key: str) -> str | None:
    return next((e.value for e in tensor.external_data if e.key == key), None)


def item_bytes(data_type: int) -> int | None:
    """Bytes of one element of an ONNX tensor type (None: unknown type, or no fixed size)."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize or None
    except (KeyError, TypeError, ValueError):
        return None


def _external_bytes_needed(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's raw data must hold (fixed-size types: 4-bit ones packed two a byte),
    or None."""
    if tensor.data_type == onnx.TensorProto.STRING or item_bytes(tensor.data_type) is None:
        return None
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (math.prod(tensor.dims) + 1) // 2
    return tensor_nbytes(tensor)


def _check_external_locations(model: onnx.ModelProto, path: pathlib.Path) -> None:
    """External data is named by a relative path inside the model's directory (no NUL byte,
    no component over 255 bytes), and the file holds the bytes the tensor declares
    (``offset`` + ``length`` within the file, ``length`` at least the tensor's size)."""
    base = path.parent.resolve()
    for tensor in iter_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        location = _external_field(tensor, "location") or ""
        shown = location if len(location) <= 80 else location[:80] + f"... ({len(location)} chars)"
        if "\0" in location or any(len(part.encode()) > 255 for part in location.split("/")) or len(location) > 4096:
            raise GraphcError(f"{path}: external data location {shown!r} of tensor {tensor.name!r} is not a "
                              f"file name (a NUL byte, or a name over 255 bytes); refused")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise GraphcError(
                f"{path}: external data location {shown!r} of tensor {tensor.name!r} "
                f"is outside the model's directory; refused")
        if not target.is_file():
            raise GraphcError(f"{path}: external data file {shown!r} of tensor {tensor.name!r} not found")
        try:
            offset = int(_external_field(tensor, "offset") or 0)
            length = _external_field(tensor, "length")
            length = None if length is None else int(length)
        except ValueError:
            raise GraphcError(f"{path}: tensor {tensor.name!r}: external data offset or length is not a "
                              f"number") from None
        available = target.stat().st_size - offset
        needed = _external_bytes_needed(tensor)
        held = available if length is None else length
        if offset < 0 or (length is not None and (length < 0 or length > available)):
            raise GraphcError(f"{path}: tensor {tensor.name!r}: external data at offset {offset:,} length "
                              f"{length:,} lies beyond the end of {shown!r} ({target.stat().st_size:,} bytes)"
                              if length is not None else
                              f"{path}: tensor {tensor.name!r}: external data offset {offset:,} is negative")
        if needed is not None and held != needed and (length is not None or held < needed):
            raise GraphcError(f"{path}: tensor {tensor.name!r} {list(tensor.dims)} needs {needed:,} bytes of "
                              f"external data; {shown!r} holds {held:,} for it")


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
    if not model.graph.output:
        raise GraphcError(f"{path}: the graph has no outputs; there is nothing to run or compare")
    for kind, values in (("output", model.graph.output), ("input", model.graph.input)):
        for value in values:
            if value.type.WhichOneof("value") not in ("tensor_type", None):
                raise GraphcError(f"{path}: graph {kind} {value.name!r} is a {value.type.WhichOneof('value')[:-5]}, "
                                  f"not a tensor; graphc handles models whose inputs and outputs are tensors")
    _check_external_locations(model, path)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        raise GraphcError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
    from graphc.tensor_bounds import check_constant_tensor_sizes  # it needs graphc.graph, which needs this module

    check_constant_tensor_sizes(model, str(path))
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise GraphcError(f"{path}: cannot read external data: {first_line(exc)}") from None
    return model


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (symlinks and hard links followed); a path that
    cannot exist (a name too long) names no file."""
    try:
        return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output_paths(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output (flag -> path) that is an input the command reads, or another output.
    An input directory (``--data DIR``) covers every file inside it."""
    given_inputs = {flag: pathlib.Path(p) for flag, p in inputs.items() if p is not None}
    given_outputs = [(flag, pathlib.Path(p)) for flag, p in outputs.items() if p is not None]
    for i, (flag, path) in enumerate(given_outputs):
        for in_flag, source in given_inputs.items():
            inside = source.is_dir() and pathlib.Path(os.path.realpath(path)).is_relative_to(os.path.realpath(source))
            if inside or same_file(path, source):
                raise GraphcError(f"{flag} {path}: it would overwrite {in_flag} {source}, which this command reads; "
                                  f"choose another path")
        for other_flag, other in given_outputs[:i]:
            if same_file(path, other):
                raise GraphcError(f"{flag} {path}: it is also {other_flag}; give each output its own path")


def external_data_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The external data files a model file names that exist beside it (none when the file
    cannot be read: loading it reports that)."""
    path = pathlib.Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: load_model says why
        return []
    locations = {e.value for t in iter_tensors(model.graph) if uses_external_data(t)
                 for e in t.external_data if e.key == "location"}
    files = []
    for location in sorted(locations):
        try:
            if (path.parent / location).is_file():
                files.append(path.parent / location)
        except (OSError, ValueError):  # a NUL byte or an over-long name: load_model refuses it
            continue
    return files


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a model, its external data files included."""
    path = pathlib.Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path))


def external_data_name(path: str | os.PathLike) -> pathlib.Path:
    """Where ``save_model`` puts the external data of a model saved at ``path``."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".data")


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values, from its dims and type alone. Measuring the proto
    instead (``ByteSize``) encodes it in full under protobuf's upb backend: about 1 s per GB."""
    return math.prod(tensor.dims) * (item_bytes(tensor.data_type) or 1)


MEASURED_PROTO_BYTES = 256 * 2**20  # below this a model's size is measured exactly (fast)


def proto_bytes(model: onnx.ModelProto) -> int:
    """The serialized size of ``model``: exact for small models; for large ones (and past
    protobuf's 2 GB, where ``ByteSize`` fails with ``EncodeError``) the bytes of its tensor
    values, which is nearly all of it."""
    values = sum(tensor_nbytes(t) for t in iter_tensors(model.graph) if t.data_location != onnx.TensorProto.EXTERNAL)
    if values < MEASURED_PROTO_BYTES:
        try:
            return model.ByteSize()
        except EncodeError:
            pass
    return values


def needs_external_data(model: onnx.ModelProto) -> bool:
    return proto_bytes(model) > EXTERNAL_DATA_THRESHOLD


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> pathlib.Path:
    """Write ``model`` to ``path`` atomically (external data beside it when over 2 GB)."""
    path = pathlib.Path(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GraphcError(f"{path}: cannot create the output directory: {first_line(exc)}") from None
    if os.path.isdir(path):
        raise GraphcError(f"{path}: is a directory")
    try:
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=directory))
    except OSError as exc:
        raise GraphcError(f"{path}: cannot write there: {first_line(exc)}") from None
    try:
        staged = staging / path.name
        if needs_external_data(model):
            data_name = external_data_name(path).name
            write_with_external_weights(model, staging, name=path.name, data_name=data_name, sync=True)
            os.replace(staging / data_name, directory / data_name)
            try:
                os.replace(staged, path)
            except OSError:
                (directory / data_name).unlink(missing_ok=True)  # no data file without its model
                raise
        else:
            with open(staged, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.replace(staged, path)
    except OSError as exc:
        raise GraphcError(f"{path}: cannot write the model: {first_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so a reader
    never sees a half-written file."""
    return _write_atomically(path, text, "w")


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """``write_text_atomically`` for bytes (a TensorRT engine)."""
    return _write_atomically(path, data, "wb")


def _write_atomically(path: str | os.PathLike, data: str | bytes, mode: str) -> pathlib.Path:
    path = pathlib.Path(path)
    if os.path.isdir(path):
        raise GraphcError(f"{path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as exc:
        raise GraphcError(f"{path}: cannot write there: {first_line(exc)}") from None
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise GraphcError(f"{path}: cannot write: {first_line(exc)}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return path


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


def point_to_weights(target: onnx.TensorProto, data, offset: int, length: int, location: str = "weights.bin") -> int:
    """Mark ``target`` as stored at ``offset`` in ``location``, whose ``length`` bytes were
    just written to ``data``; pad ``data`` to the next page. Returns the next offset."""
    target.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = target.external_data.add()
        entry.key, entry.value = key, value
    padding = -length % PAGE
    data.write(b"\0" * padding)
    return offset + length + padding


def write_with_external_weights(model: onnx.ModelProto, directory: pathlib.Path, name: str = "model.onnx",
                                data_name: str = "weights.bin", sync: bool = False) -> pathlib.Path:
    """``model`` written to ``directory/name`` with its initializers (all but small and
    string ones) in ``data_name`` beside it, one tensor at a time, page-aligned: no
    serialized copy of the whole model is made (so it works past protobuf's 2 GB), and
    ``model`` is not changed. ``sync``: flush both files to disk before returning."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip="graph")
    copy_fields(model.graph, skeleton.graph, skip="initializer")
    offset = 0
    with open(directory / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            target = skeleton.graph.initializer.add()
            if (tensor.data_type == onnx.TensorProto.STRING or tensor.data_location == onnx.TensorProto.EXTERNAL
                    or tensor_nbytes(tensor) <= INLINE_TENSOR_BYTES):
                target.CopyFrom(tensor)
                continue
            raw = tensor.raw_data if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).tobytes()
            # the header fields only: listing every field would copy the values out once more
            target.name, target.data_type, target.doc_string = tensor.name, tensor.data_type, tensor.doc_string
            target.dims.extend(tensor.dims)
            target.metadata_props.extend(tensor.metadata_props)
            data.write(raw)
            offset = point_to_weights(target, data, offset, len(raw), data_name)
            del raw
        if sync:
            data.flush()
            os.fsync(data.fileno())
    path = directory / name
    with open(path, "wb") as f:
        f.write(skeleton.SerializeToString())
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return path


def write_graph_with_external_weights(graph: gs.Graph, template: onnx.ModelProto,
                                     directory: pathlib.Path) -> pathlib.Path:
    """``graph`` written to ``directory/model.onnx`` (``template``'s model-level fields) with
    every constant over ``INLINE_TENSOR_BYTES`` in ``weights.bin`` beside it, page-aligned,
    one tensor at a time. No proto holding the weights is built (``to_model`` of BERT-base
    transiently needs 2 x 440 MB: tensor bytes plus proto); the graph is left as it was."""
    from graphc.graph import constants_as_protos, load_stored, stored_values, to_model

    external: list[tuple[gs.Constant, onnx.TensorProto]] = []
    offset = 0
    with open(directory / "weights.bin", "wb") as data:
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Constant) or tensor.dtype is None or np.dtype(tensor.dtype).kind in "OSU":
                continue
            dims, dtype = tuple(tensor.shape), np.dtype(tensor.dtype)
            nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if nbytes <= INLINE_TENSOR_BYTES:
                continue
            values = load_stored(stored_values(tensor))  # read for this write only
            np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tofile(data)
            del values
            proto = onnx.TensorProto(name=tensor.name, dims=dims, data_type=onnx.helper.np_dtype_to_tensor_dtype(dtype))
            offset = point_to_weights(proto, data, offset, nbytes)
            external.append((tensor, proto))
    with constants_as_protos(external):  # exported as these protos, not as bytes
        model = to_model(graph, template)
    path = directory / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path
