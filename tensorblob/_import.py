"""Data in: ``import_blob`` copies a ``.npy``, ``.safetensors`` or original blob into a blob;
``import_db`` copies an original ``TensorDB``, or a ``.safetensors`` file of several
tensors, into a ``TensorDB``.

The input is checked completely first (``_fmt_*.open_source``,
``_fmt_orig.open_db``), so every refusal comes before anything is written;
then its rows go in one transaction, a bounded piece at a time
(``_import_rows``, for both).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from . import _fmt_npy, _fmt_orig, _fmt_safetensors
from ._args import DEFAULT_TIMEOUT
from ._blob import TensorBlob
from ._db import TensorDB
from ._formats import IMPORT_FORMATS, SUFFIXES
from ._meta import META
from ._source import Source, spans
from ._transfer import Progress, Transfer, abspath, choice
from .errors import (
    BlobNotFoundError,
    DestinationExistsError,
    InvalidArgumentError,
    TensorBlobError,
    UnsupportedFormatError,
    from_os_error,
)


def sniff(path: str) -> str:
    """Tell the format of the input at ``path`` from its first bytes (or what it holds).

    Raises:
        BlobNotFoundError: nothing at ``path``.
        UnsupportedFormatError: not a format ``import_blob`` reads.
    """
    if not os.path.lexists(path):
        raise BlobNotFoundError(f"nothing to import at {path!r}: no such file or directory")
    if os.path.isdir(path):
        if _fmt_orig.is_original(path):
            return "tensorblob-0.3"
        if os.path.exists(os.path.join(path, META)):
            raise UnsupportedFormatError(
                f"{path!r} is already a blob of this library: copy its rows with "
                "TensorBlob.extend, not import"
            )
        raise UnsupportedFormatError(
            f"directory {path!r} is not a blob of the original tensorblob (no .conf and .stat)"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_fmt_npy.MAGIC):
        return "npy"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    found = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if found is None:
        raise UnsupportedFormatError(
            f"cannot tell the format of {path!r}: it is not a .npy, .safetensors, or a blob "
            "directory of the original tensorblob"
        )
    return found  # a damaged file of a known suffix: its reader says what is wrong


def open_source(path: str, format: str | None = None, name: str | None = None) -> Source:
    """Check the input at ``path`` completely and return its rows (see ``import_blob``)."""
    fmt = "known" if format is None else choice(format, "format", IMPORT_FORMATS)
    try:
        if format is None:
            fmt = sniff(path)
        if not os.path.lexists(path):
            raise BlobNotFoundError(f"nothing to import at {path!r}: no such file or directory")
        if name is not None and fmt != "safetensors":
            raise InvalidArgumentError(f"name={name!r} applies only to .safetensors inputs")
        if fmt == "npy":
            return _fmt_npy.open_source(path)
        if fmt == "safetensors":
            return _fmt_safetensors.open_source(
                path, None if name is None else _fmt_safetensors.check_name(name)
            )
        if not os.path.isdir(path):
            raise UnsupportedFormatError(f"{path!r} is a file, not an original blob directory")
        return _fmt_orig.open_source(path)
    except IsADirectoryError:
        raise UnsupportedFormatError(f"{path!r} is a directory, not a {fmt} file") from None
    except OSError as exc:
        if isinstance(exc, TensorBlobError):
            raise
        raise from_os_error(exc, path, "reading it", "Nothing was written.", kind="input") from exc


def import_blob(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str | None = None,
    name: str | None = None,
    block_size: int | None = None,
    if_exists: str = "error",
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> int:
    """Copy the rows of ``src`` into the blob ``dst`` in one transaction; return the rows copied.

    ``src`` is a ``.npy`` file, a ``.safetensors`` file (one tensor of it), or
    a blob directory of the original tensorblob (0.3). Rows are copied bit for
    bit, in pieces of a few tens of MiB. ``dst`` is created (its layout taken
    from ``src``) unless it exists. The rows go in as one transaction: after a
    crash ``dst`` holds all of them or none of them (a ``dst`` this call
    created is then an empty blob, which a rerun accepts). On an error
    ``dst`` is left as it was, and one this call created is deleted again.

    Args:
        src: The input. Only read.
        dst: The blob to fill.
        format: ``"npy"``, ``"safetensors"`` or ``"tensorblob-0.3"``; by default
            told from the input's first bytes.
        name: The tensor of a ``.safetensors`` file; by default ``"data"``, or
            the file's only tensor.
        block_size: Rows per block of a new ``dst``; by default the original
            blob's, else 8192.
        if_exists: What to do with a ``dst`` that holds rows: ``"error"``
            (default) refuses; ``"replace"`` replaces its rows and ``"append"``
            appends after them, in the same one transaction. An empty ``dst`` is
            always accepted. Its dtype and row shape must match ``src``'s.
        timeout: Seconds to wait for ``dst``'s writer lock.
        progress: Called as ``progress(rows_done, rows_total)`` after each piece.

    Raises:
        BlobNotFoundError: nothing at ``src``, or ``dst``'s parent directory is missing.
        UnsupportedFormatError: ``src``'s format cannot be told, or it holds
            rows no blob holds (objects, strings, a 0-d array, a dimension of 0).
        CorruptInputError: ``src`` is damaged or shorter than its header says.
        DestinationExistsError: ``dst`` holds rows and ``if_exists`` is ``"error"``.
        InvalidArgumentError: a bad argument, or ``dst``'s layout conflicts with ``src``.
        NotABlobError: ``dst`` exists and is not a blob.
        MissingDependencyError: a ``.safetensors`` input without the safetensors package.
        LockTimeoutError: another writer kept ``dst``'s lock past ``timeout``.
        BlobOSError: reading ``src`` failed, or writing ``dst``'s rows failed
            (``DiskFullError`` for a full disk) during the transaction, which
            was rolled back.
        BlobIOError: a commit step of ``dst`` failed (its handle closed itself;
            see ``TensorBlob``).
    """
    return run_import(
        src,
        dst,
        format=format,
        name=name,
        block_size=block_size,
        if_exists=if_exists,
        timeout=timeout,
        progress=progress,
    ).rows


def import_db(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    block_size: int | None = None,
    if_exists: str = "error",
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> int:
    """Copy the records of ``src`` into the TensorDB ``dst`` in one transaction; return the
    records copied.

    ``src`` is a TensorDB of the original tensorblob, a directory of its format
    (docs/migration.md): its committed records are its ``.stat``'s ``len``
    rows of every field (fewer if a field is shorter, as the original's own
    open took them), and the new database gets the same fields in the same
    order and the original's block size. Or ``src`` is a ``.safetensors``
    file (a TensorDB's export): each tensor is a field, named after it, in
    the order of their bytes, and every tensor must have the same number of
    rows. ``block_size`` sets another block size. Everything else is as
    ``import_blob``: every record or none, ``if_exists``, ``progress``, and
    its errors.

    Raises:
        UnsupportedFormatError: ``src`` is neither (an original blob, a
            ``.npy`` file: ``import_blob``), or its tensors have different
            numbers of rows.
        InvalidArgumentError: a tensor's name cannot name a field.
        TensorBlobError: the errors of ``import_blob``.
    """
    return run_import(
        src,
        dst,
        block_size=block_size,
        if_exists=if_exists,
        timeout=timeout,
        progress=progress,
        db=True,
    ).rows


def run_import(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str | None = None,
    name: str | None = None,
    block_size: int | None = None,
    if_exists: str = "error",
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    db: bool | None = False,
) -> Transfer:
    """``import_blob`` (``db=False``) or ``import_db`` (``db=True``), returning what was
    done; ``db=None`` tells the two apart (the command line)."""
    t0 = time.monotonic()
    src_path, dst_path = abspath(src, "src"), abspath(dst, "dst")
    choice(if_exists, "if_exists", ("error", "replace", "append"))
    if db is None:
        db = _holds_records(src_path, format, name)
    if db:
        fields, length, suggested = _open_db(src_path)
        sources = [s for _, s in fields]
        names = [n for n, _ in fields]
        schema = {n: (s.dtype, s.shape) for n, s in fields}
        dst_open = lambda b: TensorDB.open(  # noqa: E731
            dst_path, "a", schema=schema, block_size=b, timeout=timeout
        )
        piece = lambda a, b: {n: s.read(a, b) for n, s in fields}  # noqa: E731
        kind = "database"
    else:
        source = open_source(src_path, format, name)
        sources, names, length, suggested = [source], [], source.length, source.block_size
        dst_open = lambda b: TensorBlob.open(  # noqa: E731
            dst_path, "a", dtype=source.dtype, shape=source.shape, block_size=b, timeout=timeout
        )
        piece = source.read
        kind = "blob"
    row_bytes = sum(s.row_bytes for s in sources)
    try:
        _import_rows(
            dst_open,
            piece,
            length,
            row_bytes,
            src=src_path,
            dst=dst_path,
            kind=kind,
            block_size=block_size if block_size is not None else suggested,
            if_exists=if_exists,
            progress=progress,
        )
    finally:
        for s in sources:
            s.close()
    first = sources[0]
    return Transfer(
        dst_path,
        src_path,
        first.format,
        None if db else first.dtype,
        () if db else first.shape,
        length,
        length * row_bytes,
        time.monotonic() - t0,
        tuple(names),
    )


def _holds_records(path: str, format: str | None, name: str | None) -> bool:
    """Does the command line's ``import`` of ``path`` make a TensorDB? For an original
    TensorDB, and for a ``.safetensors`` file of several tensors when no ``--name``
    picks one (a blob's import would refuse it)."""
    if format in (None, "tensorblob-0.3") and os.path.isdir(path):
        return _fmt_orig.is_original(path) and _fmt_orig.is_database(path)
    if format not in (None, "safetensors") or name is not None or not os.path.isfile(path):
        return False
    try:
        return sniff(path) == "safetensors" and len(_fmt_safetensors.tensor_names(path)) > 1
    except (TensorBlobError, OSError):
        return False  # import_blob says what is wrong with it


def _open_db(path: str) -> tuple[list[tuple[str, Source]], int, int | None]:
    if not os.path.lexists(path):
        raise BlobNotFoundError(f"nothing to import at {path!r}: no such file or directory")
    if os.path.isfile(path) and sniff(path) == "safetensors":
        return _open_tensors(path)
    if not (os.path.isdir(path) and _fmt_orig.is_original(path) and _fmt_orig.is_database(path)):
        raise UnsupportedFormatError(
            f"{path!r} is not a TensorDB of the original tensorblob (a directory with .conf, "
            ".stat and a schema) or a .safetensors file; an original blob goes to import_blob"
        )
    try:
        return _fmt_orig.open_db(path)
    except OSError as exc:
        if isinstance(exc, TensorBlobError):
            raise
        raise from_os_error(exc, path, "reading it", "Nothing was written.", kind="input") from exc


def _open_tensors(path: str) -> tuple[list[tuple[str, Source]], int, None]:
    """Every tensor of the ``.safetensors`` file at ``path`` as a field, in the order of
    their bytes; they must have the same number of rows."""
    fields: list[tuple[str, Source]] = []
    try:
        for n in _fmt_safetensors.tensor_names(path):
            fields.append((n, _fmt_safetensors.open_source(path, n)))
        lengths = {n: s.length for n, s in fields}
        if not fields or len(set(lengths.values())) > 1:
            raise UnsupportedFormatError(
                f"{path!r} cannot be a TensorDB: its tensors must have the same number of "
                f"rows, one tensor per field; it has {lengths or 'no tensor'}"
            )
    except BaseException:
        for _, s in fields:
            s.close()
        raise
    return fields, fields[0][1].length, None


def _holds_something(path: str) -> bool:
    return os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path))


def _import_rows(
    dst_open: Callable[[int | None], Any],
    piece: Callable[[int, int], Any],
    length: int,
    row_bytes: int,
    *,
    src: str,
    dst: str,
    kind: str,
    block_size: int | None,
    if_exists: str,
    progress: Progress | None,
) -> None:
    """Write rows ``piece(start, stop)`` for ``0:length`` into the blob or database that
    ``dst_open(block_size)`` opens (``"a"``, creating it), in one transaction."""
    existed = _holds_something(dst)
    if existed and if_exists == "error":
        with (TensorDB if kind == "database" else TensorBlob).open(dst, "r") as old:
            _refuse_rows(old, src, length)  # a reader: changes nothing
    target = dst_open(block_size if not existed else None)
    created = not existed and len(target) == 0
    committed = False
    try:
        if if_exists == "error":
            _refuse_rows(target, src, length)  # again, under the lock: a writer may have been first
        with target.transaction():  # every row or none
            if if_exists == "replace":
                target.truncate(0)
            for start, stop in spans(length, row_bytes):
                target.write(piece(start, stop))
                if progress is not None:
                    progress(stop, length)
        committed = True
    finally:
        target.close()
        if not committed and created:  # created by this call: do not leave it behind
            with contextlib.suppress(Exception):
                type(target).unlink(dst, missing_ok=True, timeout=0)


def _refuse_rows(target: Any, src: str, length: int) -> None:
    if len(target):
        raise DestinationExistsError(
            f"{target.path!r} already holds {len(target)} rows; pass if_exists='replace' "
            "(--replace) or 'append' (--append) to import "
            f"{length} rows from {src!r} into it"
        )
