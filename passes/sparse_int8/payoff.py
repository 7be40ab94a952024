"""Rule 3, the machine's part: the sparsity graphc's kernels need on this CPU to beat onnxruntime's
dense INT8 GEMM, measured with ``benchmarks/sparse_gemm.py`` (M = 1, 32, 128 on BERT-base shapes,
one interleaved run; the tables in the README).

- AVX-512 VNNI and AMX paths (Intel Xeon, 2026-12-02): 1x4 groups at 50% sparsity ran at
  0.97-1.24x of onnxruntime, so ``max_density`` (0.5) alone decides.
- The AVX2 path (AMD EPYC Zen 3, no VNNI, 2026-12-02, ``benchmarks/results/sparse_gemm_avx2.txt``):
  the column kernels ran at 0.75-1.09x at 50% (1x4), 1.35-1.88x at 80% (medians over the
  shapes). A layer they would run needs at most ``AVX2_COLUMN_DENSITY`` (35%) of its 4-groups
  non-zero, the measured break-even with a margin. Weights that the AVX2 tile kernel takes (half
  or more of their 16 x 64 tiles empty, 7-bit pairs: the library's own rule,
  ``graphc.kernels.avx2_uses_tiles``) ran at 1.02-1.40x at 50% and 1.80-2.77x at 80%, so
  ``max_density`` alone decides for them.
- Any other CPU (the scalar path only): not measured; ``max_density`` alone decides.
"""

from __future__ import annotations

import functools

from graphc import kernels
from graphc.kernels.layout import BlockColumns

AVX2_COLUMN_DENSITY = 0.35


@functools.lru_cache(maxsize=1)
def default_path() -> str:
    return kernels.default_isa()


def machine_refusal(columns: BlockColumns, density: float) -> str:
    """Why this CPU's kernels would not pay off on these weights, or "" when they would."""
    if default_path() != "avx2" or density <= AVX2_COLUMN_DENSITY or kernels.avx2_uses_tiles(columns):
        return ""
    return (f"{density:.0%} of its 4-groups hold a non-zero: this CPU's AVX2 kernels pay off at most "
            f"{AVX2_COLUMN_DENSITY:.0%}, or with half its 16x64 weight tiles empty")
