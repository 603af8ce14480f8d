"""The transaction boundary: one set of primitives for ``transaction()`` and every mutating call.

A mixin of ``_handle.Handle``. ``transaction()`` groups calls into one
atomic commit; every mutating call of a front end (``write``, ``truncate``,
``extend``, emptying with ``"w"``) runs through ``_mutation``, which is its
own transaction or part of the open one. Both begin, commit and roll back
through the same three methods. An ``OSError`` of the library's own disk
work becomes a ``BlobOSError`` naming the blob (``_os_errors``); the user's
own code inside ``transaction()`` is never wrapped.

Uses the handle's ``_path``, ``_pos``, ``_engine`` and ``_check_writable``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import BlobClosedError, TensorBlobError, from_os_error

if TYPE_CHECKING:
    from typing import Self

    from ._txn import Engine


class Transactions:
    """Transactions of a handle (see the module docstring)."""

    _path: str
    _pos: int
    _depth: int = 0
    _doomed: bool = False
    _saved_pos: int = 0
    _engine: Engine | None

    _check_writable: Callable[[], Engine]  # the handle's (Handle)
    _abandon: Callable[[], None]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Self]:
        """Group the calls inside into one atomic commit.

        After a crash either everything done inside the block is there or none of
        it is, and readers never see part of it. On an exception inside, data,
        length and cursor roll back and the exception propagates. Nested blocks
        join the outermost one, which alone commits or rolls back (no savepoints).

        Raises:
            UnsupportedOperationError: the blob is not writable.
            BlobClosedError: the blob is closed, or was closed inside the block
                (which rolled the transaction back).
            TensorBlobError: an operation inside failed after it had changed the
                blob and its exception was swallowed; everything was rolled back.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        outer = self._depth == 0
        if outer:
            with self._os_errors("starting a transaction"):
                self._begin(engine)
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            if outer:
                self._rollback()
            else:
                self._doomed = True  # no savepoints: the outer transaction cannot commit
            raise
        self._depth -= 1
        if outer:
            with self._os_errors("committing a transaction"):
                self._commit(engine)

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        """Raise an OSError of the library's own disk work as a tensorblob error (from_os_error).

        Only around the library's own operations, never around user code.
        """
        try:
            yield
        except OSError as exc:
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(exc, self._path, doing) from exc

    def _begin(self, engine: Engine) -> None:
        engine.begin()
        self._saved_pos = self._pos
        self._doomed = False

    def _commit(self, engine: Engine) -> None:
        if engine.txn is None:  # close() inside the block rolled it back
            raise BlobClosedError(
                f"blob {self._path!r} was closed inside transaction(); it was rolled back"
            )
        if self._doomed:
            self._rollback()
            raise TensorBlobError(
                f"transaction on {self._path!r} rolled back: an operation inside it failed"
            )
        try:
            engine.commit()
        except BaseException:
            if engine.broken:
                self._abandon()
            elif engine.txn is not None:
                self._rollback()
            raise

    def _rollback(self) -> None:
        engine = self._engine
        assert engine is not None
        if engine.broken:  # a step that wrote to the journal failed: give the handle up
            self._abandon()
        if engine.txn is not None:
            engine.rollback()
        self._pos = self._saved_pos
        self._doomed = False

    @contextlib.contextmanager
    def _mutation(self, doing: str) -> Iterator[Engine]:
        """Run one mutating call as its own transaction, or as part of the open one."""
        engine = self._check_writable()
        with self._os_errors(doing):
            if self._depth:
                try:
                    yield engine
                except BaseException:
                    self._doomed = True
                    raise
                return
            with self.transaction():
                yield engine
