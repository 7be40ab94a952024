"""graphc's Triton INT8 GEMM kernels (kernels/triton): bit-exact against an int64 numpy
reference under ``TRITON_INTERPRET=1`` on the CPU (or on a CUDA GPU, ``gpu`` marker), and
compiled ahead of time for sm_80 / sm_90 without a GPU into tensor-core int8 MMA instructions."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported (below)
pytest.importorskip("triton")

from graphc.kernels.triton.kernels import block_sparse_int8_matmul, dense_int8_matmul  # noqa: E402
from graphc.kernels.triton.layout import pack_blocks  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 1, 1), (3, 17, 5), (33, 70, 40), (16, 64, 32), (45, 129, 66)]


def reference(a, zero_point, weight):
    return (a.astype(np.int64) - zero_point) @ weight.astype(np.int64)


def tile_sparse(rng, k, n, block, share):
    """Whole block x block tiles zero with probability ``share`` (the form the kernel skips)."""
    weight = rng.integers(-128, 128, (k, n)).astype(np.int8)
    zero = rng.random((-(-k // block), -(-n // block))) < share
    weight[np.kron(zero, np.ones((block, block), bool))[:k, :n]] = 0
    return weight


def run(kind, a, weight, zero_point, block=16):
    tensor = torch.from_numpy(a).to(DEVICE)
    if kind == "dense":
        out = dense_int8_matmul(tensor, torch.from_numpy(weight).to(DEVICE), zero_point, block, block, block)
    else:
        out = block_sparse_int8_matmul(tensor, pack_blocks(weight, block, block), zero_point, block)
    return out.cpu().numpy()


@pytest.mark.parametrize("kind", ["dense", "block_sparse"])
@pytest.mark.parametrize("share", [0.0, 0.5, 0.9, 1.0])
def test_kernels_equal_the_int64_product(kind, share):
    rng = np.random.default_rng(int(share * 10))
    for m, k, n in SHAPES:  # ragged: no dimension a multiple of the 16 x 16 tiles in most
        weight = tile_sparse(rng, k, n, 16, share)
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        zero_point = int(rng.integers(0, 256))
        np.testing.assert_array_equal(run(kind, a, weight, zero_point), reference(a, zero_point, weight),
                                      err_msg=f"{kind} {m}x{k}x{n}")


@pytest.mark.parametrize("kind", ["dense", "block_sparse"])
def test_extreme_values(kind):
    rng = np.random.default_rng(3)
    weight = np.where(rng.random((96, 48)) < 0.5, -128, 127).astype(np.int8)
    for value, zero_point in ((255, 0), (0, 255), (255, 255)):
        a = np.full((20, 96), value, np.uint8)
        np.testing.assert_array_equal(run(kind, a, weight, zero_point), reference(a, zero_point, weight))


def test_block_sparse_stores_only_the_tiles_that_hold_a_non_zero():
    rng = np.random.default_rng(4)
    weight = tile_sparse(rng, 64, 64, 16, 0.75)
    packed = pack_blocks(weight, 16, 16)
    kept = weight.reshape(4, 16, 4, 16).any(axis=(1, 3))
    assert packed.tiles.shape == (int(kept.sum()), 16, 16)
    assert packed.tile_ptr.tolist() == [0, *np.cumsum(kept.sum(axis=0)).tolist()]


def test_ahead_of_time_ptx_uses_int8_tensor_core_mma():
    """Compiled for sm_80 and sm_90 in a process without the interpreter (no GPU needed)."""
    script = ("from graphc.kernels.triton import aot\n"
              "for kernel in ('dense', 'block_sparse'):\n"
              "    for cc in (80, 90):\n"
              "        print(kernel, cc, sorted(aot.int8_mma_instructions(aot.ptx(kernel, cc))))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict((" ".join(line.split()[:2]), line) for line in done.stdout.splitlines())
    for kernel in ("dense", "block_sparse"):
        assert "mma.sync.aligned" in lines[f"{kernel} 80"] and ".s32.s8.s8.s32" in lines[f"{kernel} 80"]
        assert "wgmma.mma_async" in lines[f"{kernel} 90"] and ".s32.s8.s8" in lines[f"{kernel} 90"]


@pytest.mark.gpu
def test_on_the_gpu_at_bert_shapes():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(5)
    for m, k, n in ((128, 768, 3072), (1, 3072, 768)):
        weight = tile_sparse(rng, k, n, 64, 0.8)
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        for kind in ("dense", "block_sparse"):
            np.testing.assert_array_equal(run(kind, a, weight, 77, block=64), reference(a, 77, weight))
