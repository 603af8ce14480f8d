"""``copy_blob``: a consistent copy of one committed snapshot, taken while a writer works.

The source is opened as a reader: its lease keeps the snapshot's blocks, so
a writer may append, overwrite or truncate meanwhile and the copy is still
exactly that one snapshot. The copy is built as a complete blob (or TensorDB)
in a hidden sibling of the destination, ``.NAME.creating-XXXXXXXX``
(``_dirs.build_dir``, as a creation does), held locked while it is built,
made durable by its close, then renamed into place
(the commit point) and the parent fsynced: the destination appears whole or
not at all, and a copy killed half way leaves a hidden directory that the
next creation of the name sweeps (``_dirs.sweep_leftovers``).

Without ``compact`` the blocks are copied as whole files (``extend`` with
``maintain_order=False``, which keeps the rows' order here: the copy starts
empty) and the layout is kept; with ``compact`` the rows are rewritten in
order, in blocks of ``block_size`` (by default the source's).
"""

from __future__ import annotations

import errno
import os
import secrets
import time

from . import _dirs, _durable
from ._args import abspath
from ._blob import TensorBlob
from ._db import TensorDB
from ._meta import Meta, read_meta
from ._transfer import Progress, Transfer
from .errors import (
    BlobNotFoundError,
    DestinationExistsError,
    InvalidArgumentError,
    TensorBlobError,
    from_os_error,
)


def copy_blob(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    compact: bool = False,
    block_size: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Copy the newest committed snapshot of the blob or TensorDB ``src`` to ``dst``; return
    the rows copied.

    ``src`` may be open by a writer that keeps appending, overwriting or
    truncating: the copy is exactly one committed snapshot of it, never a mix.
    ``dst`` must not exist (or be an empty directory); it appears whole or
    not at all, even after a crash or a power cut, and is durable when this
    returns. Memory use is bounded (a block at a time).

    Args:
        src: The blob or TensorDB to copy. Only read.
        dst: Where the copy goes. Missing parent directories are created.
        compact: Rewrite the rows in order instead of copying block files
            (drops nothing that matters, but takes no shortcut); needed to
            change ``block_size``.
        block_size: Rows per block of the copy (``compact`` only; default: the
            source's).
        progress: Called as ``progress(rows_done, rows_total)`` as it goes.

    Raises:
        BlobNotFoundError: nothing at ``src``.
        NotABlobError: ``src`` is not a blob or TensorDB.
        DestinationExistsError: ``dst`` exists and is not an empty directory.
        InvalidArgumentError: ``block_size`` without ``compact``, or not a positive int.
        DiskFullError: the disk filled up; no ``dst`` was left.
        BlobOSError: another error writing the copy; no ``dst`` was left.
    """
    return run_copy(src, dst, compact=compact, block_size=block_size, progress=progress).rows


def run_copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    compact: bool = False,
    block_size: int | None = None,
    progress: Progress | None = None,
) -> Transfer:
    """``copy_blob``, returning what was done."""
    t0 = time.monotonic()
    src_path, dst_path = abspath(src), abspath(dst)
    if not isinstance(compact, bool):
        raise InvalidArgumentError(f"compact={compact!r}: must be True or False")
    if block_size is not None:
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise InvalidArgumentError(f"block_size={block_size!r}: must be a positive int")
        if not compact:
            raise InvalidArgumentError("block_size= changes the layout: it needs compact=True")
    if not os.path.lexists(src_path):
        raise BlobNotFoundError(f"nothing to copy at {src_path!r}")
    cls = TensorDB if read_meta(src_path).db else TensorBlob
    with cls.open(src_path, "r") as source:  # its lease holds this snapshot's blocks
        _free(dst_path)
        meta = source._meta
        B = block_size or meta.block_size
        fields = [(f.name, f.dtype_name, f.shape) for f in meta.fields]
        uuid = secrets.token_bytes(16)
        new = Meta.database(uuid, fields, B) if meta.db else Meta.blob(uuid, *fields[0][1:], B)
        try:
            tmp, held = _dirs.build_dir(dst_path)  # locked: a sweeper leaves a live build alone
        except OSError as exc:
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(exc, dst_path, "creating the copy", "No copy was left.") from exc
        try:
            _dirs.build(tmp, new)
            with cls.open(tmp, "a") as copy:  # filled in one transaction, durable at close
                copy._extend(copy._check_writable(), source, compact, progress)
            try:
                _durable.rename(tmp, dst_path)  # the commit point: dst appears, whole
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise DestinationExistsError(
                        f"cannot copy to {dst_path!r}: it appeared during the copy"
                    ) from None
                raise
        except BaseException as exc:
            if os.path.isdir(tmp):
                _dirs.remove_tree(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, TensorBlobError):
                raise from_os_error(exc, dst_path, "writing the copy", "No copy was left.") from exc
            raise
        finally:
            os.close(held)
        _durable.fsync_dir(os.path.dirname(dst_path))
        return Transfer(
            dst_path,
            src_path,
            "tensorblob",
            None if meta.db else meta.dtype,
            () if meta.db else meta.shape,
            len(source),
            len(source) * meta.row_bytes,
            time.monotonic() - t0,
            meta.names if meta.db else (),
        )


def _free(dst: str) -> None:
    if os.path.lexists(dst) and not (os.path.isdir(dst) and not os.listdir(dst)):
        raise DestinationExistsError(f"cannot copy to {dst!r}: it exists")
