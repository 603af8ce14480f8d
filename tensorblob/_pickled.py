"""A reader travels to other processes as its snapshot (DataLoader workers, spawn).

``Pickled`` is a mixin of ``Handle``: a reader pickles as its path, its
committed snapshot (``State``), cursor and cache size; the copy takes a
lease of its own on exactly that snapshot. Writers refuse to pickle.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TypeVar

from ._args import DEFAULT_TIMEOUT
from ._blocks import BlockStore
from ._locking import ReaderLease
from ._meta import read_meta
from .errors import SnapshotGoneError, UnsupportedOperationError

if TYPE_CHECKING:
    from ._state import State

H = TypeVar("H", bound="Pickled")


class Pickled:
    """Pickling of a handle (see the module docstring); uses the handle's ``_engine``,
    ``_path``, ``_state``, ``_pos``, ``_max_cached``, ``_check_open`` and ``_setup``."""

    _engine: Any
    _path: str
    _state: State
    _pos: int
    _max_cached: int

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

    def __reduce__(self) -> Any:
        """Pickle a reader as its snapshot (for DataLoader workers); refuse writers.

        The unpickled copy takes its own lease on the same snapshot and reads
        exactly it. It never switches to another snapshot: if the blocks are
        gone (the original and every other reader of it closed, and the writer
        freed them) or the blob was deleted, unpickling raises
        SnapshotGoneError. The original open is enough to keep them.
        """
        self._check_open()
        if self._engine is not None:
            raise UnsupportedOperationError(
                f"blob {self._path!r} is open for writing and cannot be pickled; "
                "open it read-only ('r') for DataLoader workers"
            )
        args = (type(self), self._path, self._state, self._pos, self._max_cached)
        return (_unpickle_reader, args)


def _unpickle_reader(cls: type[H], path: str, state: State, pos: int, max_cached: int) -> H:
    """A reader on exactly the pickled snapshot ``state``; SnapshotGoneError if it is gone."""
    try:  # before meta's uuid is checked: the blocks read are of that blob
        home = BlockStore.home_of(path)
    except OSError:
        home = None
    if home is None or not os.path.isdir(path):
        raise SnapshotGoneError(
            f"cannot unpickle a reader of blob {path!r}: nothing is there. The blob was "
            "deleted since, or this process does not see that path (another machine or "
            "mount namespace)"
        )
    blob = cls.__new__(cls)
    meta = read_meta(path)
    if meta.uuid != state.uuid:  # block ids of another blob could match this snapshot's
        raise SnapshotGoneError(
            f"cannot unpickle a reader of blob {path!r}: the blob was deleted and created "
            "again since; open it again to read the new one"
        )
    lease = ReaderLease(path)
    try:
        lease.pin(state.seq)
        store = BlockStore(path, meta, writable=False, max_cached=max_cached)
        gone = next((b for b in state.blocks if not os.path.exists(store.path(b))), None)
        if gone is not None:
            raise SnapshotGoneError(
                f"cannot unpickle a reader of blob {path!r}: its snapshot of {state.length} "
                f"rows is gone (block file {store.path(gone)!r} was freed once no reader held "
                "the snapshot). Keep the original reader open until its copies are unpickled, "
                "or open the blob again for its newest snapshot"
            )
        lease.hold(state.seq)
    except BaseException:
        lease.release()
        raise
    blob._setup(path, "r", meta, max_cached, "normal", DEFAULT_TIMEOUT, (lease, state, home))
    blob._pos = min(pos, state.length)
    return blob
