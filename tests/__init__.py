"""graphc's tests: a sub-package per pass (``tests/fold``, ``tests/prune``, ``tests/int8``,
``tests/distill``) plus the driver's (``tests/driver``); ``tests/topologies.py`` exports the
shared real topologies, ``tests/builders.py`` builds small hand-made graphs. Paths every
test may need are here."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CNN = MODELS / "fashion_cnn.onnx"


def assert_one_line_error(run, pattern):
    """A finished ``graphc`` subprocess exited 2 with one stderr line matching ``pattern``."""
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert re.search(pattern, lines[0]), lines[0]
