"""Sparsity patterns, and the choice of which weights become zero.

Shared by the ``sparsify`` pass, ``graphc inspect --sparsity`` and distill's gradual
sparsity. It imports numpy only (and works with numpy 1.26): the distill worker runs in the
training venv, where graphc is not installed, and loads this file by its path. Written here
rather than taken from a library: the ONNX tools have no sparsity code, and torch's
``torch.nn.utils.prune`` works on modules, has no N:M or block patterns and no ranking across
layers after normalisation.

Rules:

1. The view. A layer's weight is seen as planes ``[P, N, K]``: N outputs, K the reduction
   axis, P independent planes (``to_view``/``from_view``):
   - MatMul ``B [K, N]`` and Gemm with ``transB=0``: the view is ``B.T`` (P = 1);
   - Gemm with ``transB=1``: ``B [N, K]`` as it is;
   - Conv ``W [O, I/g, kh, kw]``: ``[kh*kw, O, I/g]``, the reduction axis is the input
     channel at each kernel tap (im2col with channels innermost, the layout of NHWC kernels
     and the axis TensorRT's 2:4 rule reads for convolutions).
2. Patterns (``Pattern.parse``): ``unstructured``; ``N:M``, at most N non-zeros in every M
   consecutive weights along K (needs K % M == 0); block ``RxC``, R consecutive outputs by C
   consecutive reduction positions all zero (needs N % R == 0 and K % C == 0). ``conforms``
   checks a weight against a pattern.
3. Scores (``scores``): ``magnitude`` |w|; ``wanda`` |w| * ||x_k||_2, the L2 norm of the
   input channel k over every row and position of the data (Sun et al. 2023, "A Simple and
   Effective Pruning Approach for Large Language Models"); a grouped Conv reads the channels
   of its output's group.
4. Units (``units``): unstructured, a weight; N:M, the M-N lowest-scoring weights of each group
   (the others are never zeroed); block, a whole block scored by the sum of its weights'
   scores. Units are zeroed from the lowest score up, ties broken by position (a stable
   sort), so the result depends on the weights only: two runs write the same bytes.
5. How many (``choose``): the zero share of the chosen layers' weights is ``ratio``,
   rounded to the nearest whole unit.
   - ``uniform``: every layer gets it. With ``per_row`` (wanda, unstructured) each output
     row of a layer is ranked on its own (Sun et al. 2023 section 3: comparison per output).
   - ``global``: unit scores are divided by the layer's mean unit score, ranked across
     layers, and no layer loses more than ``max_layer_ratio`` of its units.
   - N:M zeroes every candidate at ``ratio = 1 - N/M`` (the gradual schedule passes smaller
     ratios on the way, lowest candidates first); a weight already zero scores 0, so it is
     among the first chosen and a mask only grows as the ratio rises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

KINDS = ("kn", "nk", "conv")  # MatMul B / Gemm transB=0; Gemm transB=1; Conv


@dataclass(frozen=True)
class Layout:
    """How a weight is laid out (rule 1): ``kind`` one of KINDS, ``groups`` of a Conv."""

    kind: str
    groups: int = 1


def to_view(weight: np.ndarray, layout: Layout) -> np.ndarray:
    """The ``[P, N, K]`` view of ``weight`` (rule 1)."""
    if layout.kind == "kn":
        return weight.T[None]
    if layout.kind == "nk":
        return weight[None]
    out, per_group = weight.shape[:2]
    return np.moveaxis(weight.reshape(out, per_group, -1), 2, 0)


def from_view(view: np.ndarray, layout: Layout, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``to_view``: an array of the weight's ``shape``."""
    if layout.kind == "kn":
        return np.ascontiguousarray(view[0].T)
    if layout.kind == "nk":
        return np.ascontiguousarray(view[0])
    return np.ascontiguousarray(np.moveaxis(view, 0, 2).reshape(shape))


@dataclass(frozen=True)
class Pattern:
    """Rule 2: ``kind`` unstructured / nm / block; ``n``, ``m`` of N:M; ``rows``, ``cols`` of a block."""

    kind: str
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @classmethod
    def parse(cls, pattern: str, block: str = "1x4") -> Pattern:
        """``unstructured``, ``N:M`` (0 < N < M) or ``block`` (with ``block=RxC``); ValueError otherwise."""
        if pattern == "unstructured":
            return cls("unstructured")
        if pattern == "block":
            found = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", block)
            if not found:
                raise ValueError(f"block={block!r} is not RxC with positive integers (e.g. 1x4, 4x1, 16x4)")
            rows, cols = int(found.group(1)), int(found.group(2))
            if rows * cols < 2:
                raise ValueError(f"block={block} is a single weight; use pattern=unstructured")
            return cls("block", rows=rows, cols=cols)
        found = re.fullmatch(r"([1-9][0-9]*):([1-9][0-9]*)", pattern)
        if not found or int(found.group(1)) >= int(found.group(2)):
            raise ValueError(f"pattern={pattern!r} is not unstructured, block, or N:M with 0 < N < M (e.g. 2:4)")
        return cls("nm", n=int(found.group(1)), m=int(found.group(2)))

    def __str__(self) -> str:
        return {"unstructured": "unstructured", "nm": f"{self.n}:{self.m}",
                "block": f"block {self.rows}x{self.cols}"}[self.kind]

    def implied_ratio(self) -> float | None:
        """The zero share an N:M pattern fixes; None for the others."""
        return 1 - self.n / self.m if self.kind == "nm" else None

    def misfit(self, view_shape: tuple[int, ...]) -> str | None:
        """Why a weight of this ``[P, N, K]`` view shape cannot take the pattern, or None."""
        _, outputs, reduction = view_shape
        if self.kind == "nm" and reduction % self.m:
            return f"its reduction length {reduction} is not a multiple of {self.m}"
        if self.kind == "block" and (outputs % self.rows or reduction % self.cols):
            return (f"its {outputs} outputs x {reduction} reduction positions do not divide into "
                    f"{self.rows}x{self.cols} blocks")
        return None


def conforms(view: np.ndarray, pattern: Pattern) -> bool | None:
    """Whether a ``[P, N, K]`` view (zeros = ``view == 0``) conforms; None when it cannot fit."""
    if pattern.misfit(view.shape) is not None:
        return None
    nonzero = view != 0
    planes, outputs, reduction = view.shape
    if pattern.kind == "nm":
        return bool((nonzero.reshape(planes, outputs, reduction // pattern.m, pattern.m).sum(-1) <= pattern.n).all())
    if pattern.kind == "block":
        blocks = nonzero.reshape(planes, outputs // pattern.rows, pattern.rows, reduction // pattern.cols, pattern.cols)
        whole = (~blocks.any(axis=(2, 4))).sum()  # all-zero blocks; conforming: every zero lies in one
        return bool((~nonzero).sum() == whole * pattern.rows * pattern.cols)
    return True


def skippable(view: np.ndarray, pattern: Pattern) -> int:
    """Weights a kernel of ``pattern`` can skip: zeros in whole zero blocks (block), ``M-N`` of
    every conforming group (N:M), every zero (unstructured)."""
    if pattern.misfit(view.shape) is not None:
        return 0
    zero = view == 0
    planes, outputs, reduction = view.shape
    if pattern.kind == "nm":
        groups = zero.reshape(planes, outputs, reduction // pattern.m, pattern.m).sum(-1)
        return int((groups >= pattern.m - pattern.n).sum()) * (pattern.m - pattern.n)
    if pattern.kind == "block":
        blocks = zero.reshape(planes, outputs // pattern.rows, pattern.rows, reduction // pattern.cols, pattern.cols)
        return int(blocks.all(axis=(2, 4)).sum()) * pattern.rows * pattern.cols
    return int(zero.sum())


def scores(view: np.ndarray, layout: Layout, channel_norms: np.ndarray | None = None) -> np.ndarray:
    """Rule 3: float64 scores of a ``[P, N, K]`` view; ``channel_norms`` (wanda) has one L2
    norm per input channel of the layer (I = groups * K for a Conv)."""
    magnitude = np.abs(view.astype(np.float64))
    if channel_norms is None:
        return magnitude
    norms = np.asarray(channel_norms, dtype=np.float64)
    outputs, reduction = view.shape[1:]
    if layout.kind == "conv" and layout.groups > 1:
        per_output = norms.reshape(layout.groups, reduction)[np.arange(outputs) // (outputs // layout.groups)]
        return magnitude * per_output[None]
    return magnitude * norms.reshape(1, 1, reduction)


@dataclass
class Units:
    """Rule 4 for one layer: unit scores (float64, position order), weights per unit, and the
    flat view positions of each unit (``positions[i]`` are the weights of unit i)."""

    scores: np.ndarray
    size: int
    positions: np.ndarray  # [units, size] flat indices into the view


def units(score_view: np.ndarray, pattern: Pattern) -> Units:
    """The units of one layer's score view (rule 4)."""
    planes, outputs, reduction = score_view.shape
    flat_index = np.arange(score_view.size).reshape(score_view.shape)
    if pattern.kind == "unstructured":
        return Units(score_view.ravel(), 1, flat_index.reshape(-1, 1))
    if pattern.kind == "nm":
        grouped = score_view.reshape(-1, pattern.m)
        order = np.argsort(grouped, axis=1, kind="stable")[:, :pattern.m - pattern.n]
        positions = np.take_along_axis(flat_index.reshape(-1, pattern.m), order, axis=1).reshape(-1, 1)
        return Units(np.take_along_axis(grouped, order, axis=1).ravel(), 1, positions)
    shape = (planes, outputs // pattern.rows, pattern.rows, reduction // pattern.cols, pattern.cols)
    blocks = score_view.reshape(shape).sum(axis=(2, 4)).ravel()
    positions = flat_index.reshape(shape).transpose(0, 1, 3, 2, 4).reshape(blocks.size, -1)
    return Units(blocks, pattern.rows * pattern.cols, positions)


def _lowest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` lowest values, ties to the earlier position."""
    return np.argsort(values, kind="stable")[:max(count, 0)]


def choose(score_views: list[np.ndarray], pattern: Pattern, ratio: float, scope: str = "uniform",
           max_layer_ratio: float = 1.0, per_row: bool = False) -> list[np.ndarray]:
    """Keep masks (bool, the views' shapes, True = kept) for ``ratio`` zeros (rule 5)."""
    if pattern.kind == "unstructured" and per_row and scope == "uniform":
        return [_per_row_mask(view, ratio) for view in score_views]
    layer_units = [units(view, pattern) for view in score_views]
    chosen: list[np.ndarray]
    if scope == "uniform" or pattern.kind == "nm" and ratio >= 1 - pattern.n / pattern.m:
        chosen = []
        for view, u in zip(score_views, layer_units):
            wanted = int(round(ratio * view.size / u.size))
            chosen.append(_lowest(u.scores, min(wanted, len(u.scores))))
    else:
        chosen = _global(score_views, layer_units, ratio, max_layer_ratio)
    masks = []
    for view, u, picked in zip(score_views, layer_units, chosen):
        keep = np.ones(view.size, dtype=bool)
        keep[u.positions[picked].ravel()] = False
        masks.append(keep.reshape(view.shape))
    return masks


def _per_row_mask(view: np.ndarray, ratio: float) -> np.ndarray:
    """Uniform wanda: each output row (all planes, all K) zeroes ``round(ratio * row)`` weights."""
    rows = np.moveaxis(view, 1, 0).reshape(view.shape[1], -1)
    count = int(round(ratio * rows.shape[1]))
    order = np.argsort(rows, axis=1, kind="stable")[:, :count]
    keep = np.ones(rows.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=1)
    return np.moveaxis(keep.reshape(view.shape[1], view.shape[0], view.shape[2]), 0, 1)


def _global(score_views, layer_units: list[Units], ratio: float, max_layer_ratio: float) -> list[np.ndarray]:
    """Rule 5, global: normalised unit scores ranked across layers, each layer capped."""
    total = sum(view.size for view in score_views)
    target = int(round(ratio * total))
    normalised, layer_of, rank_in_layer, sizes = [], [], [], []
    for i, u in enumerate(layer_units):
        mean = float(u.scores.mean()) if len(u.scores) else 0.0
        normalised.append(u.scores / mean if mean > 0 else np.zeros_like(u.scores))
        order = np.argsort(u.scores, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        rank_in_layer.append(rank)
        layer_of.append(np.full(len(u.scores), i))
        sizes.append(np.full(len(u.scores), u.size))
    scores_all, layers_all = np.concatenate(normalised), np.concatenate(layer_of)
    ranks_all, sizes_all = np.concatenate(rank_in_layer), np.concatenate(sizes)
    caps = np.array([int(np.floor(max_layer_ratio * len(u.scores) + 1e-9)) for u in layer_units])
    eligible = ranks_all < caps[layers_all]
    # order: normalised score, then each layer's own order (its rank), then layer position
    order = np.lexsort((layers_all, ranks_all, scores_all))
    order = order[eligible[order]]
    taken = np.cumsum(sizes_all[order])
    k = int(np.searchsorted(taken, target, side="left"))  # taken[k-1] < target <= taken[k]
    count = len(order)
    if k < len(order):
        below = int(taken[k - 1]) if k else 0
        count = k + 1 if int(taken[k]) - target <= target - below else k  # the nearest whole unit
    picked = order[:count]
    offsets = np.cumsum([0] + [len(u.scores) for u in layer_units])
    return [picked[layers_all[picked] == i] - offsets[i] for i in range(len(layer_units))]


def cubic_ratio(step: int, start_step: int, ramp_steps: int, initial: float, final: float) -> float:
    """Zhu & Gupta 2017 ("To prune, or not to prune"), eq. 1: the sparsity at ``step`` rising from
    ``initial`` to ``final`` over ``ramp_steps`` steps from ``start_step``, ``final`` after."""
    if ramp_steps <= 0 or step >= start_step + ramp_steps:
        return final
    progress = max(0.0, (step - start_step) / ramp_steps)
    return final + (initial - final) * (1.0 - progress) ** 3
