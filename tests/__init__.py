"""graphc's tests: a sub-package per pass (``tests/fold``, ``tests/prune``, ``tests/int8``,
``tests/distill``) plus the driver's (``tests/driver``); ``tests/topologies.py`` exports the
shared real topologies, ``tests/builders.py`` builds small hand-made graphs. Paths every
test may need are here."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CNN = MODELS / "fashion_cnn.onnx"
