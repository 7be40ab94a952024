"""Accuracy metrics of a model on labelled or reference data.

- ``top1`` / ``top5``: share of samples whose label (integer ``labels``) is the argmax / in
  the 5 largest scores of the first output;
- ``cosine``: mean per-sample cosine similarity of the first output with a reference: a
  float ``labels`` array of the output's shape, or the outputs of a reference model;
- ``agreement``: share of samples whose argmax equals the reference model's argmax.

Samples are taken along the first output's batch axis (``output_axis``: axis 0 by default,
``graphc.data.output_batch_axes`` where the pipeline and ``graphc eval`` call it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphc.data import Dataset
from graphc.errors import GraphcError

METRICS = ("top1", "top5", "cosine", "agreement")
NEEDS_INT_LABELS = {"top1", "top5"}

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (axis 0) of two same-shaped arrays; 0-vs-0 is 1."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    dot = (a * b).sum(1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (norms == 0) & (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(norms, 1e-300))


def check_metric(metric: str, dataset: Dataset, has_reference: bool) -> None:
    """Fail early when ``metric`` cannot be computed from this data."""
    if metric not in METRICS:
        raise GraphcError(f"unknown metric {metric!r} (metrics: {', '.join(METRICS)})")
    labels = dataset.labels
    if metric in NEEDS_INT_LABELS and (labels is None or not np.issubdtype(labels.dtype, np.integer)):
        raise GraphcError(f"metric {metric} needs integer 'labels' in {dataset.source}")
    if metric == "agreement" and not has_reference:
        raise GraphcError("metric agreement needs a reference model")
    if metric == "cosine" and not has_reference and (labels is None or not np.issubdtype(labels.dtype, np.floating)):
        raise GraphcError(f"metric cosine needs float 'labels' (reference outputs) in {dataset.source} "
                          f"or a reference model")


def evaluate(run: Runner, dataset: Dataset, metric: str, reference: Runner | None = None,
             batch_size: int = 64, output_axis: int | None = 0) -> float:
    """The metric of the model behind ``run`` over the whole dataset; ``output_axis``: the
    batch axis of the first output (``graphc.data.output_batch_axes``; None: one sample)."""
    check_metric(metric, dataset, reference is not None)

    def rows(value: np.ndarray) -> np.ndarray:
        if output_axis is None or value.ndim <= output_axis:
            return value.reshape(1, *value.shape)
        return np.moveaxis(value, output_axis, 0) if output_axis else value

    scores = []
    for feeds, labels in dataset.batches(batch_size):
        output = rows(run(feeds)[0])
        if metric in NEEDS_INT_LABELS:
            k = 1 if metric == "top1" else 5
            if output.ndim != 2 or output.shape[1] < k:
                raise GraphcError(f"metric {metric} needs a [batch, classes] first output with >= {k} classes, "
                                  f"got shape {list(output.shape)}")
            top = np.argsort(-output, axis=1)[:, :k]
            scores.append((top == labels.reshape(-1, 1)).any(1))
        elif metric == "cosine":
            target = rows(reference(feeds)[0]) if reference is not None else labels
            if target.shape != output.shape:
                raise GraphcError(f"metric cosine: output shape {list(output.shape)} differs from the reference "
                                  f"{list(target.shape)}")
            scores.append(cosine_per_sample(output, target))
        else:  # agreement
            target = rows(reference(feeds)[0])
            scores.append(output.reshape(len(output), -1).argmax(1) == target.reshape(len(target), -1).argmax(1))
    return float(np.concatenate(scores).mean())
