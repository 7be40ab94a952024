"""WordNet noun glosses (Debian ``wordnet-base``): a text corpus for MiniLM calibration,
evaluation, distillation and the supersense probe, offline.

``data.noun`` has one synset a line; the gloss is the text after ``| ``, the second field is
the lexicographer file number (03..28 for nouns: the 26 noun supersenses, e.g. 05
``noun.animal``). Lines starting with two spaces are the licence header.

Splits (all from one order: a permutation of the synsets drawn from ``seed``, 0 by default):

- the probe's synsets (``probe_synsets``): the last ``PROBE_ROWS`` synsets of that order
  whose gloss text occurs only once in ``data.noun`` (605 gloss texts are shared by several
  synsets; a shared one could not be kept out of the other splits, nor have one label);
- everything else (``noun_glosses``): the order with the probe's synsets left out. Its first
  entries are therefore the same as before the probe existed, and no gloss it returns is a
  probe gloss, however many are asked for: calibration, distillation and held-out glosses
  never overlap the probe's.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

DATA_NOUN = pathlib.Path("/usr/share/wordnet/data.noun")
PROBE_ROWS = 5000


@functools.lru_cache(maxsize=4)
def noun_synsets(path: pathlib.Path = DATA_NOUN) -> tuple[tuple[str, int], ...]:
    """``(gloss, lexicographer file number)`` of every synset with a gloss, in file order."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; install it: apt-get install wordnet-base")
    synsets = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  ") or "| " not in line:
            continue
        head, gloss = line.split("| ", 1)
        gloss = gloss.strip()
        if gloss:
            synsets.append((gloss, int(head.split()[1])))
    return tuple(synsets)


def _split(seed: int, path: pathlib.Path) -> tuple[list[int], list[int]]:
    """(indices of the other glosses in order, indices of the probe's synsets in order)."""
    synsets = noun_synsets(path)
    counts: dict[str, int] = {}
    for gloss, _ in synsets:
        counts[gloss] = counts.get(gloss, 0) + 1
    order = np.random.default_rng(seed).permutation(len(synsets)).tolist()
    probe: list[int] = []
    for index in reversed(order):
        if len(probe) == PROBE_ROWS:
            break
        if counts[synsets[index][0]] == 1:
            probe.append(index)
    probe.reverse()
    taken = set(probe)
    return [i for i in order if i not in taken], probe


def noun_glosses(count: int | None = None, seed: int = 0, path: pathlib.Path = DATA_NOUN) -> list[str]:
    """``count`` glosses (all when None) in an order fixed by ``seed``; never a probe gloss."""
    synsets = noun_synsets(path)
    rest, _ = _split(seed, path)
    return [synsets[i][0] for i in rest[:count]]


def gloss_npz(path: str | pathlib.Path, count: int, start: int = 0, max_length: int = 48,
              seed: int = 0) -> pathlib.Path:
    """Write glosses ``start .. start + count`` of ``noun_glosses(seed=seed)``, tokenized for
    MiniLM (``models/minilm.py``: ``input_ids``, ``attention_mask``, ``token_type_ids``, int64
    [count, max_length], padded and truncated to ``max_length``), as an unlabelled ``.npz``
    for ``--train-data``/``--eval-data``/``--data``. Disjoint ranges give disjoint gloss sets,
    none of them a probe gloss. Atomic: a temporary file renamed into place."""
    from graphc.models import minilm

    if count < 1 or start < 0:
        raise ValueError(f"count={count}, start={start}: need count >= 1 and start >= 0")
    glosses = noun_glosses(start + count, seed)[start:]
    if len(glosses) < count:
        raise ValueError(f"start={start} + count={count} is more than the {len(noun_glosses(None, seed))} "
                         f"glosses outside the probe")
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **minilm.tokenize(glosses, max_length=max_length))
    tmp.replace(path)
    return path


def probe_synsets(seed: int = 0, path: pathlib.Path = DATA_NOUN) -> list[tuple[str, int]]:
    """The probe's ``PROBE_ROWS`` ``(gloss, lexicographer file)`` pairs, in a fixed order."""
    synsets = noun_synsets(path)
    _, probe = _split(seed, path)
    return [synsets[i] for i in probe]
