"""graphc's tests: a sub-package per pass (``tests/fold``, ``tests/prune``, ``tests/int8``,
``tests/distill``) plus the driver's (``tests/driver``); ``tests/topologies.py`` exports the
shared real topologies, ``tests/builders.py`` builds small hand-made graphs. Paths every
test may need are here."""

import pathlib
import re

# before anything here imports transformers: in a checkout, graphc keeps the top-level name
# `kernels` for the installed distribution transformers imports (graphc/checkout_imports.py);
# benchmarks that put the repository root on sys.path import tests.* first
import graphc  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CNN = MODELS / "fashion_cnn.onnx"


def assert_one_line_error(run, pattern):
    """A finished ``graphc`` subprocess exited 2 with one stderr line matching ``pattern``."""
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert re.search(pattern, lines[0]), lines[0]


_MEASURED_LAUNCH = """
import runpy, sys
sys.argv = ["graphc", *sys.argv[2:]]
try:
    runpy.run_module("graphc", run_name="__main__", alter_sys=True)
finally:
    status = open("/proc/self/status").read()
    open(REPORT, "w").write(status)
"""


def run_graphc_measured(argv, timeout=600):
    """Run ``python -m graphc *argv``; (exit code, stderr, peak RSS in bytes of that process).

    The peak is the process's own ``VmHWM``, read by itself as it exits: not ``ru_maxrss``
    from ``wait4``, which on Linux keeps the RSS the process had before ``exec`` (the forked
    copy of a test process that may hold gigabytes)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".status") as report:
        code = _MEASURED_LAUNCH.replace("REPORT", repr(report.name))
        run = subprocess.run([sys.executable, "-c", code, "--", *map(str, argv)], capture_output=True, text=True,
                             timeout=timeout)
        status = open(report.name).read()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return run.returncode, run.stderr, peak_kb * 1024
