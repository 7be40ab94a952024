"""The data of a run (``Data``: the student's inputs, the teacher's targets, optional
labels and teacher layers, fed batch by batch) and the rows of each training step
(``epoch_batches``).

Rule 4 of ``graphc.passes.distill``, ``mask``: with ``mask`` (a 0/1 student input such as
``attention_mask``, [batch, sequence]; text models: ``mask=attention_mask``) the batches
carry little padding: the permutation is cut into windows of ``GROUP_WINDOW`` batches, each
window is sorted by row length (1 + the last non-zero mask column) and cut into batches,
the batch order is shuffled (same seed, same batches), and every batch is cut to its
longest row: inputs whose axis 1 is the mask's length, and teacher targets of rank >= 3
whose axis 1 is that length ([batch, sequence, hidden]), keep only the first columns.
Inputs whose batch axis is not 0 (``batch_axes``: a state ``[layers, batch, hidden]``) are
stored batch-first and put back on their axis per batch; inputs with none go whole with
every batch; neither is cut.
Exact for models whose valid positions never read padded ones (a BERT-style encoder with
its attention mask); the training cost follows the real lengths, so data can be stored at
the longest length without paying for its padding. Evaluation is not cut.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from .protocol import LABELS_INPUT, LAYER_FILE, LAYER_INPUT, TEACHER_INPUT, UserError

GROUP_WINDOW = 50  # batches per length-sorted window (rule 4, ``mask``)


class Data:
    """Student inputs, teacher outputs and optional labels of one .npz."""

    def __init__(self, path: pathlib.Path, input_names: list[str], layer_count: int = 0, mask: str | None = None,
                 batch_axes: dict[str, int | None] | None = None):
        if mask is not None and mask not in input_names:
            raise UserError(f"mask={mask!r} is not an input of the student ({', '.join(input_names)})")
        with np.load(path) as npz:
            self.inputs = {name: npz[name] for name in input_names}
            self.teacher = npz["teacher"].astype(np.float32)
            self.labels = npz["labels"].astype(np.int64) if "labels" in npz.files else None
        # float16, memory-mapped (8.8 GB for 12 MiniLM hidden states on 40k rows), widened per batch
        self.layers = [np.load(path.with_name(LAYER_FILE.format(stem=path.stem, index=i)), mmap_mode="r")
                       for i in range(layer_count)]
        self._buffers: dict[tuple[str, int], np.ndarray] = {}
        self.mask = mask
        self.batch_axes = dict(batch_axes or {})  # stored batch-first; None: whole, with every batch
        if mask is not None and mask in self.batch_axes:
            raise UserError(f"mask={mask!r}: the mask input must be [batch, sequence] with its batch on axis 0")
        self.lengths = valid_lengths(self.inputs[mask]) if mask is not None else None

    def __len__(self) -> int:
        return len(self.teacher)

    def layer_mean_squares(self, chunk: int = 1024) -> list[float]:
        """Mean of t^2 of each teacher layer over all rows (float64, in chunks: no float32 copy)."""
        scales = []
        for layer in self.layers:
            total = sum(float(np.square(layer[i:i + chunk], dtype=np.float64).sum())
                        for i in range(0, len(layer), chunk))
            scales.append(max(total / max(layer.size, 1), 1e-12))
        return scales

    def feeds(self, order: list[str], rows, trim: bool = False) -> list[np.ndarray]:
        """The arrays of one batch, in ``order``, copied into buffers this object keeps for the
        whole run (one per input and batch size): onnxruntime always reads memory that is alive
        and holds the current batch. (Added after a Gather read garbage indices twice in 40k-row
        MiniLM runs; the cause turned out to be onnxruntime's memory-pattern planner, rule 4.)
        ``trim`` (with a mask): cut to the batch's longest row (rule 4)."""
        values = {**self.inputs, TEACHER_INPUT: self.teacher}
        if self.labels is not None:
            values[LABELS_INPUT] = self.labels
        for i, layer in enumerate(self.layers):
            values[LAYER_INPUT.format(i)] = layer
        widened = {LAYER_INPUT.format(i) for i in range(len(self.layers))}
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        length = int(self.lengths[rows].max()) if trim and self.lengths is not None else None
        batch = []
        for name in order:
            source = values[name]
            if name in self.batch_axes:
                batch.append(self._moved(name, source, rows))
                continue
            dtype = np.float32 if name in widened else source.dtype
            key = (name, len(rows))
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = np.empty(len(rows) * math.prod(source.shape[1:]), dtype)
            shape = [len(rows), *source.shape[1:]]
            if length is not None and self._sequence_axis(name, source):
                shape[1] = length
                view = buffer[:math.prod(shape)].reshape(shape)
                view[...] = source[rows, :length]
            else:
                view = buffer.reshape(shape)
                view[...] = source[rows]
            batch.append(view)
        return batch

    def _moved(self, name: str, source: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """An input whose batch axis is not 0: whole (no batch axis), or its rows (stored
        batch-first) put back on their axis, in a buffer kept like ``feeds``'s."""
        axis = self.batch_axes[name]
        if axis is None:
            return source
        picked = np.moveaxis(source[rows], 0, axis)
        key = (name, len(rows))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != picked.shape:
            buffer = self._buffers[key] = np.empty(picked.shape, source.dtype)
        buffer[...] = picked
        return buffer

    def _sequence_axis(self, name: str, source: np.ndarray) -> bool:
        """Whether axis 1 of ``source`` is the mask's sequence axis (rule 4)."""
        sequence = self.lengths is not None and source.ndim >= 2 and source.shape[1] == self.seq_len
        return sequence and (name in self.inputs or (name != LABELS_INPUT and source.ndim >= 3))

    @property
    def seq_len(self) -> int:
        return self.inputs[self.mask].shape[1]


def valid_lengths(mask: np.ndarray) -> np.ndarray:
    """Per row of a [batch, sequence] mask: 1 + its last non-zero column (1 for an all-zero row)."""
    if mask.ndim != 2:
        raise UserError(f"mask: the mask input must be [batch, sequence], got shape {list(mask.shape)}")
    nonzero = mask != 0
    last = mask.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 1)


def epoch_batches(perm: np.ndarray, batch: int, lengths: np.ndarray | None, rng) -> list[np.ndarray]:
    """Rows of each step of one epoch (rule 4): consecutive slices of ``perm`` (the last
    incomplete batch dropped), or with ``lengths`` length-sorted windows in shuffled order."""
    perm = perm[:len(perm) // batch * batch]
    if lengths is None:
        return [perm[i:i + batch] for i in range(0, len(perm), batch)]
    batches = []
    for start in range(0, len(perm), GROUP_WINDOW * batch):
        window = perm[start:start + GROUP_WINDOW * batch]
        window = window[np.argsort(lengths[window], kind="stable")]
        batches += [window[i:i + batch] for i in range(0, len(window), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]
