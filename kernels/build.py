"""Builds ``kernels/cpu`` (the onnxruntime custom-op library) with CMake, once per source.

Rules:

1. The onnxruntime C API header is never committed. ``ORT_INCLUDE_DIR`` names a folder that
   holds ``onnxruntime_c_api.h``; without it the header comes from the npm package
   ``com.github.asus4.onnxruntime`` (it carries onnxruntime's official MIT headers), fetched
   with ``npm pack`` once and cached outside the repository (``$GRAPHC_HOME``, default
   ``~/.cache/graphc``, the home of graphc's other caches). The library asks onnxruntime for C API version 17 at load time, so
   a newer header still gives a library that loads in onnxruntime 1.17 and later.
2. The library is cached under ``<cache>/kernels/<hash>/``, the hash over every source file,
   the CMake file and the header: a changed source gives a new build, an unchanged one none.
   A build goes to a temporary folder renamed into place, so a cut-off build leaves nothing
   that looks finished.
3. A missing tool (cmake, a C++17 compiler, npm when no header is given) is a ``KernelBuildError``
   that says which, in one line.

CMake and a compiler do this job well; this module only finds the header and the cache.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile

SOURCE = pathlib.Path(__file__).resolve().parent / "cpu"
LIBRARY_NAME = "libgraphc_kernels.so"
HEADER_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"  # onnxruntime 1.2x headers, C API version 29
HEADER_IN_PACKAGE = "onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"


class KernelBuildError(RuntimeError):
    """The kernel library cannot be built here (the message says what is missing)."""


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GRAPHC_HOME") or pathlib.Path.home() / ".cache" / "graphc")


def _run(command: list[str], cwd: pathlib.Path, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise KernelBuildError(f"cannot {what}: {command[0]} is not installed") from None
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise KernelBuildError(f"cannot {what}: {' '.join(command[:2])} exited {done.returncode}: {tail[0]}")


def header_dir() -> pathlib.Path:
    """Rule 1: the folder that holds ``onnxruntime_c_api.h``."""
    given = os.environ.get("ORT_INCLUDE_DIR")
    if given:
        folder = pathlib.Path(given)
        if not (folder / "onnxruntime_c_api.h").is_file():
            raise KernelBuildError(f"ORT_INCLUDE_DIR={given} holds no onnxruntime_c_api.h")
        return folder
    folder = cache_root() / "onnxruntime-headers" / HEADER_PACKAGE.replace("@", "-")
    if (folder / "onnxruntime_c_api.h").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        work = pathlib.Path(tmp)
        _run(["npm", "pack", "--silent", HEADER_PACKAGE], work, "fetch the onnxruntime headers")
        archive = next(work.glob("*.tgz"))
        staged = work / "headers"
        staged.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and HEADER_IN_PACKAGE in member.name and member.name.endswith(".h"):
                    member.name = pathlib.PurePosixPath(member.name).name
                    tar.extract(member, staged, filter="data")
        if not (staged / "onnxruntime_c_api.h").is_file():
            raise KernelBuildError(f"the npm package {HEADER_PACKAGE} holds no onnxruntime_c_api.h")
        staged.rename(folder)
    return folder


def source_hash(headers: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.rglob("*")) + [headers / "onnxruntime_c_api.h"]:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build() -> pathlib.Path:
    """Rule 2: the built library for the current sources (building it if needed)."""
    headers = header_dir()
    folder = cache_root() / "kernels" / source_hash(headers)
    library = folder / LIBRARY_NAME
    if library.is_file():
        return library
    if shutil.which("cmake") is None:
        raise KernelBuildError("cannot build graphc's kernels: cmake is not installed")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        work = pathlib.Path(tmp)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", str(SOURCE), "-B", str(work / "build"), *generator, f"-DORT_INCLUDE_DIR={headers}",
              "-DCMAKE_BUILD_TYPE=Release"], work, "configure graphc's kernels")
        _run(["cmake", "--build", str(work / "build"), "--parallel", "2"], work, "build graphc's kernels")
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(work / "build" / LIBRARY_NAME, staged / LIBRARY_NAME)
        try:
            staged.rename(folder)
        except OSError:  # another process finished the same build first
            if not library.is_file():
                raise
    return library
