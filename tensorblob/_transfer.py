"""Data out: ``export_blob`` writes a blob's (or a TensorDB's) rows to ``.npy`` or ``.safetensors``.

Export and import (``_import``) are written against the public
``TensorBlob`` API and move rows in bounded pieces
(``_source.CHUNK_BYTES``), so a blob larger than memory goes through. Every
check that can refuse the call runs before anything is written. The formats
live in ``_fmt_npy``, ``_fmt_safetensors`` and ``_fmt_orig`` (the original
tensorblob's blob directories, import only).

An export's file appears whole or not at all: it is written to a hidden
temporary file in the same directory (``.NAME.export-XXXXXXXX``), fsynced,
renamed into place, and the directory is fsynced, each step through
``_durable`` (the crash-injection seam). The temporary file is flocked while
it is written; one left behind by a crash is deleted by the next export to
the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import _durable, _fmt_npy, _fmt_safetensors
from ._blob import TensorBlob
from ._db import TensorDB
from ._formats import DEFAULT_NAME, EXPORT_FORMATS, SUFFIXES
from ._meta import read_meta
from ._source import spans
from .errors import (
    BlobNotFoundError,
    BlobTypeError,
    DestinationExistsError,
    InvalidArgumentError,
    TensorBlobError,
    UnsupportedFormatError,
    from_os_error,
)

Progress = Callable[[int, int], None]


@dataclass
class Transfer:
    """What an export or import did (for the command line's report)."""

    blob: str
    file: str
    format: str
    dtype: torch.dtype | None  # None for a TensorDB
    shape: tuple[int, ...]
    rows: int
    nbytes: int
    seconds: float
    fields: tuple[str, ...] = ()  # a TensorDB's


def abspath(path: object, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise BlobTypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def choice(value: object, what: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidArgumentError(f"{what}={value!r}: must be one of {', '.join(allowed)}")
    return value


def export_format(out: str, format: str | None) -> str:
    """The format to export to: ``format``, or the one ``out``'s suffix names.

    Raises:
        InvalidArgumentError: ``format`` is not one of EXPORT_FORMATS.
        UnsupportedFormatError: ``format`` is None and the suffix names no format.
    """
    if format is not None:
        return choice(format, "format", EXPORT_FORMATS)
    found = SUFFIXES.get(os.path.splitext(out)[1].lower())
    if found is None:
        raise UnsupportedFormatError(
            f"cannot tell the format to export to from {out!r}: name it *.npy or "
            "*.safetensors, or pass format='npy' or 'safetensors'"
        )
    return found


def export_blob(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    name: str | None = None,
    field: str | None = None,
    if_exists: str = "error",
    progress: Progress | None = None,
) -> int:
    """Write every row of the blob (or TensorDB) at ``src`` into one file at ``out``;
    return the rows.

    A blob: ``.npy`` holds one C-ordered little-endian array ``(len, *shape)``;
    ``.safetensors`` one tensor of that shape, named ``name`` (``"data"``). A
    TensorDB: ``.safetensors`` holds one tensor per field, named after it, in
    the schema's order (only ``field`` if given); ``.npy`` holds one array, so
    ``field`` must name the field to export. The rows are copied bit for bit.
    The export reads one snapshot (the rows committed when it starts: the
    same records of every field) and holds at most a few tens of MiB of them
    in memory at once. ``out`` appears whole or not at all, even after a
    crash or a power cut.

    Args:
        src: The blob or TensorDB to export. Only read: a writer may keep appending.
        out: The file to write. Its directory must exist.
        format: ``"npy"`` or ``"safetensors"``; by default, from ``out``'s suffix.
        name: The tensor's name in a ``.safetensors`` file of a blob.
        field: The field of a TensorDB to export alone.
        if_exists: ``"error"`` (default) refuses an existing ``out``;
            ``"replace"`` replaces it atomically.
        progress: Called as ``progress(rows_done, rows_total)`` after each piece
            (for a TensorDB of several fields, rows of the fields written so far
            in proportion to their bytes).

    Raises:
        BlobNotFoundError: no blob at ``src``, or ``out``'s directory is missing.
        NotABlobError: ``src`` is not a blob or a TensorDB.
        UnsupportedFormatError: the format cannot hold a dtype (``bfloat16``
            in ``.npy``; ``complex128`` in ``.safetensors``), or cannot be told
            from ``out``, or ``.npy`` for a TensorDB without ``field``. Nothing
            is written.
        DestinationExistsError: ``out`` exists (or is a directory) and
            ``if_exists`` is not ``"replace"``.
        InvalidArgumentError: a bad ``format``, ``name`` or ``if_exists``;
            ``field`` given for a blob, ``name`` for a TensorDB.
        UnknownFieldError: the TensorDB has no field ``field``.
        DiskFullError: writing ``out`` ran out of space; no ``out`` was left.
        BlobOSError: another error writing ``out``; no ``out`` was left.
    """
    return run_export(
        src,
        out,
        format=format,
        name=name,
        field=field,
        if_exists=if_exists,
        progress=progress,
    ).rows


def run_export(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    name: str | None = None,
    field: str | None = None,
    if_exists: str = "error",
    progress: Progress | None = None,
) -> Transfer:
    """``export_blob``, returning what was done."""
    t0 = time.monotonic()
    out_path = abspath(out, "out")
    fmt = export_format(out_path, format)
    choice(if_exists, "if_exists", ("error", "replace"))
    if name is not None:
        name = _fmt_safetensors.check_name(name)
    if field is not None and not isinstance(field, str):
        raise BlobTypeError(f"field must be a str, got {type(field).__name__}")
    parent = os.path.dirname(out_path)
    if not os.path.isdir(parent):
        raise BlobNotFoundError(
            f"cannot export to {out_path!r}: directory {parent!r} does not exist"
        )
    _check_free(out_path, if_exists)
    root = abspath(src, "src")
    replace = if_exists == "replace"
    if _kind(root) == "TensorDB":
        if name is not None:
            raise InvalidArgumentError(
                f"name={name!r}: the tensors exported from a TensorDB are named after its "
                "fields (pass field= to export one of them)"
            )
        with TensorDB.open(root, "r") as db:
            cols = [db.column(f) for f in (db.fields if field is None else (field,))]
            what = f"database {db.path!r}"
            if fmt == "npy" and len(cols) > 1:
                raise UnsupportedFormatError(
                    f"cannot export {what} to .npy, which holds one array: pass field= "
                    "(--field) to export one of its fields, or export to .safetensors, which "
                    "holds every field"
                )
            n = len(db)
            if fmt == "npy":
                head = _fmt_npy.header(cols[0].dtype, cols[0].shape, n, what)
            else:
                head = _fmt_safetensors.header([(c.name, c.dtype, c.shape) for c in cols], n, what)
            nbytes = _write_whole(out_path, head, _pieces(cols, n, progress), replace=replace)
            names = tuple(c.name for c in cols)
            secs = time.monotonic() - t0
            return Transfer(db.path, out_path, fmt, None, (), n, nbytes, secs, names)
    if field is not None:
        raise InvalidArgumentError(
            f"field={field!r}: {root!r} is not a TensorDB (field= picks a field of one)"
        )
    with TensorBlob.open(root, "r") as blob:
        n, dtype, shape = len(blob), blob.dtype, blob.shape
        what = f"blob {blob.path!r}"
        if fmt == "npy":
            head = _fmt_npy.header(dtype, shape, n, what)
        else:
            head = _fmt_safetensors.header([(name or DEFAULT_NAME, dtype, shape)], n, what)
        nbytes = _write_whole(out_path, head, _pieces([blob], n, progress), replace=replace)
        return Transfer(blob.path, out_path, fmt, dtype, shape, n, nbytes, time.monotonic() - t0)


def _kind(root: str) -> str | None:
    """``meta``'s kind of the blob at ``root``; None if it has none (``open`` then says why)."""
    try:
        return read_meta(root).kind
    except (TensorBlobError, OSError):
        return None


def _pieces(sources: list[Any], n: int, progress: Progress | None) -> Iterator[memoryview]:
    """The rows ``0:n`` of each source (a blob, or a TensorDB's columns) in turn, as the
    bytes stored, a bounded piece at a time."""
    sizes = [s.dtype.itemsize * _numel(s.shape) for s in sources]
    total, done = sum(sizes) * n, 0
    for src, row_bytes in zip(sources, sizes, strict=True):
        for start, stop in spans(n, row_bytes):
            # A new contiguous tensor: its bytes, as stored. Only the view keeps
            # it alive, so one piece at a time is in memory.
            view = memoryview(src[start:stop].reshape(-1).view(torch.uint8).numpy())
            yield view
            del view
            done += (stop - start) * row_bytes
            if progress is not None:
                progress(n * done // total if total else n, n)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_free(out: str, if_exists: str) -> None:
    if os.path.isdir(out):
        raise DestinationExistsError(f"cannot export to {out!r}: it is a directory")
    if if_exists == "error" and os.path.lexists(out):
        raise DestinationExistsError(
            f"{out!r} exists; pass if_exists='replace' (--replace) to replace it"
        )


def _write_whole(out: str, head: bytes, pieces: Iterator[memoryview], *, replace: bool) -> int:
    """Write ``head`` and ``pieces`` to ``out``, all or nothing and durably; return the bytes.

    Steps, each through ``_durable``: create the hidden temporary file, append,
    fdatasync it, rename it to ``out`` (the commit point), fsync the directory.
    A failure removes the temporary file and leaves ``out`` as it was.
    """
    parent, base = os.path.split(out)
    _sweep(parent, base)
    tmp = os.path.join(parent, f".{base}.export-{secrets.token_hex(4)}")
    nbytes = len(head)
    try:
        _durable.create_file(tmp, b"", sync=False)
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: a sweeper leaves it alone
            _durable.append(fd, head, tmp)
            for piece in pieces:
                _durable.append(fd, piece, tmp)  # type: ignore[arg-type]
                nbytes += len(piece)
                del piece  # before the next piece is read
            _durable.fdatasync(fd, tmp)
            if not replace and os.path.lexists(out):  # appeared while we wrote
                raise DestinationExistsError(
                    f"{out!r} appeared during the export; nothing was written"
                )
            _durable.rename(tmp, out)
        finally:
            os.close(fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _durable.unlink(tmp, missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, TensorBlobError):
            raise from_os_error(
                exc, out, "writing it", "Nothing was written.", kind="export output"
            ) from exc
        raise
    try:
        _durable.fsync_dir(parent)
    except OSError as exc:
        raise from_os_error(
            exc,
            out,
            "making its directory entry durable",
            "The file is complete, but may not survive a power loss.",
            kind="export output",
        ) from exc
    return nbytes


def _sweep(parent: str, base: str) -> None:
    """Delete the temporary files of exports to ``base`` whose writer died (unlocked)."""
    prefix = f".{base}.export-"
    with contextlib.suppress(OSError):
        for entry in os.listdir(parent):
            if not entry.startswith(prefix):
                continue
            path = os.path.join(parent, entry)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _durable.unlink(path, missing_ok=True)
            except OSError:
                pass  # a live export holds it
            finally:
                os.close(fd)
