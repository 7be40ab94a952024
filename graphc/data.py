"""Data sources: where sample, calibration, training and evaluation inputs come from.

Three sources, one validated result (:class:`Dataset`):

- ``.npz`` keyed by input name, with an optional ``labels`` array;
- a directory of ``.npy`` files, one per input (``<input name>.npy``) and optional
  ``labels.npy``;
- synthetic inputs built from the model's input signature: dynamic dims come from
  ``--shape`` (``name=1x3x224x224`` for a whole input, or ``dim=8`` for every dim of that
  symbolic name); the batch axis defaults to 1 and integer sequence axes to 64. Integer
  token inputs get valid ids (below the size of the embedding table they index), attention
  masks are ones, token-type ids zeros, float inputs standard normal; a 0-d integer input
  that the model compares with a constant (``Equal(sr, 16000)``, also through Reshape /
  Squeeze / Unsqueeze / Flatten / Cast / Identity / Gather) gets that constant (a sample
  rate the model accepts); any other 0-d integer input needs ``--data``-given values to
  mean anything and gets 0 or 1.

Layout rule: each input has one batch axis, or none. Along its batch axis an array
concatenates samples, exactly like a model input with a larger batch; an input with no batch
axis (a 0-d sample rate, a constant per call) is one value passed whole, unchanged, with
every run, and must be equal in every data source given (``--data``, ``--train-data``,
``--eval-data``). When the model fixes the batch dim to ``b``, the row count must be a
multiple of ``b`` and batches are always ``b`` rows. A wrong input name, dtype or shape is an
error naming the input, what the model expects and what was given.

Batch-axis rules (``model_signature``; ``batch_axes`` below), first match wins:

1. ``--batch-axis NAME=AXIS`` / ``NAME=none`` (repeatable): as given (checked: a known
   input, ``0 <= AXIS < rank``, ``none`` for a 0-d input);
2. a 0-d input has none;
3. the batch dim's name is the symbolic name at axis 0 of the first input whose axis 0 is a
   named dim (``batch``); an input that carries that name has its batch axis where the name
   first appears (``state [2, batch, 128]``: axis 1);
4. an input whose axis 0 is fixed and whose only dynamic dim is unnamed, in a model where
   another input's axis 0 is dynamic, has its batch axis there (``state [2, ?, 128]`` beside
   ``input [?, ?]``: axis 1);
5. otherwise axis 0 (a dynamic first dim, or the model's fixed batch).

Outputs get batch axes by rules 3-5 (the name and dynamic-dim facts taken from the inputs);
``--verify`` joins output pieces along them.

Bounds: files are read with bounded memory (:mod:`graphc.data_files`: headers checked against
the bytes held, arrays memory-mapped, only used rows read); synthetic inputs are drawn in their
own dtype and refused before drawing when they would take more than ``MAX_SYNTHETIC_BYTES``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from graphc.data_files import read_npy, read_npz
from graphc.errors import GraphcError

LABELS_KEY = "labels"
DEFAULT_SEQUENCE = 64
# the most bytes of synthetic inputs graphc draws at once (all inputs, all batches); a --shape
# or --batch that needs more is refused before anything is allocated
MAX_SYNTHETIC_BYTES = 2**30

Dim = int | str | None
BatchAxes = Mapping[str, "int | None"]  # input name -> its batch axis (None: no batch axis)
PASSTHROUGH_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Identity", "Gather"}


@dataclass(frozen=True)
class InputSignature:
    """One graph input: name, numpy dtype and shape (ints fixed, str/None dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]  # () also when the rank is unknown
    scalar: bool = False  # declared 0-d: one value fed unchanged with every batch
    batch_axis: int | None = 0  # the axis that concatenates samples; None: passed whole

    def describe_shape(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                 for d in tensor_type.shape.dim)


def model_signature(model: onnx.ModelProto, batch_axes: BatchAxes | None = None) -> list[InputSignature]:
    """The inputs a caller feeds (graph inputs that are not initializers), each with its
    batch axis (the module's batch-axis rules; ``batch_axes``: the ``--batch-axis`` items)."""
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
    name, dynamic_first = _batch_facts(signature)
    signature = [dataclasses.replace(s, batch_axis=_inferred_axis(s.shape, s.scalar, name, dynamic_first))
                 for s in signature]
    return apply_batch_axes(signature, batch_axes)


def _batch_facts(signature: Sequence[InputSignature]) -> tuple[str | None, set[str]]:
    """(the batch dim's name (rule 3), the inputs whose axis 0 is dynamic (rule 4))."""
    name = next((s.shape[0] for s in signature if s.shape and isinstance(s.shape[0], str)), None)
    return name, {s.name for s in signature if s.shape and not isinstance(s.shape[0], int)}


def _inferred_axis(shape: tuple[Dim, ...], scalar: bool, batch_name: str | None, dynamic_first: set[str]) -> int | None:
    """Rules 2-5 of the module docstring for one input or output."""
    if scalar:
        return None
    if batch_name is not None and batch_name in shape:
        return shape.index(batch_name)
    if not shape or not isinstance(shape[0], int):
        return 0
    dynamic = [axis for axis, dim in enumerate(shape) if not isinstance(dim, int)]
    if len(dynamic) == 1 and shape[dynamic[0]] is None and dynamic_first:
        return dynamic[0]
    return 0


def output_batch_axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """The batch axis of every graph output (rules 3-5, from the inputs' facts)."""
    name, dynamic_first = _batch_facts(model_signature(model))
    axes = {}
    for value_info in model.graph.output:
        tensor_type = value_info.type.tensor_type
        scalar = tensor_type.HasField("shape") and not tensor_type.shape.dim
        axes[value_info.name] = _inferred_axis(_dims(value_info), scalar, name, dynamic_first)
    return axes


def parse_batch_axes(items: Sequence[str] | None) -> dict[str, int | None]:
    """Parse ``--batch-axis`` items: ``NAME=AXIS`` or ``NAME=none`` (repeatable or comma-separated)."""
    axes: dict[str, int | None] = {}
    for item in items or ():
        for part in item.split(","):
            name, sep, value = part.rpartition("=")
            value = value.strip().lower()
            if not sep or not name or not (value == "none" or value.isdigit()):
                raise GraphcError(f"--batch-axis {part[:60]!r}: expected NAME=AXIS (an axis number from 0) or "
                                  f"NAME=none, e.g. state=1 or sr=none")
            axes[name] = None if value == "none" else int(value)
    return axes


def apply_batch_axes(signature: Sequence[InputSignature], batch_axes: BatchAxes | None) -> list[InputSignature]:
    """``signature`` with the ``--batch-axis`` items applied (rule 1), each checked."""
    batch_axes = dict(batch_axes or {})
    by_name = {s.name: s for s in signature}
    for name, axis in batch_axes.items():
        spec = by_name.get(name)
        if spec is None:
            raise GraphcError(f"--batch-axis {name}: not an input of the model "
                              f"(inputs: {', '.join(by_name) or 'none'})")
        if axis is None:
            continue
        if spec.scalar:
            raise GraphcError(f"--batch-axis {name}={axis}: input {name!r} is a scalar (0-d); only {name}=none fits")
        if spec.shape and axis >= len(spec.shape):
            raise GraphcError(f"--batch-axis {name}={axis}: input {name!r} is {spec.describe_shape()} "
                              f"(rank {len(spec.shape)}); give an axis from 0 to {len(spec.shape) - 1}, or none")
    return [dataclasses.replace(s, batch_axis=batch_axes[s.name]) if s.name in batch_axes else s
            for s in signature]


def describe_axes(signature: Sequence[InputSignature]) -> str:
    """``input: 0, state: 1, sr: none``: the batch axes, for messages."""
    return ", ".join(f"{s.name}: {'none' if s.batch_axis is None else s.batch_axis}" for s in signature)


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Dataset:
    """Validated model inputs and optional labels; ``axes`` names each input's batch axis
    (None: no batch axis, the array goes whole with every run; default: axis 0, none for 0-d)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    fixed_batch: int | None = None  # set when the model fixes its batch dim
    axes: dict[str, int | None] | None = None

    def __post_init__(self) -> None:
        if self.axes is None:
            self.axes = default_axes(self.inputs)

    def __len__(self) -> int:
        return count_rows(self.inputs, self.axes)

    def batches(self, batch_size: int = 32) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """(feeds, labels) chunks of ``batch_size`` rows (the model's own batch if fixed)."""
        step = self.fixed_batch or max(1, int(batch_size))
        for start in range(0, len(self), step):
            feeds = take_rows(self.inputs, start, start + step, self.axes)
            labels = None if self.labels is None else self.labels[start:start + step]
            yield feeds, labels

    def take(self, rows: int) -> Dataset:
        """The first ``rows`` rows (rounded up to the model's fixed batch)."""
        if self.fixed_batch:
            rows = -(-rows // self.fixed_batch) * self.fixed_batch
        labels = None if self.labels is None else self.labels[:rows]
        return Dataset(take_rows(self.inputs, 0, rows, self.axes), labels, self.source, self.fixed_batch,
                       dict(self.axes))

    def unbatched(self) -> dict[str, np.ndarray]:
        """The inputs with no batch axis (passed whole with every run)."""
        return {k: v for k, v in self.inputs.items() if self.axes.get(k) is None}


def default_axes(feeds: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    """Axis 0 for every array, none for a 0-d one (the layout before batch axes were named)."""
    return {k: 0 if np.ndim(v) else None for k, v in feeds.items()}


def _axis(feeds: Mapping[str, np.ndarray], axes: BatchAxes | None, name: str) -> int | None:
    if axes is not None and name in axes:
        return axes[name]
    return 0 if np.ndim(feeds[name]) else None


def count_rows(feeds: Mapping[str, np.ndarray], axes: BatchAxes | None = None) -> int:
    """Rows of ``feeds``: the length of the first batched input along its batch axis (1 when
    no input has a batch axis)."""
    for name, value in feeds.items():
        axis = _axis(feeds, axes, name)
        if axis is not None:
            return value.shape[axis]
    return 1


def take_rows(feeds: Mapping[str, np.ndarray], start: int, stop: int,
              axes: BatchAxes | None = None) -> dict[str, np.ndarray]:
    """Rows [start, stop) of every input along its batch axis (``axes``; default axis 0); an
    input with no batch axis (a 0-d sample rate, a constant per call) goes with every piece
    unchanged."""
    pieces = {}
    for name, value in feeds.items():
        axis = _axis(feeds, axes, name)
        pieces[name] = value if axis is None else value[(slice(None),) * axis + (slice(start, stop),)]
    return pieces


def repeat_rows(feeds: Mapping[str, np.ndarray], rows: int, axes: BatchAxes | None = None) -> dict[str, np.ndarray]:
    """``feeds`` with every batched input's rows repeated (cyclically) up to ``rows``."""
    repeated = {}
    for name, value in feeds.items():
        axis = _axis(feeds, axes, name)
        if axis is None or value.shape[axis] == rows:
            repeated[name] = value
        else:
            repeated[name] = np.take(value, np.arange(rows) % value.shape[axis], axis=axis)
    return repeated


def _row_hint(signature: Sequence[InputSignature]) -> str:
    return (f"batch axes: {describe_axes(signature)}; set one with --batch-axis NAME=AXIS "
            f"or NAME=none (no batch axis: passed whole)")


def validate(arrays: Mapping[str, np.ndarray], signature: Sequence[InputSignature], source: str) -> Dataset:
    """Check names, dtypes and shapes against the model's inputs; build a Dataset."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}  # numpy scalars (np.int64(16000)) as 0-d arrays
    expected = {s.name: s for s in signature}
    names = ", ".join(expected)
    for key in arrays:
        if key != LABELS_KEY and key not in expected:
            raise GraphcError(f"{source}: {key!r} is not an input of the model (inputs: {names}; "
                              f"optional: {LABELS_KEY})")
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise GraphcError(f"{source}: missing input {missing[0]!r} (the model's inputs: {names})")
    rows = None  # (count, input that set it)
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
        axis = spec.batch_axis
        for dim, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if dim != axis and isinstance(want, int) and want != got:
                hint = "" if axis == 0 else "; " + _row_hint(signature)
                raise GraphcError(f"{source}: input {spec.name!r} has shape {_fmt(array.shape)}, the model expects "
                                  f"{spec.describe_shape()} (axis {dim}: {got} != {want}){hint}")
        if axis is None:
            continue
        if axis >= array.ndim:
            raise GraphcError(f"{source}: input {spec.name!r} has shape {_fmt(array.shape)}, no batch axis {axis}; "
                              + _row_hint(signature))
        count = array.shape[axis]
        if spec.shape and isinstance(spec.shape[axis], int):
            if count % spec.shape[axis]:
                raise GraphcError(f"{source}: input {spec.name!r} has {count} rows, not a multiple of the "
                                  f"model's fixed batch {spec.shape[axis]} (expects {spec.describe_shape()})")
            fixed_batch = spec.shape[axis]
        if rows is not None and count != rows[0]:
            raise GraphcError(f"{source}: input {spec.name!r} has {count} rows (axis {axis} of "
                              f"{_fmt(array.shape)}), input {rows[1]!r} has {rows[0]}; " + _row_hint(signature))
        rows = (count, spec.name) if rows is None else rows
    rows = 1 if rows is None else rows[0]  # only inputs without a batch axis: one sample
    if not rows:
        raise GraphcError(f"{source}: no samples")
    labels = arrays.get(LABELS_KEY)
    if labels is not None and labels.ndim != 1:
        raise GraphcError(f"{source}: {LABELS_KEY} has shape {_fmt(labels.shape)}; labels are one value a row "
                          f"(rank 1)")
    if labels is not None and len(labels) != rows:
        raise GraphcError(f"{source}: {LABELS_KEY} has {len(labels)} rows, the inputs have {rows}")
    return Dataset({s.name: arrays[s.name] for s in signature}, labels, source, fixed_batch,
                   {s.name: None if np.ndim(arrays[s.name]) == 0 else s.batch_axis for s in signature})


def check_unbatched_agree(datasets: Mapping[str, Dataset | None]) -> None:
    """Inputs with no batch axis are one value per call: every data source must give the
    same one (``datasets``: flag -> Dataset)."""
    seen: dict[str, tuple[str, np.ndarray]] = {}
    for flag, dataset in datasets.items():
        if dataset is None:
            continue
        for name, value in dataset.unbatched().items():
            if name not in seen:
                seen[name] = (flag, value)
            elif not (seen[name][1].shape == value.shape and np.array_equal(seen[name][1], value)):
                raise GraphcError(f"input {name!r} has no batch axis (one value passed with every run), but "
                                  f"{seen[name][0]} and {flag} give different values; give the same one, or "
                                  f"--batch-axis {name}=AXIS if it has one")


def _read_npy_dir(path: pathlib.Path) -> dict[str, np.ndarray]:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise GraphcError(f"{path}: directory holds no .npy files (expected <input name>.npy per input)")
    return {file.stem: read_npy(file) for file in files}


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
        arrays = {signature[0].name: read_npy(path)}
    elif path.is_file():
        arrays = read_npz(path)
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
        elif axis == (0 if spec.batch_axis is None else spec.batch_axis):
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


def accepted_scalars(model: onnx.ModelProto) -> dict[str, int]:
    """For 0-d integer inputs the model compares with a constant (``Equal``, reached through
    ``PASSTHROUGH_OPS``), that constant: a value the model accepts (silero-vad's sample rate
    ``sr``: 16000)."""
    wanted = {s.name for s in model_signature(model) if s.scalar and np.issubdtype(s.dtype, np.integer)}
    if not wanted:
        return {}
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    origin = {name: name for name in wanted}  # tensor -> the input it carries
    found: dict[str, int] = {}
    for node in model.graph.node:
        carried = [origin[i] for i in node.input if i in origin]
        if node.op_type in PASSTHROUGH_OPS and node.input and node.input[0] in origin:
            origin.update({out: origin[node.input[0]] for out in node.output})
        elif node.op_type == "Equal" and len(carried) == 1:
            other = next(i for i in node.input if i not in origin)
            if other in constants:
                value = numpy_helper.to_array(constants[other])
                if value.size == 1:
                    found.setdefault(carried[0], int(value.reshape(-1)[0]))
    return found


def synthetic_dataset(model: onnx.ModelProto, batches: int = 1,
                      shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0,
                      batch_axes: BatchAxes | None = None) -> Dataset:
    """``batches`` batches of inputs shaped from the signature and ``shapes`` overrides, each
    input's batches joined along its batch axis (``batch_axes``: the ``--batch-axis`` items)."""
    signature = model_signature(model, batch_axes)
    shapes = check_shape_overrides(signature, shapes)
    vocab = embedding_sizes(model)
    scalars = accepted_scalars(model)
    rng = np.random.default_rng(seed)
    full_shapes = {}
    batch = None
    for spec in signature:
        shape = resolve_shape(spec, shapes)
        axis = spec.batch_axis
        full_shapes[spec.name] = shape
        if shape and axis is not None and axis < len(shape):
            full_shapes[spec.name] = (*shape[:axis], shape[axis] * batches, *shape[axis + 1:])
            batch = shape[axis] if batch is None else batch
    _check_synthetic_bytes(signature, full_shapes)
    arrays = {spec.name: np.array(scalars[spec.name], dtype=spec.dtype) if spec.name in scalars
              else _synthetic_array(spec, full_shapes[spec.name], vocab.get(spec.name), rng) for spec in signature}
    dataset = validate(arrays, signature, "synthetic inputs")
    dataset.fixed_batch = batch or 1
    return dataset


def synthetic_feeds(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], batch: int,
                    batch_axes: BatchAxes | None = None) -> dict[str, np.ndarray]:
    """One batch of synthetic inputs, a symbolic batch dim set to ``batch`` unless ``shapes``
    sets it."""
    overrides = dict(shapes)
    signature = model_signature(model, batch_axes)
    for spec in signature:
        axis = spec.batch_axis
        if axis is not None and axis < len(spec.shape):
            dim = spec.shape[axis]
            if isinstance(dim, str) and dim not in overrides and spec.name not in overrides:
                overrides[dim] = (batch,)
    feeds, _ = next(synthetic_dataset(model, shapes=overrides, batch_axes=batch_axes).batches(batch))
    return feeds
