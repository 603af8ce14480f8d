"""``TensorBlob``: the public, file-like API: rows as tensors over the engine (``Handle``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from . import _dirs, _watch
from ._args import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_TIMEOUT,
    abspath,
    as_int,
    as_rows,
    check_open,
    index_tensor,
)
from ._blocks import default_max_cached
from ._fstype import refuse_untrusted
from ._handle import Handle
from ._meta import Meta, parse_dtype, parse_shape, read_meta
from .errors import (
    BlobNotFoundError,
    BlobTypeError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    NotABlobError,
    ShapeMismatchError,
    TensorBlobError,
    from_os_error,
)

_FAST_BYTES = 1 << 16  # write() batches up to this size take the memmove fast path


class _Rows(list):  # a real list: default_collate hands it to torch.stack
    """The rows of a ``__getitems__`` batch, with the batch they are views of in ``collated``."""

    collated: torch.Tensor


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
            path: The blob's directory. To create it, it must be absent or empty
                and its parent must exist.
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
            BlobNotFoundError: ``"r"``/``"r+"`` and nothing at ``path``, or the
                parent directory of a blob to create does not exist.
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
        root = abspath(path)
        if mode != "r" and not trust_fs:
            refuse_untrusted(root)
        try:
            return cls._open(
                root, mode, want_dtype, want_shape, block_size, max_cached_blocks, sync, timeout
            )._verifying(verify)
        except OSError as exc:
            if isinstance(exc, TensorBlobError):
                raise
            doing = "opening it for writing" if mode != "r" else "opening it"
            raise from_os_error(
                exc, root, f"{doing} (mode {mode!r})", "Nothing committed was lost."
            ) from exc

    @classmethod
    def _open(  # noqa: PLR0917 - private: open()'s checked arguments
        cls,
        root: str,
        mode: str,
        want_dtype: str | None,
        want_shape: tuple[int, ...] | None,
        block_size: int | None,
        max_cached_blocks: int | None,
        sync: str,
        timeout: float,
    ) -> TensorBlob:
        creating = mode[0] in "wa"
        if not os.path.exists(root) or (creating and os.path.isdir(root) and not os.listdir(root)):
            if not creating:
                raise BlobNotFoundError(
                    f"no blob at {root!r} (mode {mode!r} needs an existing one)"
                )
            if want_dtype is None or want_shape is None:
                raise InvalidArgumentError(
                    f"creating blob {root!r}: dtype= and shape= are required for a new blob"
                )
            meta = Meta(
                secrets.token_bytes(16), want_dtype, want_shape, block_size or DEFAULT_BLOCK_SIZE
            )
            _dirs.create(root, meta)  # if another process won the race, open theirs below
        elif not os.path.isdir(root):
            raise NotABlobError(f"{root!r} is not a tensorblob (it is not a directory)")

        meta = read_meta(root)
        for name, want, have in (
            ("dtype", want_dtype, meta.dtype_name),
            ("shape", want_shape, meta.shape),
            ("block_size", block_size, meta.block_size),
        ):
            if want is not None and want != have:
                raise InvalidArgumentError(
                    f"{name}={want!r} conflicts with blob {root!r}, which has {name} {have!r}; "
                    "a blob's layout is fixed at creation (TensorBlob.unlink it to start over)"
                )
        blob = cls.__new__(cls)
        blob._setup(root, mode, meta, max_cached_blocks or default_max_cached(), sync, timeout)
        return blob

    def _setup(self, root: str, mode: str, meta: Meta, *args: Any) -> None:
        self._row_shape = torch.Size(meta.shape)
        super()._setup(root, mode, meta, *args)

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
    ) -> None:
        """Delete the blob at ``path``, atomically: after a crash it is either whole or gone.

        Takes the writer lock first. Refuses a directory that holds files
        tensorblob did not create, so it never deletes anything else.

        Raises:
            BlobNotFoundError: nothing at ``path`` (unless ``missing_ok``).
            NotABlobError: ``path`` is not a blob, or holds foreign files.
            CorruptBlobError: the blob's ``meta`` is damaged.
            LockTimeoutError: a writer kept the lock past ``timeout``.
        """
        _dirs.unlink(abspath(path), missing_ok=missing_ok, timeout=timeout)

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
                if n and t.is_contiguous() and t.is_cpu and not t.is_neg():
                    pos = None if self._append else self._pos
                    try:
                        end = fast.fast_write(t.data_ptr(), n, pos, commit=not self._depth)
                    except BaseException:
                        if fast.broken:
                            self._abandon()
                        raise
                    if end >= 0:
                        self._pos = end
                        return n
            engine = self._check_writable()
            rows = as_rows(t, self._meta)
            n = rows.shape[0]
            if n == 0:
                return 0
            # The hot path of every collector: the same steps as _mutation(),
            # without the cost of two generator context managers.
            outer = self._depth == 0
            if outer:
                self._begin(engine)
            try:
                pos = self._state.length if self._append else self._pos
                engine.write(pos, rows)
            except BaseException:
                if outer:
                    self._rollback()
                else:
                    self._doomed = True
                raise
            self._pos = pos + n
            if outer:
                self._commit(engine)
            return n
        except OSError as exc:  # the library's own disk work only: nothing else runs here
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(exc, self._path, "writing rows") from exc

    def truncate(self, pos: int | None = None) -> int:
        """Cut the blob to ``pos`` rows (default: the cursor); return the new length.

        One transaction (or part of the open one). A ``pos`` at or past the end
        changes nothing. The cursor is kept unless it lies past the new end, where
        it moves to the end. The cut rows' disk space is freed once the truncation
        is durable and no reader's snapshot needs it.

        Raises:
            InvalidArgumentError: ``pos`` is negative.
            BlobTypeError: ``pos`` is not an int.
            UnsupportedOperationError: the blob is not writable.
            BlobClosedError: the blob is closed.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        pos = self._pos if pos is None else as_int(pos, "truncate(pos)")
        if pos < 0:
            raise InvalidArgumentError(f"truncate({pos}): the size must not be negative")
        if pos < self._state.length:
            with self._mutation("truncating"):
                engine.truncate(pos)
                self._pos = min(self._pos, pos)
        return self._state.length

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
                f"extend(): other blob has dtype {other.dtype}, this one {self.dtype}"
            )
        if other.shape != self.shape:
            raise ShapeMismatchError(
                f"extend(): other blob has row shape {other.shape}, this one {self.shape}"
            )
        total = len(other)
        if total == 0:
            self._pos = self._state.length
            return 0
        other_blocks = list(other._state.blocks)
        B = self.block_size
        with self._mutation("extending"):
            if not maintain_order and other.block_size == B and total >= B:
                nfull = total // B
                sources = [other._blocks.path(b) for b in other_blocks[:nfull]]
                engine.append_blocks(sources, other._range(nfull * B, total))
            else:
                for start in range(0, total, B):
                    engine.write(self._state.length, other._range(start, min(start + B, total)))
            self._pos = self._state.length
        return total

    def read(self, size: int | None = None) -> torch.Tensor:
        """Read up to ``size`` rows from the cursor (all the rest if None or negative).

        Returns a new tensor ``(k, *shape)`` that does not alias the blob's
        files; ``k == 0`` at the end. Advances the cursor by ``k``.

        Raises:
            UnsupportedOperationError: the blob is open write-only (``"w"``, ``"a"``).
            BlobTypeError: ``size`` is not an int or None.
            BlobClosedError: the blob is closed.
        """
        self._check_readable()
        n = self._state.length
        if size is None:
            size = -1
        size = as_int(size, "read(size)")
        end = n if size < 0 else min(n, self._pos + size)
        out = self._range(self._pos, max(self._pos, end))
        self._pos = max(self._pos, end)
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield rows from the cursor to the end, advancing the cursor.

        Each row is a new tensor that does not alias the blob's files.

        Raises:
            UnsupportedOperationError: the blob is open write-only.
            BlobClosedError: the blob is closed.
        """
        self._check_readable()
        return self._iter_rows()

    def _iter_rows(self) -> Iterator[torch.Tensor]:
        B = self.block_size
        while self._pos < self._state.length:
            start = self._pos
            chunk = self._range(start, min(self._state.length, (start // B + 1) * B))
            for i in range(chunk.shape[0]):
                self._pos = start + i + 1
                yield chunk[i]

    def _range(self, start: int, stop: int) -> torch.Tensor:
        """Copy rows ``start:stop`` (within bounds) into a new tensor."""
        if stop <= start:
            return torch.empty((0, *self.shape), dtype=self.dtype)
        # Copied as bytes with numpy: one plain memcpy per block, like a raw
        # np.memmap copy (torch's threaded copy stalls on a busy machine).
        B = self.block_size
        blocks, get = self._state.blocks, self._blocks.get_bytes
        s0, o0 = divmod(start, B)
        n = stop - start
        if n <= B - o0:
            out = get(blocks[s0])[o0 : o0 + n].copy()
        else:
            out = np.empty((n, self._meta.row_bytes), dtype=np.uint8)
            pos = start
            while pos < stop:
                slot, off = divmod(pos, B)
                k = min(B - off, stop - pos)
                out[pos - start : pos - start + k] = get(blocks[slot])[off : off + k]
                pos += k
        return torch.from_numpy(out).view(self.dtype).reshape(n, *self.shape)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows at the int64 positions ``idx`` (1-D, any order, repeats allowed)."""
        n = self._state.length
        if idx.numel() == 0:
            return torch.empty((0, *self.shape), dtype=self.dtype)
        # In numpy: far less per-call overhead than torch ops on small tensors.
        ia = idx.numpy()
        lo, hi = int(ia.min()), int(ia.max())
        if lo < 0:  # negative positions count from the end
            ia = np.where(ia < 0, ia + n, ia)
            lo, hi = int(ia.min()), int(ia.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise InvalidIndexError(
                f"index {bad if bad >= 0 else bad - n} is out of range "
                f"for blob {self._path!r} of length {n}"
            )
        # Rows are gathered as raw bytes, so any dtype works.
        B = self.block_size
        if lo // B == hi // B:  # one block: its mapping, indexed directly
            rows = torch.from_numpy(self._blocks.get_bytes(self._state.blocks[lo // B]))
            out = torch.index_select(rows, 0, torch.from_numpy(ia - (lo // B) * B))
        else:
            slots = ia // B
            out = self._blocks.gather(self._state.blocks, slots, ia - slots * B)
        return out.view(self.dtype).reshape(len(ia), *self.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        """``blob[i]``, ``blob[a:b:c]``, ``blob[list | tuple | 1-D int tensor | ndarray]``.

        Reads this handle's snapshot without moving the cursor, in any mode.
        Always returns a new tensor that does not alias the blob's files.

        Raises:
            InvalidIndexError: an index is out of range.
            BlobTypeError: the index is of an unsupported type (str, float, bool, ...).
            InvalidArgumentError: a slice step is 0.
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        n = self._state.length
        if isinstance(index, np.integer) or (
            isinstance(index, torch.Tensor)
            and index.dim() == 0
            and not index.dtype.is_floating_point
            and index.dtype != torch.bool
        ):
            index = int(index)
        if isinstance(index, int) and not isinstance(index, bool):
            i = index + n if index < 0 else index
            if not 0 <= i < n:
                raise InvalidIndexError(
                    f"index {index} is out of range for blob {self._path!r} of length {n}"
                )
            slot, off = divmod(i, self.block_size)
            return self._blocks.get(self._state.blocks[slot])[off].clone()
        if isinstance(index, slice):
            if index.step == 0:
                raise InvalidArgumentError("slice step cannot be zero")
            try:
                start, stop, step = index.indices(n)
            except TypeError:
                raise BlobTypeError(f"slice bounds must be ints or None, got {index!r}") from None
            if step == 1:
                return self._range(start, stop)
            r = range(start, stop, step)
            if not r:
                return torch.empty((0, *self.shape), dtype=self.dtype)
            return self._gather(torch.arange(r.start, r.stop, r.step, dtype=torch.int64))
        return self._gather(index_tensor(index, self._state.length))

    def __getitems__(self, indices: Any) -> list[torch.Tensor]:
        """The rows at ``indices`` for a DataLoader batch, gathered in one call.

        ``DataLoader`` calls it with the list of a batch's indices, then passes
        the result to its ``collate_fn``. Returns a list of the rows (as torch's
        protocol asks), which are views of one gathered ``(n, *shape)`` tensor,
        held in the list's ``collated`` attribute: ``tensorblob.data.collate``
        returns that tensor without a copy, ``default_collate`` stacks the rows.

        Raises:
            InvalidIndexError: an index is out of range.
            BlobTypeError: ``indices`` is not a list, tuple, ndarray or 1-D tensor of ints.
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        batch = self._gather(index_tensor(indices, self._state.length))
        rows = _Rows(batch.unbind(0))
        rows.collated = batch
        return rows
