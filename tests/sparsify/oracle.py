"""An independent numpy reference for the sparsify tests (it never calls ``graphc.sparsity``).

- ``rows_by_reduction(weight, op, trans_b)``: the weight as ``[planes, outputs, reduction]``
  with the reduction axis last, written from the ONNX operator definitions: MatMul ``B [K, N]``
  and Gemm ``transB=0`` reduce over B's axis 0, Gemm ``transB=1`` over axis 1, Conv
  ``W [O, I/g, kh, kw]`` over the input channel at each kernel tap (planes = kh*kw);
  ``back_to_weight`` is its inverse.
- ``nm_holds`` / ``blocks_hold``: does a view's zero set obey N:M / RxC blocks?
- ``magnitude_zero_mask``: which weights a magnitude choice must zero (the lowest ``|w|``, the
  M-N lowest of every group, or the blocks with the lowest ``sum |w|``), ties to the earlier
  position of the view.
- ``Layer`` / ``float_layers``: the MatMul/Gemm/Conv weights of a model proto.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


def rows_by_reduction(weight: np.ndarray, op: str, trans_b: int = 0) -> np.ndarray:
    """``[planes, outputs, reduction]``, reduction last (see the module docstring)."""
    if op == "Conv":
        out, per_group = weight.shape[:2]
        taps = weight.reshape(out, per_group, -1)            # [O, I, taps]
        return np.transpose(taps, (2, 0, 1)).copy()          # [taps, O, I]
    if op == "Gemm" and trans_b:
        return weight[None].copy()                           # B [N, K]
    return np.transpose(weight)[None].copy()                 # B [K, N] -> [N, K]


def back_to_weight(view: np.ndarray, op: str, trans_b: int, shape: tuple[int, ...]) -> np.ndarray:
    if op == "Conv":
        return np.transpose(view, (1, 2, 0)).reshape(shape)
    if op == "Gemm" and trans_b:
        return view[0].reshape(shape)
    return np.transpose(view[0]).reshape(shape)


def nm_holds(view: np.ndarray, n: int, m: int) -> bool:
    """At most ``n`` non-zeros in every ``m`` consecutive reduction positions."""
    planes, outputs, reduction = view.shape
    assert reduction % m == 0
    for p in range(planes):
        for o in range(outputs):
            for start in range(0, reduction, m):
                if np.count_nonzero(view[p, o, start:start + m]) > n:
                    return False
    return True


def blocks_hold(view: np.ndarray, rows: int, cols: int) -> bool:
    """Every zero lies in an all-zero block of ``rows`` outputs x ``cols`` reduction positions."""
    planes, outputs, reduction = view.shape
    assert outputs % rows == 0 and reduction % cols == 0
    zero = view == 0
    covered = np.zeros_like(zero)
    for p in range(planes):
        for r in range(0, outputs, rows):
            for c in range(0, reduction, cols):
                if zero[p, r:r + rows, c:c + cols].all():
                    covered[p, r:r + rows, c:c + cols] = True
    return bool((zero == covered).all())


def fits(view_shape: tuple[int, int, int], pattern: tuple) -> bool:
    """Whether a view of this shape divides into the pattern's groups or blocks."""
    _, outputs, reduction = view_shape
    if pattern[0] == "nm":
        return reduction % pattern[2] == 0
    if pattern[0] == "block":
        return outputs % pattern[1] == 0 and reduction % pattern[2] == 0
    return True


def magnitude_zero_mask(view: np.ndarray, pattern: tuple, ratio: float) -> np.ndarray:
    """The zero mask (view shape) a uniform magnitude choice gives; ``pattern`` is
    ("unstructured",), ("nm", n, m) or ("block", rows, cols)."""
    score = np.abs(view.astype(np.float64))
    zero = np.zeros(view.shape, dtype=bool)
    planes, outputs, reduction = view.shape
    if pattern[0] == "unstructured":
        flat = score.ravel()
        count = round(ratio * flat.size)
        order = sorted(range(flat.size), key=lambda i: (flat[i], i))[:count]
        zero.ravel()[order] = True
        return zero
    if pattern[0] == "nm":
        _, n, m = pattern
        for p in range(planes):
            for o in range(outputs):
                for start in range(0, reduction, m):
                    group = score[p, o, start:start + m]
                    lowest = sorted(range(m), key=lambda i: (group[i], i))[:m - n]
                    zero[p, o, [start + i for i in lowest]] = True
        return zero
    _, rows, cols = pattern
    blocks = []
    for p in range(planes):
        for r in range(0, outputs, rows):
            for c in range(0, reduction, cols):
                blocks.append((score[p, r:r + rows, c:c + cols].sum(), len(blocks), (p, r, c)))
    count = round(ratio * view.size / (rows * cols))
    for _, _, (p, r, c) in sorted(blocks)[:count]:
        zero[p, r:r + rows, c:c + cols] = True
    return zero


@dataclass
class Layer:
    """A MatMul/Gemm/Conv weight initializer of a model and the node reading it."""

    name: str
    op: str
    node: str
    trans_b: int
    groups: int
    activation: str  # the node's input 0
    weight: np.ndarray

    def view(self, weight: np.ndarray | None = None) -> np.ndarray:
        return rows_by_reduction(self.weight if weight is None else weight, self.op, self.trans_b)

    def to_weight(self, view: np.ndarray) -> np.ndarray:
        return back_to_weight(view, self.op, self.trans_b, self.weight.shape)


def float_layers(model: onnx.ModelProto) -> dict[str, Layer]:
    """Initializer name -> Layer, for every float initializer read as input 1 of a MatMul
    (rank 2), Gemm or Conv of the main graph (first reader; the fixtures share none)."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, Layer] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits or name in found:
            continue
        weight = numpy_helper.to_array(inits[name])
        if weight.dtype.kind != "f" or (node.op_type == "MatMul" and weight.ndim != 2):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        found[name] = Layer(name, node.op_type, node.name, int(attrs.get("transB", 0)), int(attrs.get("group", 1)),
                            node.input[0], weight)
    return found


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def with_weights(model: onnx.ModelProto, replaced: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``replaced`` hold the given arrays."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in replaced:
            tensor.CopyFrom(numpy_helper.from_array(replaced[tensor.name], tensor.name))
    return copy


def glob_matches(patterns: list[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns for name in names)
