#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels benchmarks/gpu_check.sh installs on the GPU machine,
# whose python3 is 3.12: onnx-graphsurgeon, pure Python, the version constraints.txt pins here.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(python3 -c "import importlib.metadata as m; print(m.version('onnx-graphsurgeon'))")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "onnx-graphsurgeon==$version"
ls -l .whl
