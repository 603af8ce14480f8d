"""``TensorBlob``: the public, file-like API: rows as tensors over the engine (``Handle``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from . import _dirs, _rows, _watch
from ._args import (
    DEFAULT_TIMEOUT,
    abspath,
    as_rows,
    check_open,
    check_timeout,
)
from ._handle import Handle
from ._meta import Meta, parse_dtype, parse_shape
from .errors import (
    BlobTypeError,
    DTypeMismatchError,
    ShapeMismatchError,
    TensorBlobError,
    from_os_error,
)

_FAST_BYTES = 1 << 16  # write() batches up to this size take the memmove fast path


class TensorBlob(Handle):
    """A growable on-disk array of same-shaped tensors with a file-like API.

    Open one with ``TensorBlob.open``. Every mutating call (``write``,
    ``truncate``, ``extend``, emptying with ``"w"``) is one atomic, crash-safe
    transaction; ``transaction()`` groups several. A reader sees one committed
    snapshot until ``refresh()``. See the user guide (docs/guide.md) for modes,
    indexing, durability and concurrency.

    Attributes:
        recovery_actions: What the recovery run by this writable open did, one
            line per action; empty if the blob was clean, and for a reader.
    """

    # -- opening --------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        dtype: str | torch.dtype | None = None,
        shape: int | tuple[int, ...] | None = None,
        block_size: int | None = None,
        max_cached_blocks: int | None = None,
        sync: str = "normal",
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool = False,
        trust_fs: bool = False,
    ) -> TensorBlob:
        """Open the blob at ``path`` (a directory), creating it if the mode allows.

        Modes follow Python files: ``"r"`` reads an existing blob; ``"w"`` creates
        it or empties an existing one (one transaction); ``"a"`` creates it if
        missing, starts at the end and every write appends; ``"+"`` adds the other
        direction. Creating is atomic: after a crash the blob is absent or
        complete. Writable modes hold the writer lock until ``close()`` and first
        recover an interrupted transaction (see ``recovery_actions``).

        Args:
            path: The blob's directory. To create it, it must be absent or empty;
                missing parents are created (each made durable).
            mode: ``"r"``, ``"w"``, ``"a"``, ``"r+"``, ``"w+"`` or ``"a+"``.
            dtype: Element type, a ``torch.dtype`` or its name. Needed to create;
                for an existing blob it must match.
            shape: Shape of one row: an int, a tuple, or ``()``. Needed to create;
                for an existing blob it must match.
            block_size: Rows per block file, fixed at creation (default 8192).
                Bigger blocks mean fewer files and mappings but costlier overwrites:
                copy-on-write copies a whole block.
            max_cached_blocks: Block files this handle keeps mapped (default: a
                sixteenth of ``vm.max_map_count``, at least 128). Trades address
                space and kernel maps for remapping time; no effect on safety.
            sync: ``"normal"``: a committed transaction survives the death of the
                process; ``flush()`` and ``close()`` make everything so far survive
                power loss. ``"full"``: every transaction survives power loss when
                it returns, at the cost of fsyncs in every transaction.
            timeout: Seconds a writable open waits for the writer lock (default 30;
                0 fails at once). Readers never wait.
            verify: Check each block against the checksum recorded when its rows
                became durable, the first time this handle maps it (a read of the
                whole block; rows not yet durable have no checksum). A mismatch
                raises CorruptBlobError naming the block file. Off by default:
                ``tensorblob check --deep`` does the same for a whole blob.
            trust_fs: Open a writer even on a filesystem whose locks or fsync
                tensorblob cannot trust (NFS, SMB, Lustre, CephFS, FUSE, ...;
                read from ``/proc/self/mountinfo``). You vouch that they work
                and that no other machine writes. Readers are never refused.

        Returns:
            The open blob; use it as a context manager so that it is closed.

        Raises:
            BlobNotFoundError: ``"r"``/``"r+"`` and nothing at ``path``.
            NotABlobError: ``path`` is a file or a directory tensorblob did not create.
            InvalidArgumentError: bad mode, sync, timeout, verify, trust_fs, dtype, shape,
                block_size or max_cached_blocks; dtype or shape missing to create; or a layout
                that conflicts with the existing blob.
            BlobTypeError: ``path`` is not a str or ``os.PathLike``.
            LockTimeoutError: another writer kept the lock past ``timeout``.
            CorruptBlobError: a file of the blob is damaged.
            UnsupportedVersionError: the blob has a newer format version.
            ReadOnlyFilesystemError: a writable mode on a read-only filesystem.
            BlobPermissionError: no permission to read (or, to write, write) the blob.
            DiskFullError: creating the blob, or the recovery a writable open runs,
                ran out of disk space (nothing committed was lost).
            BlobOSError: another error of the operating system.
            UntrustedFilesystemError: a writable mode on an untrusted filesystem,
                without ``trust_fs=True``.
        """
        check_open(mode, sync, max_cached_blocks, block_size, timeout, verify, trust_fs)
        want_dtype = parse_dtype(dtype) if dtype is not None else None
        want_shape = parse_shape(shape) if shape is not None else None

        def layout(uuid: bytes, block_size: int) -> Meta | None:
            if want_dtype is None or want_shape is None:
                return None
            return Meta.blob(uuid, want_dtype, want_shape, block_size)

        def fits(meta: Meta) -> list[tuple[str, Any, Any]]:
            return [("dtype", want_dtype, meta.dtype_name), ("shape", want_shape, meta.shape)]

        return cls._open_dir(
            path, mode, layout, fits, block_size, max_cached_blocks, sync, timeout, verify, trust_fs
        )

    def _setup(self, root: str, mode: str, meta: Meta, *args: Any, **kw: Any) -> None:
        self._row_shape = torch.Size(meta.shape)
        super()._setup(root, mode, meta, *args, **kw)

    def _fast_ok(self) -> bool:
        """write() copies rows as raw bytes on its fast path: right for every dtype but
        complex ones (a conjugate view holds other bytes than it shows)."""
        rb = self._meta.row_bytes
        self._fast_rows = _FAST_BYTES // rb if rb else 0
        return not self._meta.dtype.is_complex and rb > 0

    def follow(
        self, batch: int | None = None, timeout: float | None = None, *, until_closed: bool = True
    ) -> Iterator[torch.Tensor]:
        """Yield rows from the cursor on, and then each row as a writer commits it (``tail -f``).

        Refreshes the snapshot as it goes and advances the cursor past what it
        yields. Sleeps without using the CPU while no row comes (see
        ``wait_for``). Stops when the writer has closed the blob for good: no
        writer holds the lock and the last one closed the blob (a crashed
        writer did not: it waits for the next one), and every row was yielded.

        Args:
            batch: None (default) yields one row at a time, shape ``shape``;
                an int yields tensors ``(k, *shape)`` of what is committed, up to
                ``batch`` rows each (it never waits to fill a batch).
            timeout: Stop after this many seconds without a new row; None
                (default) has no limit.
            until_closed: False keeps following after the writer closes the
                blob, for the next writer (until ``timeout``).

        Raises:
            UnsupportedOperationError: the blob is open for writing.
            InvalidArgumentError: ``batch`` is below 1, or ``timeout`` negative.
            BlobTypeError: ``batch`` is not an int or None.
            BlobClosedError: the blob is closed.
        """
        return _watch.follow(self, batch, timeout, until_closed)

    @classmethod
    def unlink(
        cls,
        path: str | os.PathLike[str],
        *,
        missing_ok: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> bool:
        """Delete the blob at ``path``, atomically: after a crash it is either whole or gone.

        Takes the writer lock first. Refuses a directory that holds files
        tensorblob did not create, so it never deletes anything else. Returns
        True, or False if nothing was there and ``missing_ok``.

        Raises:
            BlobNotFoundError: nothing at ``path`` (unless ``missing_ok``).
            NotABlobError: ``path`` is not a blob, or holds foreign files.
            CorruptBlobError: the blob's ``meta`` is damaged.
            LockTimeoutError: a writer kept the lock past ``timeout``.
        """
        check_timeout(timeout)
        return _dirs.unlink(abspath(path), db=False, missing_ok=missing_ok, timeout=timeout)

    # -- properties -------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """Element type of every row, fixed at creation."""
        return self._meta.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one row, fixed at creation."""
        return self._meta.shape

    def __repr__(self) -> str:
        if self._closed:
            return f"TensorBlob({getattr(self, '_path', '?')!r}, closed)"
        return (
            f"TensorBlob({self._path!r}, mode={self._mode!r}, dtype={self.dtype}, "
            f"shape={self.shape}, {len(self)} rows)"
        )

    # -- writing ----------------------------------------------------------

    def write(self, t: torch.Tensor) -> int:
        """Write rows at the cursor (at the end in append modes); return how many.

        ``t`` is a row of ``shape``, a batch ``(n, *shape)``, or a flat 1-D
        tensor of whole rows, with exactly the blob's dtype. Rows past the end
        grow the blob; rows before it are overwritten. The call is one
        transaction (or part of the open one): after a crash all its rows are
        there or none, and it is durable as ``sync`` says.

        Raises:
            UnsupportedOperationError: the blob is open read-only, or a forked
                child writes through its parent's writer.
            BlobTypeError: ``t`` is not a tensor.
            DTypeMismatchError: wrong dtype (nothing is cast silently).
            ShapeMismatchError: not a row, batch or flat run of rows.
            BlobClosedError: the blob is closed.
            DiskFullError: the disk is full: nothing of this call was committed,
                and the handle stays usable (retry once space is freed).
            BlobOSError: another disk error before the commit point: nothing
                of this call was committed, and the handle stays usable.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        try:
            fast = self._fast
            if fast is not None and type(t) is torch.Tensor and t.dtype is self._meta.dtype:
                # The fast path: a row or a small batch, copied straight into the
                # write window of the engine (Engine.fast_write).
                shape = t.shape
                if shape == self._row_shape:
                    n = 1
                elif shape[1:] == self._row_shape and 0 < shape[0] <= self._fast_rows:
                    n = shape[0]
                else:
                    n = 0
                if (
                    n
                    and t.layout is torch.strided  # (a sparse tensor's is_contiguous raises)
                    and t.is_contiguous()
                    and t.is_cpu
                    and not t.is_neg()
                    and self._put_fast(fast, (t.data_ptr(),), n)
                ):
                    return n
            engine = self._check_writable()
            return self._put(engine, [as_rows(t, self._meta.fields[0])])
        except OSError as exc:  # the library's own disk work only: nothing else runs here
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(exc, self._path, "writing rows", usable=True) from exc

    def extend(self, other: TensorBlob, maintain_order: bool = True) -> int:
        """Append all rows of ``other`` (another open blob) as one transaction; return the count.

        With ``maintain_order=True`` the rows of ``other`` follow in order. With
        ``maintain_order=False``, if both blobs have the same block size and
        ``other`` has at least one full block, its full blocks are copied as whole
        files (faster), and the rows come in this order: this blob's full blocks,
        ``other``'s full blocks, this blob's last partial block, ``other``'s last
        partial block. The cursor moves to the new end.

        Raises:
            BlobTypeError: ``other`` is not a TensorBlob.
            DTypeMismatchError: the dtypes differ.
            ShapeMismatchError: the row shapes differ.
            InvalidArgumentError: ``other`` is another handle inside a ``transaction()``
                (its rows are not committed).
            UnsupportedOperationError: this blob is not writable.
            BlobClosedError: either blob is closed.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        if not isinstance(other, TensorBlob):
            raise BlobTypeError(f"extend() takes a TensorBlob, got {type(other).__name__}")
        other._check_open()
        if other.dtype != self.dtype:
            raise DTypeMismatchError(
                f"extend(): data types must match: other blob has dtype {other.dtype}, "
                f"this one {self.dtype}"
            )
        if other.shape != self.shape:
            raise ShapeMismatchError(
                f"extend(): row shapes must match: other blob has row shape {other.shape}, "
                f"this one {self.shape}"
            )
        return self._extend(engine, other, maintain_order)

    def _take(self, p: _rows.Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        return _rows.take(self._blocks, self._state.blocks, 0, p, out)

    def _unbatch(self, batch: torch.Tensor) -> Any:
        return batch.unbind(0)

    def _as_list(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return [rows]
