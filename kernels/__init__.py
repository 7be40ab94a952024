"""graphc's native kernels: ``cpu/`` (a C++17 onnxruntime custom-op library, ops in the
``ai.graphc`` domain) and, later, ``triton/``.

- ``library_path()``: the built library (``GRAPHC_KERNELS_LIBRARY`` names one; else
  ``kernels.build`` builds it once per source into graphc's cache).
- ``register(options)``: adds the ops to an ``onnxruntime.SessionOptions``.
- ``uses_graphc_ops(model)``: whether a model needs them (an ``ai.graphc`` opset import).
- ``supported_isas()``: the code paths this machine runs (``GRAPHC_ISA`` forces one of them).
- ``layout``: the compressed weight form the ops read.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib

DOMAIN = "ai.graphc"
ISAS = ("scalar", "avx2", "avx512vnni", "amx")
# graphc's ops -> the input where their compressed weight (col_ptr, block_k, values) starts
WEIGHT_INPUTS = {"SparseMatMulInteger": 2, "SparseMatMulIntegerToFloat": 3, "SparseDynamicQuantizeMatMul": 1}


class KernelLibraryError(RuntimeError):
    """graphc's kernel library is missing or cannot be built (one line says why)."""


def library_path() -> pathlib.Path:
    given = os.environ.get("GRAPHC_KERNELS_LIBRARY")
    if given:
        path = pathlib.Path(given)
        if not path.is_file():
            raise KernelLibraryError(f"GRAPHC_KERNELS_LIBRARY={given} is not a file")
        return path
    from . import build

    try:
        return build.build()
    except build.KernelBuildError as exc:
        raise KernelLibraryError(f"graphc's kernel library is missing and {exc}") from None


def register(options) -> pathlib.Path:
    """Register the ops with ``options`` (an ``onnxruntime.SessionOptions``); the library used."""
    path = library_path()
    options.register_custom_ops_library(str(path))
    return path


def uses_graphc_ops(model) -> bool:
    """``model``: an ``onnx.ModelProto``; true when it imports the ``ai.graphc`` domain."""
    return any(opset.domain == DOMAIN for opset in model.opset_import)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    library = ctypes.CDLL(str(library_path()))
    library.graphc_best_isa.restype = ctypes.c_char_p
    library.graphc_isa_supported.argtypes = [ctypes.c_char_p]
    library.graphc_kept_tile_share.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3
    library.graphc_kept_tile_share.restype = ctypes.c_double
    library.graphc_few_rows_kernel.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3
    library.graphc_few_rows_kernel.restype = ctypes.c_char_p
    library.graphc_default_path.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    library.graphc_default_path.restype = ctypes.c_char_p
    return library


def supported_isas() -> list[str]:
    """The paths this CPU, its OS and this build run, scalar first, the default last."""
    return [isa for isa in ISAS if _library().graphc_isa_supported(isa.encode())]


def default_isa() -> str:
    return _library().graphc_best_isa().decode()


def _ask_about_columns(function, columns):
    """``function(k, n, col_ptr, block_k, values)`` of the library on ``columns``' arrays."""
    import numpy as np

    arrays = [np.ascontiguousarray(columns.col_ptr, np.int32), np.ascontiguousarray(columns.block_k, np.int32),
              np.ascontiguousarray(columns.values, np.int8)]
    return function(columns.k, columns.n, *(a.ctypes.data for a in arrays))


TILE_PATHS = ("avx2", "avx512vnni")  # the paths with a tile kernel and a choice of kernel per weight


def _check_tile_path(isa: str) -> bytes:
    if isa not in TILE_PATHS:
        raise ValueError(f"{isa!r} has no tile kernel (the paths that have one: {', '.join(TILE_PATHS)})")
    return isa.encode()


def kept_tile_share(columns, isa: str) -> float | None:
    """``columns``: a ``layout.BlockColumns``; ``isa``: "avx2" or "avx512vnni". When, as constant
    weights, that path runs them on its tile kernel (few enough kept 16 x 64 tiles against the column
    kernels' cost of their non-zero 4-groups; on AVX2 also pairs that fit vpmaddubsw), the share of
    the tiles it multiplies; None when it runs them on its column kernels. The library's own rule,
    asked of the library."""
    name = _check_tile_path(isa)
    answer = _ask_about_columns(lambda *args: _library().graphc_kept_tile_share(name, *args), columns)
    if answer < 0:
        raise ValueError("malformed block columns")
    return None if answer > 1 else float(answer)


def few_rows_kernel(columns, isa: str) -> str:
    """Which kernel of path ``isa`` ("avx2" or "avx512vnni") runs ``columns`` (a
    ``layout.BlockColumns``), as constant weights, below 4 rows: "tiles" (the tile kernel), "panels"
    (AVX2's kernel_avx2_panels.cc: 8-column panels, where they read fewer bytes) or "columns" (the
    one-row column kernel). The library's own rule."""
    name = _check_tile_path(isa)
    answer = _ask_about_columns(lambda *args: _library().graphc_few_rows_kernel(name, *args), columns)
    if not answer:
        raise ValueError("malformed block columns")
    return answer.decode()


def uses_tiles(columns, isa: str) -> bool:
    """True when, as constant weights, path ``isa`` runs ``columns`` on its tile kernel."""
    return kept_tile_share(columns, isa) is not None


def default_path(columns, rows: int) -> str:
    """The kernel path a session on this CPU runs ``columns`` (a ``layout.BlockColumns``, as constant
    weights) on for ``rows`` rows of A without GRAPHC_ISA: "amx", "avx512vnni", "avx2" or "scalar".
    The library's own rule (ops.cc ``path_for``), asked of the library."""
    answer = _ask_about_columns(lambda *args: _library().graphc_default_path(*args, rows), columns)
    if not answer:
        raise ValueError("malformed block columns")
    return answer.decode()
