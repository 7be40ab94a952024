"""Rule 3, the machine's part: the sparsity graphc's kernels need on this CPU to beat onnxruntime's
dense INT8 GEMM, measured with ``benchmarks/sparse_gemm.py`` (M = 1, 32, 128 on BERT-base shapes,
one interleaved run; the tables in the README).

- The AMX path (Intel Xeon, 2026-12-02): 1x4 groups at 50% sparsity ran at 0.97-1.24x of
  onnxruntime, so ``max_density`` (0.5) alone decides.
- The AVX2 path (AMD EPYC Zen 3, no VNNI, 2026-12-02, ``benchmarks/results/sparse_gemm_avx2.txt``)
  and the AVX-512 VNNI path without AMX (AMD EPYC Zen 4, 2026-12-04,
  ``benchmarks/results/sparse_gemm_avx512vnni.txt``) have two kernels each, and the library picks
  one per constant weight (``graphc.kernels.kept_tile_share``, its own rule):
  - the tile kernel multiplies every kept 16 x 64 tile densely, at onnxruntime's dense speed
    (AVX2 0.92-0.96x, VNNI 0.92-1.26x with every tile kept; 16x64 blocks at 50%: AVX2 1.35-1.84x,
    VNNI 1.6-2.1x). A layer it runs needs at most ``TILE_SHARE`` (60%) of its tiles kept: a margin
    over the break-even (100%), for M=1, where the per-call cost weighs most;
  - the column kernels skip every zero 4-group but pay about 3x (AVX2) or 2.5x (VNNI) per kept
    group: a layer they run needs at most ``COLUMN_DENSITY`` (35%) of its 4-groups non-zero (1x4 at
    80%: AVX2 1.29-2.78x, VNNI 2.0-2.9x);
  - below 4 rows the AVX2 library may also run a layer on its 8-column panel kernel (blocks spanning
    8 outputs, e.g. 8x4: 80% at M = 1 2.4x, 2026-12-03); the rule here stays the M >= 4 kernels',
    since a layer's row count is not known when the pass runs.
- Any other CPU (the scalar path only): not measured; ``max_density`` alone decides.
"""

from __future__ import annotations

import functools

from graphc import kernels
from graphc.kernels.layout import BlockColumns

COLUMN_DENSITY = 0.35
TILE_SHARE = 0.6
_PATH_NAMES = {"avx2": "AVX2", "avx512vnni": "AVX-512 VNNI"}


@functools.lru_cache(maxsize=1)
def default_path() -> str:
    return kernels.default_isa()


def machine_refusal(columns: BlockColumns, density: float) -> str:
    """Why this CPU's kernels would not pay off on these weights, or "" when they would."""
    path = default_path()
    if path not in kernels.TILE_PATHS:
        return ""
    name = _PATH_NAMES[path]
    share = kernels.kept_tile_share(columns, path)
    if share is None:
        if density <= COLUMN_DENSITY:
            return ""
        return (f"{density:.0%} of its 4-groups hold a non-zero: this CPU's {name} column kernels pay off at "
                f"most {COLUMN_DENSITY:.0%}")
    if share <= TILE_SHARE:
        return ""
    return (f"{share:.0%} of its 16x64 weight tiles hold a non-zero: this CPU's {name} tile kernel pays off at "
            f"most {TILE_SHARE:.0%} (and its column kernels at {COLUMN_DENSITY:.0%} of 4-groups; "
            f"{density:.0%} here)")
