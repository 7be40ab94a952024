"""Opset upgrades at load: a model older than its passes need is converted where that is exact.

Each pass declares the lowest default-domain (``ai.onnx``) opset it rewrites, ``min_opset``
(``graphc.pass_api.Pass``): ``int8`` 13 (per-axis QuantizeLinear/DequantizeLinear), ``distill``
13 (its training engine's range starts there); ``fold`` and ``prune`` have none (they read the
attribute forms of Split/Squeeze/Unsqueeze/Reduce* as well as the input forms). The pipeline
asks ``meet_min_opset`` for the largest of them before any pass runs:

1. a model at that opset or newer is returned as it is;
2. otherwise it is converted with ``onnx.version_converter.convert_version`` and the original
   and the converted model are run with onnxruntime on the same sample inputs (``--data``'s
   first rows, else graphc's synthetic inputs); the conversion is taken only when every output
   is equal bit for bit (same dtype, shape and values), with a note in the report;
3. a conversion that fails, that changes an output, or that cannot be checked (no sample
   inputs, the model does not run on them) is refused in one line (exit 2) that gives the
   command converting the model by hand.

Only the default domain is converted; other domains (``com.microsoft``...) keep their versions.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from graphc.errors import GraphcError, first_line


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ``ai.onnx`` opset (0 when it imports none)."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def required_opset(passes: Sequence) -> tuple[int, str | None]:
    """The largest ``min_opset`` of ``passes`` and the name of the pass that sets it."""
    best, name = 0, None
    for p in passes:
        if getattr(p, "min_opset", 0) > best:
            best, name = p.min_opset, p.name
    return best, name


def convert_command(path: str, target: int) -> str:
    """The one-line command that converts ``path`` to opset ``target`` by hand (written to the
    current directory)."""
    stem = pathlib.PurePath(path).name.removesuffix(".onnx")
    return (f"python -c \"import onnx; from onnx import version_converter as v; "
            f"onnx.save(v.convert_version(onnx.load({path!r}), {target}), {stem + f'.op{target}.onnx'!r})\"")


def _same(before: list[np.ndarray], after: list[np.ndarray]) -> str | None:
    """None when the outputs are equal bit for bit, else what differs."""
    if len(before) != len(after):
        return f"{len(after)} outputs instead of {len(before)}"
    for i, (b, a) in enumerate(zip(before, after)):
        b, a = np.asarray(b), np.asarray(a)
        if b.dtype != a.dtype or b.shape != a.shape:
            return f"output {i} is {a.dtype}{list(a.shape)} instead of {b.dtype}{list(b.shape)}"
        if b.dtype.kind in "fc":
            if b.tobytes() != a.tobytes() and not np.array_equal(b, a, equal_nan=True):
                return f"output {i} differs by up to {float(np.nanmax(np.abs(b.astype(np.float64) - a))):.3g}"
        elif not np.array_equal(b, a):
            return f"output {i} differs"
    return None


def meet_min_opset(model: onnx.ModelProto, passes: Sequence, path: str,
                   sample: Callable[[], dict[str, np.ndarray]],
                   run: Callable[[onnx.ModelProto, dict[str, np.ndarray]], list[np.ndarray]],
                   note: Callable[[str], None]) -> onnx.ModelProto:
    """``model``, or its exact conversion to the opset ``passes`` need (rules in the module
    docstring). ``sample()`` gives one batch of inputs (GraphcError when none can be made),
    ``run`` runs a model on it, ``note`` takes the report's note."""
    target, who = required_opset(passes)
    opset = default_opset(model)
    if opset >= target:
        return model
    refusal = (f"{who} needs opset {target} or newer; {path} has opset {opset}, and converting it "
               f"to {target} was not taken because")
    hint = f"convert it yourself (check the result) with: {convert_command(path, target)}"
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter's own failures (unsupported adapters) are many types
        raise GraphcError(f"{refusal} onnx.version_converter failed ({first_line(exc)}); {hint}") from None
    try:
        feeds = sample()
    except GraphcError as exc:
        raise GraphcError(f"{refusal} it could not be checked on sample inputs ({exc}); {hint}") from None
    try:
        before = run(model, feeds)
        after = run(converted, feeds)
    except GraphcError as exc:
        raise GraphcError(f"{refusal} it could not be run on sample inputs ({exc}); {hint}") from None
    diff = _same(before, after)
    if diff is not None:
        raise GraphcError(f"{refusal} it is not exact ({diff}); {hint}")
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())
    note(f"converted from opset {opset} to {target} for {who} with onnx.version_converter: outputs equal bit for "
         f"bit on sample inputs ({shapes})")
    return converted
