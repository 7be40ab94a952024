"""WordNet noun glosses (Debian ``wordnet-base``): a text corpus for MiniLM calibration,
evaluation and distillation, offline.

``data.noun`` has one synset a line; the gloss is the text after ``| ``. Lines starting with
two spaces are the licence header.
"""

from __future__ import annotations

import pathlib

import numpy as np

DATA_NOUN = pathlib.Path("/usr/share/wordnet/data.noun")


def noun_glosses(count: int | None = None, seed: int = 0, path: pathlib.Path = DATA_NOUN) -> list[str]:
    """``count`` glosses (all when None), in an order fixed by ``seed``."""
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; install it: apt-get install wordnet-base")
    glosses = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  ") or "| " not in line:
            continue
        gloss = line.split("| ", 1)[1].strip()
        if gloss:
            glosses.append(gloss)
    order = np.random.default_rng(seed).permutation(len(glosses))[:count]
    return [glosses[i] for i in order]
