"""Data sources: where sample, calibration, training and evaluation inputs come from.

Three sources, one validated result (:class:`Dataset`):

- ``.npz`` keyed by input name, with an optional ``labels`` array;
- a directory of ``.npy`` files, one per input (``<input name>.npy``) and optional
  ``labels.npy``;
- synthetic inputs built from the model's input signature: dynamic dims come from
  ``--shape`` (``name=1x3x224x224`` for a whole input, or ``dim=8`` for every dim of that
  symbolic name); the first axis defaults to 1 and integer sequence axes to 64. Integer
  token inputs get valid ids (below the size of the embedding table they index), attention
  masks are ones, token-type ids zeros, float inputs standard normal.

Layout rule: axis 0 of every array concatenates samples, exactly like a model input with a
larger batch. When the model fixes its first dim to ``b``, the row count must be a multiple
of ``b`` and batches are always ``b`` rows. A wrong input name, dtype or shape is an error
naming the input, what the model expects and what was given.

Bounds: files are read with bounded memory (:mod:`graphc.data_files`: headers checked against
the bytes held, arrays memory-mapped, only used rows read); synthetic inputs are drawn in their
own dtype and refused before drawing when they would take more than ``MAX_SYNTHETIC_BYTES``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from graphc.data_files import read_npy, read_npz
from graphc.errors import GraphcError

LABELS_KEY = "labels"
DEFAULT_SEQUENCE = 64
# the most bytes of synthetic inputs graphc draws at once (all inputs, all batches); a --shape
# or --batch that needs more is refused before anything is allocated
MAX_SYNTHETIC_BYTES = 2**30

Dim = int | str | None


@dataclass(frozen=True)
class InputSignature:
    """One graph input: name, numpy dtype and shape (ints fixed, str/None dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]  # () also when the rank is unknown
    scalar: bool = False  # declared 0-d: one value fed unchanged with every batch

    def describe_shape(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                 for d in tensor_type.shape.dim)


def model_signature(model: onnx.ModelProto) -> list[InputSignature]:
    """The inputs a caller feeds (graph inputs that are not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    signature = []
    for value_info in model.graph.input:
        if value_info.name in initializers:
            continue
        elem = value_info.type.tensor_type.elem_type
        if not elem:
            raise GraphcError(f"input {value_info.name!r} is not a tensor; graphc supports tensor inputs only")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        tensor_type = value_info.type.tensor_type
        scalar = tensor_type.HasField("shape") and not tensor_type.shape.dim
        signature.append(InputSignature(value_info.name, dtype, _dims(value_info), scalar))
    return signature


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Dataset:
    """Validated model inputs (axis 0 concatenates samples) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    fixed_batch: int | None = None  # set when the model fixes its first dim

    def __len__(self) -> int:
        return next((len(v) for v in self.inputs.values() if v.ndim), 1)

    def batches(self, batch_size: int = 32) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """(feeds, labels) chunks of ``batch_size`` rows (the model's own batch if fixed)."""
        step = self.fixed_batch or max(1, int(batch_size))
        for start in range(0, len(self), step):
            feeds = take_rows(self.inputs, start, start + step)
            labels = None if self.labels is None else self.labels[start:start + step]
            yield feeds, labels

    def take(self, rows: int) -> Dataset:
        """The first ``rows`` rows (rounded up to the model's fixed batch)."""
        if self.fixed_batch:
            rows = -(-rows // self.fixed_batch) * self.fixed_batch
        labels = None if self.labels is None else self.labels[:rows]
        return Dataset(take_rows(self.inputs, 0, rows), labels, self.source, self.fixed_batch)


def take_rows(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of every input; a 0-d input (a scalar the model reads once per run,
    e.g. a sample rate) goes with every piece unchanged."""
    return {k: v if v.ndim == 0 else v[start:stop] for k, v in feeds.items()}


def validate(arrays: Mapping[str, np.ndarray], signature: Sequence[InputSignature], source: str) -> Dataset:
    """Check names, dtypes and shapes against the model's inputs; build a Dataset."""
    expected = {s.name: s for s in signature}
    names = ", ".join(expected)
    for key in arrays:
        if key != LABELS_KEY and key not in expected:
            raise GraphcError(f"{source}: {key!r} is not an input of the model (inputs: {names}; "
                              f"optional: {LABELS_KEY})")
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise GraphcError(f"{source}: missing input {missing[0]!r} (the model's inputs: {names})")
    rows = None
    fixed_batch = None
    for spec in signature:
        array = arrays[spec.name]
        if array.dtype != spec.dtype:
            raise GraphcError(f"{source}: input {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}")
        if spec.scalar and array.ndim:
            raise GraphcError(f"{source}: input {spec.name!r} has shape {_fmt(array.shape)}, the model expects a "
                              f"scalar (one value, fed with every batch)")
        if array.ndim == 0:
            if spec.shape:
                raise GraphcError(f"{source}: input {spec.name!r} is a scalar, the model expects "
                                  f"{spec.describe_shape()} (rank {len(spec.shape)})")
            continue
        if spec.shape and array.ndim != len(spec.shape):
            raise GraphcError(f"{source}: input {spec.name!r} has shape {_fmt(array.shape)}, the model expects "
                              f"{spec.describe_shape()} (rank {len(spec.shape)})")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if axis > 0 and isinstance(want, int) and want != got:
                raise GraphcError(f"{source}: input {spec.name!r} has shape {_fmt(array.shape)}, the model expects "
                                  f"{spec.describe_shape()} (axis {axis}: {got} != {want})")
        if spec.shape and isinstance(spec.shape[0], int):
            if array.shape[0] % spec.shape[0]:
                raise GraphcError(f"{source}: input {spec.name!r} has {array.shape[0]} rows, not a multiple of the "
                                  f"model's fixed batch {spec.shape[0]} (expects {spec.describe_shape()})")
            fixed_batch = spec.shape[0]
        if rows is not None and array.shape[0] != rows:
            raise GraphcError(f"{source}: input {spec.name!r} has {array.shape[0]} rows, other inputs have {rows}")
        rows = array.shape[0]
    rows = 1 if rows is None else rows  # only scalar inputs: one sample
    if not rows:
        raise GraphcError(f"{source}: no samples")
    labels = arrays.get(LABELS_KEY)
    if labels is not None and labels.ndim != 1:
        raise GraphcError(f"{source}: {LABELS_KEY} has shape {_fmt(labels.shape)}; labels are one value a row "
                          f"(rank 1)")
    if labels is not None and len(labels) != rows:
        raise GraphcError(f"{source}: {LABELS_KEY} has {len(labels)} rows, the inputs have {rows}")
    return Dataset({s.name: arrays[s.name] for s in signature}, labels, source, fixed_batch)


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    return read_npz(path)


def _read_npy_dir(path: pathlib.Path) -> dict[str, np.ndarray]:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise GraphcError(f"{path}: directory holds no .npy files (expected <input name>.npy per input)")
    return {file.stem: _read_npy(file) for file in files}


def _read_npy(file: pathlib.Path) -> np.ndarray:
    return read_npy(file)


def load_dataset(path: str | os.PathLike, signature: Sequence[InputSignature]) -> Dataset:
    """Load and validate a ``.npz`` file or a directory of ``.npy`` files."""
    path = pathlib.Path(path)
    if path.is_dir():
        arrays = _read_npy_dir(path)
    elif path.is_file() and path.suffix == ".npy":
        if len(signature) != 1:
            raise GraphcError(f"{path}: a single .npy feeds a one-input model; this one has {len(signature)} inputs "
                              f"({', '.join(s.name for s in signature)}): give an .npz keyed by input name or a "
                              f"directory of <input>.npy")
        arrays = {signature[0].name: _read_npy(path)}
    elif path.is_file():
        arrays = _read_npz(path)
    else:
        raise GraphcError(f"{path}: no such file or directory")
    return validate(arrays, signature, str(path))


def parse_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``--shape`` items: ``name=1x3x224x224`` (an input) or ``dim=8`` (a symbolic dim)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or ():
        for part in item.split(","):
            name, sep, dims = part.partition("=")
            try:
                shape = tuple(int(d) for d in dims.lower().split("x"))
            except ValueError:
                shape = ()
            if not sep or not name or not shape or min(shape) <= 0:
                raise GraphcError(f"--shape {part!r}: expected NAME=DIMxDIMx... with positive integers, "
                                  f"e.g. image=1x3x224x224 or batch=8")
            shapes[name] = shape
    return shapes


def resolve_shape(spec: InputSignature, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    if spec.name in shapes:
        shape = shapes[spec.name]
        if len(shape) != len(spec.shape) or any(isinstance(w, int) and w != g for w, g in zip(spec.shape, shape)):
            raise GraphcError(f"--shape {spec.name}: {_fmt(shape)} does not fit the model's input "
                              f"{spec.describe_shape()}")
        return shape
    resolved = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            resolved.append(dim)
        elif isinstance(dim, str) and dim in shapes and len(shapes[dim]) == 1:
            resolved.append(shapes[dim][0])
        elif axis == 0:
            resolved.append(1)
        elif np.issubdtype(spec.dtype, np.integer):
            resolved.append(DEFAULT_SEQUENCE)
        else:
            raise GraphcError(f"input {spec.name!r} has dynamic axis {axis} ({dim or '?'}) in "
                              f"{spec.describe_shape()}; give it with --shape {spec.name}=...")
    return tuple(resolved)


def check_shape_overrides(signature: Sequence[InputSignature],
                          shapes: Mapping[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """Refuse ``--shape`` items that name no input or dim, or do not fit their input."""
    shapes = dict(shapes or {})
    dims = {d for s in signature for d in s.shape if isinstance(d, str)}
    for key, shape in shapes.items():
        spec = next((s for s in signature if s.name == key), None)
        if spec is not None:
            resolve_shape(spec, {key: shape})
        elif key not in dims:
            raise GraphcError(f"--shape {key}: not an input or a dynamic dim of the model "
                              f"(inputs: {', '.join(s.name for s in signature)})")
        elif len(shape) != 1:
            raise GraphcError(f"--shape {key}: a dim takes one size, e.g. {key}=8")
    if shapes:  # one batch at these shapes must be drawable: refused now, not mid-run
        resolved = {}
        for spec in signature:
            try:
                resolved[spec.name] = resolve_shape(spec, shapes)
            except GraphcError:  # a dynamic dim left for later: checked when drawn
                resolved[spec.name] = ()
        _check_synthetic_bytes(signature, resolved)
    return shapes


def embedding_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """For inputs that index an embedding table (Gather on a constant), that table's size."""
    tables = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.dims:
                    tables[node.output[0]] = attr.t.dims[0]
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in tables:
            index = casts.get(node.input[1], node.input[1])
            sizes[index] = min(sizes.get(index, tables[node.input[0]]), tables[node.input[0]])
    return sizes


def _synthetic_array(spec: InputSignature, shape: tuple[int, ...], vocab: int | None,
                     rng: np.random.Generator) -> np.ndarray:
    name = spec.name.lower()
    if spec.dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    if spec.dtype.kind in "OSU":  # string tensors
        return np.full(shape, "graphc", dtype=object)
    if np.issubdtype(spec.dtype, np.floating):
        if spec.dtype in (np.float32, np.float64):
            return rng.standard_normal(shape, dtype=spec.dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
    if "mask" in name:
        return np.ones(shape, dtype=spec.dtype)
    if "type" in name or "segment" in name:
        return np.zeros(shape, dtype=spec.dtype)
    if "position" in name and shape:
        return np.broadcast_to(np.arange(shape[-1], dtype=spec.dtype), shape).copy()
    info = np.iinfo(spec.dtype)
    high = vocab if vocab else (info.max + 1 if info.bits <= 8 else 2)
    return rng.integers(max(info.min, 0), high, size=shape, dtype=spec.dtype)


def _check_synthetic_bytes(signature: Sequence[InputSignature], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Synthetic inputs are bounded in bytes before any is drawn (``MAX_SYNTHETIC_BYTES``)."""
    sizes = {s.name: int(np.prod(shapes[s.name], dtype=object)) * (s.dtype.itemsize if s.dtype.kind not in "OSU" else 8)
             for s in signature}
    total = sum(sizes.values())
    if total > MAX_SYNTHETIC_BYTES:
        largest = max(sizes, key=sizes.get)
        raise GraphcError(f"synthetic inputs would take {total:,} bytes (input {largest!r}: "
                          f"{_fmt(shapes[largest])} {signature_dtype(signature, largest)}), more than graphc draws "
                          f"({MAX_SYNTHETIC_BYTES:,} bytes); give smaller --shape/--batch sizes or --data")


def signature_dtype(signature: Sequence[InputSignature], name: str) -> str:
    return str(next(s.dtype for s in signature if s.name == name))


def synthetic_dataset(model: onnx.ModelProto, batches: int = 1,
                      shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> Dataset:
    """``batches`` batches of inputs shaped from the signature and ``shapes`` overrides."""
    signature = model_signature(model)
    shapes = check_shape_overrides(signature, shapes)
    vocab = embedding_sizes(model)
    rng = np.random.default_rng(seed)
    full_shapes = {}
    for spec in signature:
        shape = resolve_shape(spec, shapes)
        full_shapes[spec.name] = (shape[0] * batches, *shape[1:]) if shape else shape
    _check_synthetic_bytes(signature, full_shapes)
    arrays = {spec.name: _synthetic_array(spec, full_shapes[spec.name], vocab.get(spec.name), rng)
              for spec in signature}
    batch = next((len(a) for a in arrays.values() if a.ndim), 1)
    dataset = validate(arrays, signature, "synthetic inputs")
    dataset.fixed_batch = max(1, batch // batches)
    return dataset


def synthetic_feeds(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], batch: int) -> dict[str, np.ndarray]:
    """One batch of synthetic inputs, a symbolic leading dimension (the batch) set to ``batch``
    unless ``shapes`` sets it."""
    overrides = dict(shapes)
    for spec in model_signature(model):
        if spec.shape and not isinstance(spec.shape[0], int) and spec.shape[0] and spec.shape[0] not in overrides:
            overrides[spec.shape[0]] = (batch,)
    feeds, _ = next(synthetic_dataset(model, shapes=overrides).batches(batch))
    return feeds
