"""Rule 8 of ``graphc.passes.distill``, in the worker: zeros kept and sparsity reached while
training.

The training copy reads each masked weight W through ``Mul(W, keep)`` (``add_keep_masks``),
``keep`` a frozen checkpoint parameter, 1 where W may be non-zero. So the gradient of a
masked position is exactly 0, and AdamW moves a weight whose gradient has always been 0 by
exactly 0 (no first moment, decay of 0 is 0): a weight zero when distill starts stays exactly
zero, checked at the end (``check_fixed``), not re-zeroed.

Gradual sparsity (``sparsity=``, ``Schedule``): the zero share of the chosen layers rises
from where it starts to ``final`` on Zhu & Gupta's cubic schedule (``graphc.sparsity.
cubic_ratio``) over the first ``ramp`` share of the steps; every ``mask_every`` steps the
masks are chosen again on the current weights (``graphc.sparsity.choose``: the same
patterns, scores and scopes as the ``sparsify`` pass; wanda's channel norms are measured
once, by the parent, on the starting model), and the last update, at the first update step
at or past the ramp, applies ``final`` exactly; after it the mask stays fixed and training
fine-tunes. A mask never regrows: each new mask is ANDed with the old one. A newly masked
weight is set to 0; AdamW's running moments may still move it a little afterwards, but
``keep`` makes it invisible to every forward pass, and what is written back is ``W * keep``
(``effective``). Only epochs that end after the last update count as the best epoch.

``graphc.sparsity`` is loaded by its file path (``load_selection``): graphc is not installed
in the training venv, and that module imports numpy only.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np

KEEP_SUFFIX = "__graphc_keep"


def keep_name(weight: str) -> str:
    return weight + KEEP_SUFFIX


def add_keep_masks(model, names: list[str]) -> list[str]:
    """Every node input reading a weight in ``names`` reads ``Mul(weight, keep)`` instead; the
    keep initializer is ``weight != 0`` (float32). Returns the keep names (in place)."""
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    keeps, nodes = [], []
    for name in names:
        values = numpy_helper.to_array(initializers[name])
        keep = keep_name(name)
        model.graph.initializer.append(numpy_helper.from_array((values != 0).astype(np.float32), keep))
        nodes.append(helper.make_node("Mul", [name, keep], [name + "__graphc_masked"], name=keep + "_mul"))
        keeps.append(keep)
    masked = {name: name + "__graphc_masked" for name in names}
    for node in model.graph.node:
        for i, tensor in enumerate(node.input):
            if tensor in masked:
                node.input[i] = masked[tensor]
    for i, node in enumerate(nodes):
        model.graph.node.insert(i, node)
    return keeps


def load_selection(path: str):
    import sys

    spec = importlib.util.spec_from_file_location("graphc_sparsity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def effective(state, name: str, masked) -> np.ndarray:
    """The weight as the forward pass sees it: ``W * keep`` for a masked weight (exact zeros)."""
    data = state.parameters[name].data
    if name not in masked:
        return data
    return np.where(state.parameters[keep_name(name)].data != 0, data, np.zeros((), dtype=data.dtype))


def check_fixed(state, names: list[str]) -> None:
    """The fixed masks held: every weight masked from the start is still exactly 0."""
    for name in names:
        moved = (state.parameters[keep_name(name)].data == 0) & (state.parameters[name].data != 0)
        if moved.any():
            raise RuntimeError(f"{int(moved.sum())} zero weights of {name!r} moved during training")


class Schedule:
    """Gradual sparsity over the training steps (see the module docstring)."""

    def __init__(self, spec: dict, state, total_steps: int, norms: dict[str, np.ndarray]):
        self.selection = load_selection(spec["module"])
        sel = self.selection
        self.layers = {name: sel.Layout(kind, groups) for name, (kind, groups) in spec["layers"].items()}
        self.pattern = sel.Pattern.parse(spec["pattern"], spec["block"])
        self.final = float(spec["final"])
        self.scope, self.max_layer_ratio, self.by = spec["scope"], float(spec["max_layer_ratio"]), spec["by"]
        self.every = max(1, int(spec["every"]))
        self.ramp_steps = int(round(float(spec["ramp"]) * total_steps))
        self.last_update = min(int(math.ceil(self.ramp_steps / self.every)) * self.every, max(total_steps - 1, 0))
        self.norms = norms
        self.initial = float(spec["initial"])  # the zero share when distill started (not on a resume)

    def due(self, step: int) -> bool:
        return step <= self.last_update and (step % self.every == 0 or step == self.last_update)

    def ratio(self, step: int) -> float:
        if step >= self.last_update:
            return self.final
        return max(self.initial, self.selection.cubic_ratio(step, 0, self.ramp_steps, self.initial, self.final))

    def update(self, state, step: int) -> None:
        """New masks for ``step``'s ratio; newly masked weights set to 0."""
        sel = self.selection
        names = list(self.layers)
        weights = [effective(state, n, self.layers) for n in names]
        views = [sel.to_view(w, self.layers[n]) for n, w in zip(names, weights)]
        score_views = [sel.scores(v, self.layers[n], self.norms.get(n) if self.by == "wanda" else None)
                       for n, v in zip(names, views)]
        masks = sel.choose(score_views, self.pattern, self.ratio(step), self.scope, self.max_layer_ratio,
                           per_row=self.by == "wanda")
        for name, weight, mask in zip(names, weights, masks):
            old = state.parameters[keep_name(name)].data != 0
            keep = sel.from_view(mask, self.layers[name], weight.shape) & old
            state.parameters[keep_name(name)] = keep.astype(np.float32)
            state.parameters[name] = np.where(keep, weight, np.zeros((), dtype=weight.dtype))

    def achieved(self, state) -> float:
        """The zero share of the chosen layers' masks now."""
        size = sum(state.parameters[keep_name(n)].data.size for n in self.layers)
        return sum(int((state.parameters[keep_name(n)].data == 0).sum()) for n in self.layers) / max(size, 1)

    def settled(self, step: int) -> bool:
        """Whether the masks are final after ``step`` (the last update has run)."""
        return step >= self.last_update


def read_norms(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}
