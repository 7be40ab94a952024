"""Reading ``.npy`` and ``.npz`` data files with bounded memory.

numpy's ``np.load`` reads an ``.npz`` member whole into memory, trusts the shape its header
declares (a 100-byte header can declare a petabyte: ``MemoryError``), and cannot memory-map
members of a zip archive. graphc reads only the rows a command uses, so these rules apply
(numpy's own header parser and ``np.memmap`` do the work; only the zip bookkeeping is here):

1. every array's declared size (shape x item size, from its ``.npy`` header) is checked
   against the bytes the file holds before anything is allocated: a header that declares more
   is refused, naming the array and both sizes;
2. a ``.npy`` file, and an ``.npz`` member stored without compression (``np.savez``), is
   memory-mapped read-only: only the rows that are used are ever read, and the file cannot
   be written through it;
3. a compressed ``.npz`` member (``np.savez_compressed``) is inflated in chunks into an
   anonymous temporary file (deleted as soon as it is opened) and memory-mapped from there,
   so its inflated size costs disk, never memory; a member that inflates to more than
   ``MAX_INFLATED_BYTES``, or to more than the free space of the temporary directory, is
   refused before it is inflated;
4. pickled (object) arrays are refused, as ``np.load(allow_pickle=False)`` does.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import zipfile

import numpy as np

from graphc.errors import GraphcError, first_line

MAX_INFLATED_BYTES = 64 * 2**30  # the largest compressed .npz member graphc inflates (rule 3)
_CHUNK = 16 * 2**20


def _read_header(stream, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise GraphcError(f"{where}: not a .npy array ({first_line(exc)})") from None
    if dtype.hasobject:
        raise GraphcError(f"{where}: holds Python objects (a pickled array); graphc reads numeric and string "
                          f"arrays only, never pickles")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * dtype.itemsize


def _check_declared(where: str, shape, dtype, held: int) -> int:
    declared = _declared_bytes(shape, dtype)
    if declared > held:
        raise GraphcError(f"{where}: its header declares shape {'x'.join(map(str, shape)) or 'scalar'} "
                          f"{dtype} ({declared:,} bytes) but the file holds {held:,} bytes")
    return declared


def _mapped(path: pathlib.Path | str, offset: int, shape, fortran: bool, dtype: np.dtype) -> np.ndarray:
    if _declared_bytes(shape, dtype) == 0:
        return np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_npy(path: pathlib.Path) -> np.ndarray:
    """A ``.npy`` file, memory-mapped read-only (rules 1, 2, 4)."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_header(f, where)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise GraphcError(f"{where}: cannot read ({first_line(exc)})") from None
    _check_declared(where, shape, dtype, size - offset)
    return _mapped(path, offset, shape, fortran, dtype)


def _member_data_offset(info: zipfile.ZipInfo, path: pathlib.Path) -> int:
    """Where a stored member's bytes start in the archive file (after its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise GraphcError(f"{path}: {info.filename}: damaged zip entry")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> tuple[np.ndarray, int]:
    """A compressed member inflated into an unlinked temporary file, memory-mapped (rule 3)."""
    scratch = tempfile.gettempdir()
    free = shutil.disk_usage(scratch).free
    if info.file_size > MAX_INFLATED_BYTES or info.file_size > free:
        raise GraphcError(f"{where}: inflates to {info.file_size:,} bytes, more than graphc inflates "
                          f"({min(MAX_INFLATED_BYTES, free):,} bytes); store it uncompressed (np.savez) or use "
                          f"a directory of .npy files, which are memory-mapped")
    with archive.open(info) as stream:
        shape, fortran, dtype = _read_header(stream, where)
        header = stream.tell() if stream.seekable() else None
        declared = _check_declared(where, shape, dtype, info.file_size - (header or 0))
        with tempfile.TemporaryFile(prefix="graphc-npz-") as scratch_file:
            left = declared
            while left:
                chunk = stream.read(min(_CHUNK, left))
                if not chunk:
                    raise GraphcError(f"{where}: ends before the {declared:,} bytes its header declares")
                scratch_file.write(chunk)
                left -= len(chunk)
            scratch_file.flush()
            if declared == 0:
                return np.zeros(shape, dtype=dtype), declared
            # the mapping keeps the (already unlinked) file alive after it is closed
            return np.memmap(scratch_file, dtype=dtype, mode="r", shape=shape,
                             order="F" if fortran else "C"), declared


def read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, keyed by name without ``.npy`` (rules 1-4)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise GraphcError(f"{path}: cannot read as .npz ({first_line(exc)})") from None
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            where = f"{path}: array {key!r}"
            try:
                if info.compress_type == zipfile.ZIP_STORED:
                    with archive.open(info) as stream:
                        shape, fortran, dtype = _read_header(stream, where)
                        header = stream.tell()
                    _check_declared(where, shape, dtype, info.file_size - header)
                    offset = _member_data_offset(info, path) + header
                    arrays[key] = _mapped(path, offset, shape, fortran, dtype)
                else:
                    arrays[key], _ = _inflate(archive, info, where)
            except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
                raise GraphcError(f"{where}: cannot read ({first_line(exc)})") from None
    return arrays
