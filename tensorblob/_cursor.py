"""The cursor, and what every handle says about itself: path, mode, block size, length.

``Cursor`` is a mixin of ``Handle``: ``seek``, ``tell`` and ``len``, the
read-only properties, and the checks each public call starts with (open,
readable, writable). Nothing here changes the disk.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from ._args import as_int
from .errors import (
    BlobClosedError,
    BlobTypeError,
    InvalidArgumentError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    from ._meta import Meta
    from ._state import State
    from ._txn import Engine


class Cursor:
    """A handle's cursor, properties and call checks (see the module docstring)."""

    _path: str
    _mode: str
    _meta: Meta
    _sync: str
    _state: State
    _pos: int
    _pid: int
    _max_cached: int
    _readable: bool
    _writable: bool
    _append: bool
    _closed: bool = True
    _engine: Engine | None
    _KIND = "blob"

    @property
    def path(self) -> str:
        """Absolute path of the blob directory."""
        return self._path

    @property
    def filename(self) -> str:
        """Absolute path of the directory (``path``; the original tensorblob's name)."""
        return self._path

    @property
    def max_cached_blocks(self) -> int:
        """Block files this handle keeps mapped at most (see ``open``)."""
        return self._max_cached

    # The original tensorblob's mode flags: readable, writable, append-only.
    _m_rd = property(lambda self: self._readable)
    _m_wr = property(lambda self: self._writable)
    _m_ap = property(lambda self: self._append)

    @property
    def mode(self) -> str:
        """The mode the blob was opened with (``"r"``, ``"a+"``, ...)."""
        return self._mode

    @property
    def block_size(self) -> int:
        """Rows per block file, fixed at creation."""
        return self._meta.block_size

    @property
    def sync(self) -> str:
        """This handle's durability level, ``"normal"`` or ``"full"`` (see ``open``)."""
        return self._sync

    @property
    def closed(self) -> bool:
        """True once the blob is closed, by ``close()`` or by a failed commit step."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise BlobClosedError(f"I/O operation on closed {self._KIND} {self._path!r}")

    def _check_readable(self) -> None:
        self._check_open()
        if not self._readable:
            raise UnsupportedOperationError(
                f"{self._KIND} {self._path!r} is not open for reading (mode {self._mode!r})"
            )

    def _check_writable(self) -> Engine:
        self._check_open()
        if self._engine is not None and os.getpid() != self._pid:
            raise UnsupportedOperationError(
                f"blob {self._path!r} was opened for writing by process {self._pid}; "
                "a forked child cannot write through it (open it again in the child)"
            )
        if self._engine is None:
            raise UnsupportedOperationError(
                f"{self._KIND} {self._path!r} is not open for writing (mode {self._mode!r})"
            )
        return self._engine

    def seek(self, pos: int = 0, whence: int = io.SEEK_SET) -> int:
        """Move the cursor; return the new position, clamped to ``[0, len(blob)]``.

        Unlike a Python file's, the cursor never goes past the end. Changes
        nothing on disk.

        Raises:
            BlobTypeError: ``pos`` is not an int.
            InvalidArgumentError: ``whence`` is not SEEK_SET, SEEK_CUR or SEEK_END.
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        pos = as_int(pos, "seek(pos)")
        try:
            whence = as_int(whence, "seek(whence)")  # an int, a numpy one, not a bool
        except BlobTypeError:
            raise InvalidArgumentError(f"seek(whence={whence!r}): must be 0, 1 or 2") from None
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._state.length + pos
        else:
            raise InvalidArgumentError(f"seek(whence={whence!r}): must be 0, 1 or 2")
        self._pos = max(0, min(new, self._state.length))
        return self._pos

    def tell(self) -> int:
        """Return the cursor position (a row number).

        Raises:
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        return self._pos

    def __len__(self) -> int:
        """Return the number of rows.

        A reader counts the rows of its snapshot; a writer counts its current
        rows, including those of its open transaction.

        Raises:
            BlobClosedError: the blob is closed.
        """
        self._check_open()
        return self._state.length
