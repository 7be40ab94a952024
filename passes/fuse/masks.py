"""Rule 2 of ``fuse``: what each site's additive mask means, read from its values on probes.

Exporters compute the additive attention mask once from the ``attention_mask`` input in a
dozen different node chains (``(1 - m) * min``, ``Where(m == 0, min, 0)``, expanded,
combined with a causal triangle...); reading those chains would mean a rule per exporter
release. Instead the mask's values are read on probe inputs (``probe_feeds``: real or
synthetic rows, with each mask input set to padding patterns: a full row, right padding,
left padding and holes), and each mask tensor is classified (``classify``):

- ``padding`` (of input ``m``, the only input whose values it reads): on every probe, 0 where ``m`` is 1 and at most
  ``MASKED`` (-1e4; exp of that underflows to 0 in float32, so a masked key adds nothing)
  where ``m`` is 0, the same for every head and query row;
- ``causal``: built from no input's values (shapes only), 0 on and below the diagonal and at most ``MASKED``
  above it (a decoder's triangle; no padding input);
- ``none``: 0 everywhere, from no input's values (an all-zero mask exporters build from shapes);
- ``bias``: anything else (a causal triangle with padding, relative position biases, masks
  of other inputs): kept exactly as it is, as the fused op's additive attention bias.

Mask inputs are the rank-2 graph inputs whose name contains "mask" (what tokenizers and
exporters call them) with a batch axis 0; their values are taken to be 0 (padding) and 1
(a token), as tokenizers write them. A row with no token at all (every key masked) is
outside what the fused op reproduces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from graphc.data import model_signature

MASKED = -1e4
PROBE_ROWS = 4


@dataclass(frozen=True)
class MaskKind:
    kind: str  # "padding", "causal" or "bias"
    input: str | None = None  # the padding mask's graph input


def mask_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs taken to be key-padding masks (see the module docstring)."""
    return [s.name for s in model_signature(model)
            if "mask" in s.name.lower() and len(s.shape) == 2 and s.batch_axis == 0]


def padding_patterns(rows: int, length: int, dtype: np.dtype, right_only: bool = False) -> np.ndarray:
    """0/1 rows: left-padded, with holes, right-padded, full (cycled for more rows); right-padded
    and full only with ``right_only`` (``fuse:padding=right`` promises no other kind). The most
    telling kinds come first, for a model whose fixed batch holds fewer than ``PROBE_ROWS``
    rows (a left-padded row has padding in front of its tokens and is not a prefix; full rows
    are what the pipeline's exact check runs anyway)."""
    patterns = np.ones((max(rows, 1), length), dtype=np.int64)
    half = max(1, (length + 1) // 2)
    order = (1, 0) if right_only else (2, 3, 1, 0)
    for r in range(patterns.shape[0]):
        kind = order[r % len(order)]
        if kind == 1:
            patterns[r, half:] = 0
        elif kind == 2:
            patterns[r, : length - half] = 0
        elif kind == 3:
            patterns[r, 1::2] = 0
    return patterns.astype(dtype)


def probe_feeds(feeds: Mapping[str, np.ndarray], masks: list[str], right_only: bool = False) -> dict[str, np.ndarray]:
    """``feeds`` with every mask input replaced by padding patterns of its own shape."""
    probed = dict(feeds)
    for name in masks:
        value = np.asarray(feeds[name])
        probed[name] = padding_patterns(value.shape[0], value.shape[1], value.dtype, right_only)
    return probed


def _is_padding(values: np.ndarray, mask: np.ndarray) -> bool:
    if values.ndim != 4 or values.shape[0] not in (1, mask.shape[0]) or values.shape[-1] != mask.shape[1]:
        return False
    keep = np.broadcast_to((mask != 0)[:, None, None, :], np.broadcast_shapes(values.shape, (mask.shape[0], 1, 1, mask.shape[1])))
    full = np.broadcast_to(values, keep.shape)
    return bool(np.all(full[keep] == 0) and np.all(full[~keep] <= MASKED))


def _is_causal(values: np.ndarray) -> bool:
    if values.ndim != 4 or values.shape[-1] != values.shape[-2]:
        return False
    above = np.triu(np.ones(values.shape[-2:], dtype=bool), k=1)
    above = np.broadcast_to(above, values.shape)
    return bool(np.all(values[~above] == 0) and np.all(values[above] <= MASKED))


def classify(values: np.ndarray, probes: Mapping[str, np.ndarray], masks: list[str],
             depends_on: set[str]) -> MaskKind:
    """The kind of one mask tensor from its ``values`` on ``probes`` and the graph inputs
    whose values (not shapes) it ``depends_on`` (rule 2)."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return MaskKind("bias")
    if not depends_on and np.all(values == 0):
        return MaskKind("none")
    if values.shape[-1] > 1:
        for name in masks:
            if depends_on == {name} and _is_padding(values, np.asarray(probes[name])):
                return MaskKind("padding", name)
        if not depends_on and _is_causal(values):
            return MaskKind("causal")
    return MaskKind("bias")
