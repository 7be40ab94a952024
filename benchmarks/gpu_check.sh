#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it measures) on a machine with an NVIDIA GPU and
# nothing reachable outside it. From the repository root:
#
#   bash benchmarks/gpu_check.sh OUT_FILE [gpu_check.py options]
#
# It needs python3 with torch (CUDA), triton, onnx, onnxruntime, numpy, tqdm and transformers (the
# lent H200 image has them all) and the wheels in .whl/, which benchmarks/gpu_wheels.sh fetches on a
# machine with a package index: onnx-graphsurgeon (about 60 KB), the one graphc dependency that image
# lacks. graphc itself installs from this checkout, without its dependencies or a network.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_FILE [gpu_check.py options]}
shift
site=$(mktemp -d /tmp/graphc-site.XXXXXX)
trap 'rm -rf "$site"' EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" .
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/gpu_check.py --out "$out" "$@"
