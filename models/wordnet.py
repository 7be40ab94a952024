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


def probe_synsets(seed: int = 0, path: pathlib.Path = DATA_NOUN) -> list[tuple[str, int]]:
    """The probe's ``PROBE_ROWS`` ``(gloss, lexicographer file)`` pairs, in a fixed order."""
    synsets = noun_synsets(path)
    _, probe = _split(seed, path)
    return [synsets[i] for i in probe]
