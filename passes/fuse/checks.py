"""Rule 4 of ``fuse``: every fused site is run against the original before it is kept.

The probe inputs are ``PROBE_ROWS`` rows of the context's sample data (``--data``, else
synthetic rows; fewer rows are repeated) with every mask input replaced by rule 2's padding
patterns, so a fused padding mask is checked on right-padded, left-padded and holed rows
(full and right-padded rows only for ``padding=right``, which promises no other kind).
The original model runs once with every site's output and mask exposed (``site_values``:
what rule 2 classifies and what the fused sites are held to), the fused model once with the
site outputs exposed (``site_errors``: per site, max |fused - original| / max |original|).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from graphc.data import count_rows, model_signature, repeat_rows, take_rows
from graphc.passes.fuse.attention_sites import AttentionSite
from graphc.passes.fuse.masks import PROBE_ROWS, probe_feeds
from graphc.runtime import exposing_session, run_session


def probe_inputs(ctx, model: onnx.ModelProto, masks: list[str], right_only: bool = False) -> dict[str, np.ndarray]:
    """``PROBE_ROWS`` rows of sample inputs with the mask inputs set to padding patterns (the
    model's own batch size where it fixes one)."""
    data = ctx.sample_data(PROBE_ROWS)
    feeds, axes = data.inputs, data.axes
    rows = count_rows(feeds, axes)
    wanted = _fixed_batch(model, axes) or PROBE_ROWS
    if rows < wanted:
        feeds = repeat_rows(feeds, wanted, axes)
    elif rows > wanted:
        feeds = take_rows(feeds, 0, wanted, axes)
    return probe_feeds(feeds, masks, right_only)


def _fixed_batch(model: onnx.ModelProto, axes) -> int | None:
    """The static size of some input's batch axis (the rows the model runs on), else None."""
    for spec in model_signature(model, axes):
        if spec.batch_axis is not None and spec.batch_axis < len(spec.shape) and isinstance(spec.shape[spec.batch_axis], int):
            return spec.shape[spec.batch_axis]
    return None


def _run(model: onnx.ModelProto, names: Sequence[str], feeds: Mapping[str, np.ndarray], threads) -> dict:
    session = exposing_session(model, list(names), threads, what="the model to check fused attention on")
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, run_session(session, dict(feeds))))


def site_values(model: onnx.ModelProto, sites: Sequence[AttentionSite], feeds, threads) -> dict[str, np.ndarray]:
    """The original's value of every site output and mask on the probe inputs."""
    names = {s.out.name for s in sites} | {s.bias.name for s in sites if s.bias is not None}
    return _run(model, sorted(names), feeds, threads)


def _relative(ref, got) -> float:
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape or not np.all(np.isfinite(got)):
        return float("inf")
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def output_errors(candidate: onnx.ModelProto, names: Sequence[str], reference: Mapping[str, np.ndarray], feeds,
                  threads) -> dict[str, float]:
    """Per model output: the candidate's max error relative to the original's largest magnitude."""
    values = _run(candidate, [], feeds, threads)
    return {name: _relative(reference[name], values[name]) for name in names}


def site_errors(fused: onnx.ModelProto, sites: Sequence[AttentionSite], reference: Mapping[str, np.ndarray],
                feeds, threads) -> dict[str, float]:
    """Per site: the fused output's max error relative to the original's largest magnitude."""
    values = _run(fused, sorted({s.out.name for s in sites}), feeds, threads)
    return {site.name: _relative(reference[site.out.name], values[site.out.name]) for site in sites}
