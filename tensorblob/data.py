"""Training on readers: one-gather batches, one snapshot for every rank, resumable sampling.

Written against duck-typed readers (``len()``, ``__getitem__``,
``__getitems__``, pickling as their snapshot, ``refresh()``): a
``TensorBlob`` opened ``"r"``, or anything that reads the same way.

- ``collate``: the ``collate_fn`` that keeps a ``__getitems__`` batch to one
  gather, with no second copy.
- ``shared_snapshot``: every rank of a process group gets a reader on one
  rank's snapshot, with a lease of its own.
- ``DistributedBlobSampler``: equal shares per rank, every row once per
  epoch, a state to resume mid-epoch exactly, an optional block-window shuffle.
- ``BlobLoader``: a ``DataLoader`` that tells its sampler which batches
  reached the training loop, so the state is exact with workers too.

See docs/ddp.md for a complete DDP script.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from . import errors
from ._sampler import DistributedBlobSampler
from .errors import BlobTypeError, InvalidArgumentError, TensorBlobError

__all__ = [
    "BlobLoader",
    "DistributedBlobSampler",
    "SharedReader",
    "collate",
    "shared_snapshot",
]


def collate(batch: Any) -> Any:
    """``collate_fn`` for readers: a ``__getitems__`` batch as its one gathered batch.

    A reader's ``__getitems__`` returns the batch's rows as views of one
    tensor (a dict of tensors for a TensorDB) it gathered in one call (the
    list's ``collated`` attribute); this returns that batch, copying nothing.
    ``default_collate`` would stack the rows into a second copy. Any other
    list (from a dataset without ``__getitems__``) goes to
    ``default_collate``; anything else is returned as it is. In a DataLoader
    worker the batch then moves to shared memory to reach the main process,
    as every worker's batch does.
    """
    if isinstance(batch, list):
        collated = getattr(batch, "collated", None)
        if collated is not None and getattr(batch, "n", -1) == len(batch):
            return collated
        return default_collate(batch)
    return batch


# -- one snapshot for every rank ------------------------------------------------


def _members(src: object, group: object) -> tuple[int, list[int]]:
    """Check the collective's arguments; return ``src`` and the group's global ranks."""
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise BlobTypeError(f"group must be a ProcessGroup or None, got {type(group).__name__}")
    if isinstance(src, bool) or not isinstance(src, int):
        raise BlobTypeError(f"src must be an int (a global rank), got {type(src).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidArgumentError(
            "group: torch.distributed is not initialized; call "
            "torch.distributed.init_process_group() on every rank first"
        )
    ranks = dist.get_process_group_ranks(group if group is not None else dist.group.WORLD)
    if src not in ranks:
        raise InvalidArgumentError(f"src={src}: not a rank of the group (ranks {ranks})")
    if dist.get_rank() not in ranks:
        raise InvalidArgumentError(f"group: this rank ({dist.get_rank()}) is not in it")
    return src, ranks


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _remote_error(what: tuple[str, str], context: str) -> TensorBlobError:
    """Another rank's error, raised here as the same tensorblob class where there is one."""
    name, message = what
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, TensorBlobError)):
        cls = TensorBlobError
    return cls(f"{context}: {name}: {message}")


def _exchange(
    make: Callable[[], Any],
    src: int,
    ranks: list[int],
    group: Any,
    check: Callable[[], None] | None = None,
) -> Any:
    """Give every rank a reader on the snapshot ``make()`` builds on ``src``, or raise on all.

    On ``src``, ``make()`` returns a reader of its own. Every other rank runs
    ``check()`` (if given), then unpickles it, taking its own lease. Then
    every rank reports, which is the barrier: ``src`` keeps its lease until
    all others hold theirs. Any failure is raised on every rank and leaves
    no reader open.
    """
    me = dist.get_rank()
    local = mine = None
    box: list[Any] = [None]
    if me == src:
        try:
            local = make()
            box[0] = (pickle.dumps(local), None)
        except Exception as exc:
            if local is not None:
                local.close()
                local = None
            mine = exc
            box[0] = (None, _describe(exc))
    dist.broadcast_object_list(box, src=src, group=group)
    payload, failed = box[0]
    if failed is not None:
        if mine is not None:
            raise mine
        raise _remote_error(failed, f"rank {src} could not share its snapshot")
    if me != src:
        try:
            if check is not None:
                check()
            local = pickle.loads(payload)
        except Exception as exc:
            mine = exc
    statuses: list[Any] = [None] * len(ranks)
    dist.all_gather_object(statuses, None if mine is None else _describe(mine), group=group)
    bad = [(r, s) for r, s in zip(ranks, statuses, strict=True) if s is not None]
    if bad:
        if local is not None:
            local.close()
        if mine is not None:
            raise mine
        rank, what = bad[0]
        raise _remote_error(what, f"rank {rank} could not open rank {src}'s snapshot")
    return local


def _check_reader(blob: object) -> None:
    for name in ("__len__", "__getitem__", "refresh", "close"):
        if not hasattr(blob, name):
            raise BlobTypeError(
                f"blob must be a reader (it has no {name}), got {type(blob).__name__}"
            )


def _copy_of(blob: Any) -> Any:
    """A new reader on ``blob``'s snapshot, with a lease of its own."""
    _check_reader(blob)
    return pickle.loads(pickle.dumps(blob))


def _fresh(reader: Any) -> Any:
    """A new reader on the newest snapshot, leaving ``reader`` as it is."""
    fresh = _copy_of(reader)
    try:
        fresh.refresh()
    except BaseException:
        fresh.close()
        raise
    return fresh


def shared_snapshot(blob: Any, *, src: int = 0, group: Any = None) -> SharedReader:
    """Give every rank of ``group`` a reader on rank ``src``'s snapshot of ``blob``. Collective.

    Call it on every rank of the group. Every rank gets a ``SharedReader`` on
    the snapshot ``blob`` holds on rank ``src`` (same length, same rows),
    each with a lease of its own: no rank depends on another, nor on
    ``blob``, staying open. ``blob`` is pickled to the others (it must be a
    reader, and the path must be readable on every rank); on the other ranks
    it is not used and may be None. Any rank's failure is raised on every
    rank, so none is left waiting. To move every rank to the newest commit
    later, call ``refresh()`` on the returned reader on every rank.

    Raises:
        BlobTypeError: ``src`` is not an int, ``group`` not a ProcessGroup, or
            ``blob`` on ``src`` not a reader.
        InvalidArgumentError: torch.distributed is not initialized, or ``src``
            or this rank is not in the group.
        UnsupportedOperationError: ``blob`` on ``src`` is open for writing.
        SnapshotGoneError: the snapshot could not be held on some rank (also
            when a rank finds nothing at the path).
    """
    src, ranks = _members(src, group)
    reader = _exchange(lambda: _copy_of(blob), src, ranks, group)
    return SharedReader(reader, src, group)


class SharedReader:
    """A reader on a snapshot shared by every rank of a process group (see ``shared_snapshot``).

    Reads like the reader it holds (``len``, indexing, ``__getitems__``, and
    attributes such as ``dtype``, ``shape``, ``block_size``, ``path``). It
    pickles as that reader: a DataLoader worker gets a plain reader on the
    same snapshot. Only ``refresh()`` differs: it is collective.
    """

    def __init__(self, reader: Any, src: int, group: Any) -> None:  # use shared_snapshot()
        self._reader = reader
        self._src = src
        self._group = group

    @property
    def reader(self) -> Any:
        """This rank's own reader on the shared snapshot."""
        return self._reader

    def refresh(self) -> int:
        """Move every rank to rank ``src``'s newest snapshot; return its length. Collective.

        Call it on every rank of the group, at the same point (an epoch
        boundary). Every rank ends on the same snapshot, or, if any rank
        fails, every rank raises and keeps the one it had.

        Raises:
            BlobClosedError: the reader is closed on some rank.
            SnapshotGoneError: the new snapshot could not be held on some rank.
        """
        src, ranks = _members(self._src, self._group)
        reader = self._reader
        new = _exchange(lambda: _fresh(reader), src, ranks, self._group, reader._check_open)
        old, self._reader = self._reader, new
        old.close()
        return len(new)

    def __len__(self) -> int:
        return len(self._reader)

    def __getitem__(self, index: Any) -> Any:
        return self._reader[index]

    def __getitems__(self, indices: Any) -> Any:
        return self._reader.__getitems__(indices)

    def __getattr__(self, name: str) -> Any:
        if name == "_reader":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self._reader, name)

    def close(self) -> None:
        """Close this rank's reader (not collective: other ranks keep theirs)."""
        self._reader.close()

    def __enter__(self) -> SharedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        return self._reader.__reduce__()

    def __repr__(self) -> str:
        return f"SharedReader({self._reader!r}, src={self._src})"


# -- a DataLoader that reports what reached the loop ----------------------------


class BlobLoader(DataLoader):
    """A ``DataLoader`` that tells its ``DistributedBlobSampler`` each batch that reaches the loop.

    Workers fetch ahead of the training loop, so a sampler alone counts
    batches the loop has not seen. Iterating a BlobLoader counts a batch
    when ``next()`` hands it to the loop, so ``sampler.state_dict()`` taken
    in the loop body covers exactly the batches received so far, whatever
    ``num_workers`` and ``prefetch_factor`` are. The sampler is the
    ``batch_sampler`` (then ``batch_size`` is left out), or the ``sampler``
    with the DataLoader's ``batch_size``. Takes DataLoader's keyword
    arguments; ``collate_fn`` defaults to ``collate``.

    Raises:
        InvalidArgumentError: ``in_order=False`` (batches would reach the loop
            out of order), or a batching sampler given as ``sampler`` with a
            ``batch_size``.
    """

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate)
        super().__init__(dataset, **kwargs)
        self._blob_sampler, self._per_batch = self._tracked()
        if self._blob_sampler is not None:
            if not getattr(self, "in_order", True):
                raise InvalidArgumentError(
                    "in_order=False: batches would reach the loop out of order, "
                    "and the sampler's state could not say which were consumed"
                )
            self._blob_sampler._reported = True

    def _tracked(self) -> tuple[DistributedBlobSampler | None, int]:
        """The sampler to report to, and how many of its samples one loop batch holds."""
        if isinstance(self.batch_sampler, DistributedBlobSampler):
            if self.batch_sampler.batch_size is None:
                raise InvalidArgumentError(
                    "batch_sampler: it yields indices, not batches; give it a batch_size, "
                    "or pass it as sampler="
                )
            return self.batch_sampler, self.batch_sampler.batch_size
        sampler = self.sampler
        if not isinstance(sampler, DistributedBlobSampler):
            return None, 0
        if self.batch_size is None:
            return sampler, sampler.batch_size or 1
        if sampler.batch_size is not None:
            raise InvalidArgumentError(
                "sampler: it makes batches (batch_size set); pass it as batch_sampler=, "
                "or as sampler= with batch_size=None"
            )
        return sampler, self.batch_size

    def __iter__(self) -> Iterator[Any]:
        sampler = self._blob_sampler
        before = None if sampler is None else sampler._passes
        it = super().__iter__()
        if sampler is None:
            return it
        # With workers the iterator begins its pass here (it prefetches); without,
        # at its first batch (_Reporting then takes the pass begun by that batch).
        begun = sampler._passes if sampler._passes != before else None
        return _Reporting(it, sampler, self._per_batch, begun)


class _Reporting:
    """Iterates a DataLoader iterator, reporting each batch it returns to the sampler,
    while the sampler's current pass is this iterator's (``begun``; None: the one its
    first batch begins)."""

    def __init__(
        self, it: Any, sampler: DistributedBlobSampler, per: int, begun: int | None
    ) -> None:
        self._it = it
        self._sampler = sampler
        self._per = per
        self._pass = begun

    def __iter__(self) -> _Reporting:
        return self

    def __next__(self) -> Any:
        batch = next(self._it)
        sampler = self._sampler
        if self._pass is None:
            self._pass = sampler._passes
        if sampler._passes == self._pass:  # an older iterator's batches are not counted
            sampler._advance(self._per)
        return batch

    def __len__(self) -> int:
        return len(self._it)
