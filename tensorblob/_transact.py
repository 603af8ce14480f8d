"""The transaction boundary: one set of primitives for ``transaction()`` and every mutating call.

A mixin of ``_handle.Handle``. ``transaction()`` groups calls into one
atomic commit; every mutating call of a front end (``write``, ``truncate``,
``extend``, emptying with ``"w"``) runs through ``_mutation``, which is its
own transaction or part of the open one. Both begin, commit and roll back
through the same three methods. An ``OSError`` of the library's own disk
work becomes a ``BlobOSError`` naming the blob (``_os_errors``); the user's
own code inside ``transaction()`` is never wrapped.

The mutations every front end shares are here too: writing rows (``_put``,
and ``_put_fast``, the engine's fast path), ``truncate`` and ``_extend``. A
front end checks its own arguments and says what a row is (``_as_list``:
its rows as one tensor per field).

Uses the handle's ``_path``, ``_pos``, ``_state``, ``_append``, ``_meta``,
``_blocks``, ``_engine``, ``_check_writable`` and ``_take``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._args import as_int
from .errors import BlobClosedError, InvalidArgumentError, TensorBlobError, from_os_error

if TYPE_CHECKING:
    from typing import Self

    import torch

    from ._blocks import BlockStore
    from ._meta import Meta
    from ._state import State
    from ._txn import Engine


class Transactions:
    """Transactions of a handle (see the module docstring)."""

    _path: str
    _pos: int
    _depth: int = 0
    _doomed: bool = False
    _saved_pos: int = 0
    _engine: Engine | None
    _state: State
    _append: bool
    _meta: Meta
    _blocks: BlockStore

    _check_writable: Callable[[], Engine]  # the handle's (Handle)
    _abandon: Callable[[], None]
    _take: Callable[[Any], Any]

    def _as_list(self, rows: Any) -> list[torch.Tensor]:
        """Rows as the front end reads them (``_take``), as one tensor per field."""
        raise NotImplementedError

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
            raise from_os_error(exc, self._path, doing, kind=self._KIND, usable=True) from exc

    def _begin(self, engine: Engine) -> None:
        try:
            engine.begin()  # may checkpoint first, which can fail past its commit point
        except BaseException:
            if engine.broken:
                self._abandon()
            raise
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

    # -- the mutations every front end shares ----------------------------------

    def _put_fast(self, engine: Engine, srcs: tuple[int, ...], n: int) -> bool:
        """Write ``n`` rows from the addresses ``srcs`` (one per field: contiguous, CPU, of the
        field's dtype) at the cursor by the engine's fast path; False if it does not apply."""
        pos = None if self._append else self._pos
        try:
            end = engine.fast_write(srcs, n, pos, commit=not self._depth)
        except BaseException:
            if engine.broken:
                self._abandon()
            raise
        if end < 0:
            return False
        self._pos = end
        return True

    def _put(self, engine: Engine, rows: list[torch.Tensor]) -> int:
        """Write ``rows`` (one checked tensor per field) at the cursor; return how many.

        The hot path of every collector: the same steps as ``_mutation``,
        without the cost of two generator context managers.
        """
        n = rows[0].shape[0]
        if n == 0:
            return 0
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

    def truncate(self, pos: int | None = None) -> int:
        """Cut to ``pos`` rows (default: the cursor); return the new length.

        One transaction (or part of the open one). A ``pos`` at or past the end
        changes nothing. The cursor is kept unless it lies past the new end, where
        it moves to the end. The cut rows' disk space is freed once the truncation
        is durable and no reader's snapshot needs it.

        Raises:
            InvalidArgumentError: ``pos`` is negative.
            BlobTypeError: ``pos`` is not an int.
            UnsupportedOperationError: not open for writing.
            BlobClosedError: closed.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        pos = self._pos if pos is None else as_int(pos, "truncate(pos)")
        if pos < 0:
            raise InvalidArgumentError(f"truncate({pos}): the size must be non-negative")
        if pos < self._state.length:
            with self._mutation("truncating"):
                engine.truncate(pos)
                self._pos = min(self._pos, pos)
        return self._state.length

    def _extend(
        self,
        engine: Engine,
        other: Any,
        maintain_order: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Append every row of ``other`` (an open handle whose rows the caller has checked
        fit) as one transaction; return how many. See ``TensorBlob.extend``.
        ``progress(rows_done, rows_total)`` is called after each piece."""
        if other is not self and other._depth:
            raise InvalidArgumentError(
                f"extend(): {other._KIND} {other._path!r} is inside a transaction(): its "
                "rows are not committed and could still roll back. Extend after it commits."
            )
        total = len(other)
        if total == 0:
            self._pos = self._state.length
            return 0
        B = self._meta.block_size
        same = other._meta.fields == self._meta.fields and other._meta.block_size == B
        # Whole files only if they hold every row (not rows logged in the journal, F6 ``r``).
        same = same and not other._state.logged
        step = max(1, (64 << 20) // (B * self._meta.row_bytes)) * B  # rows per piece
        with self._mutation("extending"):
            if not maintain_order and same and total >= B:
                nfull = total // B
                paths = [other._blocks.path(b) for b in other._state.blocks[:nfull]]
                none = self._as_list(other._take((total, total)))
                # Read before anything moves: ``other`` may be this very handle.
                tail = self._as_list(other._take((nfull * B, total)))
                # A piece of whole files at a time; this blob's partial last
                # block, if any, moves after each piece, so it ends up after all.
                for i in range(0, nfull, step // B):
                    engine.append_blocks(paths[i : i + step // B], none)
                    if progress is not None:
                        progress(min(nfull, i + step // B) * B, total)
                if total > nfull * B:
                    engine.write(self._state.length, tail)
            else:
                for start in range(0, total, B):
                    rows = self._as_list(other._take((start, min(start + B, total))))
                    engine.write(self._state.length, rows)
                    if progress is not None and (start // B) % (step // B) == 0:
                        progress(min(start + B, total), total)
            self._pos = self._state.length
        if progress is not None:
            progress(total, total)
        return total
