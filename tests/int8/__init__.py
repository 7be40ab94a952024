"""Tests of the int8 pass (``graphc.passes.int8``), one module per concern."""
