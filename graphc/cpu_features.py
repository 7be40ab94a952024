"""Which integer dot-product instructions this CPU has, and what that means for int8 weights.

Rules (x86 only; read from ``/proc/cpuinfo`` flags, first processor):

- ``avx512_vnni`` or ``avx_vnni`` present: VNNI (``vpdpbusd``) multiplies u8 x s8 and
  accumulates in 32 bits; full-range s8 weights (-127..127) are exact.
- AVX2 without VNNI: onnxruntime's u8 x s8 kernels use ``vpmaddubsw``, which adds two
  u8 x s8 products into a *saturating* int16. 255 x 127 x 2 = 64770 overflows int16
  (max 32767), so full-range weights give wrong sums; 7-bit weights (-63..63) cannot
  overflow: 255 x 63 x 2 = 32130.
- Anything else (ARM, no /proc/cpuinfo): no saturating u8 x s8 path is known; 8-bit.

The choice is made where the model is optimized: a model with 8-bit weights built on a
VNNI machine saturates when run on an AVX2-only one. ``int8:weight_bits=7`` forces the
portable form.
"""

from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass

CPUINFO = pathlib.Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    avx2: bool
    avx512_vnni: bool
    avx_vnni: bool

    @property
    def vnni(self) -> bool:
        return self.avx512_vnni or self.avx_vnni

    @property
    def u8s8_saturates(self) -> bool:
        """True where onnxruntime's u8 x s8 kernels add products in a saturating int16."""
        return self.avx2 and not self.vnni

    def describe(self) -> str:
        if self.vnni:
            return "AVX512-VNNI" if self.avx512_vnni else "AVX-VNNI"
        return "AVX2 without VNNI" if self.avx2 else "no AVX2"


def parse_flags(cpuinfo_text: str) -> set[str]:
    """The ``flags`` of the first processor listed in a /proc/cpuinfo text."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def features_from_flags(flags: set[str]) -> CpuFeatures:
    return CpuFeatures(avx2="avx2" in flags, avx512_vnni="avx512_vnni" in flags, avx_vnni="avx_vnni" in flags)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """Features of the CPU this process runs on (no flags readable: none assumed)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    return features_from_flags(parse_flags(text))


def cpu_name() -> str:
    """The first processor's model name (benchmarks print it beside their figures)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown CPU")


def default_weight_bits() -> int:
    """7 where u8 x s8 products saturate (AVX2 without VNNI), else 8."""
    return 7 if cpu_features().u8s8_saturates else 8
