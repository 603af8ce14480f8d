"""``DistributedBlobSampler``: equal shares of one snapshot per rank, resumable mid-epoch.

An epoch's **order** is a permutation of ``range(length)``, a function of
``(seed, epoch, length)`` and the shuffle settings only, so every rank
computes the same one. A pass starts at a **position** in that order (0, or
where a resumed epoch stopped) and deals the rest to the ranks as
``torch.utils.data.DistributedSampler`` does: padded by repeating the start
of the rest to a multiple of the ranks, or cut to one with ``drop_last``,
then rank ``r`` takes every ``num_replicas``-th entry from ``r``.

Because every rank consumes the same number of samples per step, what the
ranks have consumed together is always a prefix of the order: the state is
that prefix's length, the same number on every rank.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import BlobTypeError, InvalidArgumentError

STATE_VERSION = 1
_MAX_SEED = 1 << 63
# The keys of a state that fix the epoch's order (each must match the sampler's own to
# resume), with the types each may have.
_ORDER_KEYS = {
    "seed": (int,),
    "shuffle": (bool,),
    "window_blocks": (int, type(None)),
    "block_size": (int, type(None)),
    "drop_last": (bool,),
}


def _int(value: object, what: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high)``: BlobTypeError or InvalidArgumentError otherwise."""
    if isinstance(value, bool):
        raise BlobTypeError(f"{what} must be an int, got bool")
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise BlobTypeError(f"{what} must be an int, got {type(value).__name__}") from None
    if n < low or (high is not None and n >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise InvalidArgumentError(f"{what}={n}: must be {bound}")
    return n


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise BlobTypeError(f"{what} must be True or False, got {type(value).__name__}")
    return value


def epoch_order(
    n: int, seed: int, epoch: int, *, shuffle: bool, block: int | None, window: int | None
) -> torch.Tensor:
    """The epoch's order of ``range(n)``, an int64 tensor.

    With ``shuffle`` and no window it is ``torch.randperm(n)`` from a
    generator seeded with ``seed + epoch``: the order DistributedSampler
    uses. With a window, whole blocks of ``block`` rows are shuffled first,
    then the rows of each run of ``window`` consecutive blocks (in that
    order) are shuffled among themselves.
    """
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    if window is None or block is None:
        return torch.randperm(n, generator=g)
    blocks = torch.randperm(-(-n // block), generator=g)
    within = torch.arange(block, dtype=torch.int64)
    parts = []
    for w in range(0, len(blocks), window):
        rows = (blocks[w : w + window, None] * block + within).reshape(-1)
        rows = rows[rows < n]  # the last block may be partial
        parts.append(rows[torch.randperm(len(rows), generator=g)])
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def deal(order: torch.Tensor, start: int, replicas: int, rank: int, drop_last: bool) -> list[int]:
    """Rank ``rank``'s share of ``order[start:]``, padded or cut to a multiple of ``replicas``."""
    rest = order[start:]
    m = len(rest)
    if drop_last:
        rest = rest[: m - m % replicas]
    elif m % replicas:
        pad = replicas - m % replicas
        rest = torch.cat([rest, rest.repeat(-(-pad // m))[:pad]])
    return rest[rank::replicas].tolist()


class DistributedBlobSampler(Sampler):
    """Indices (or batches) of one snapshot for one rank: equal shares, every row once per epoch.

    Each epoch, every rank gets the same number of samples and together they
    cover ``range(len(data))`` exactly once, in an order fixed by ``seed``
    and ``set_epoch``. With ``drop_last=False`` the share is padded as
    ``DistributedSampler`` pads (up to ``num_replicas - 1`` rows then come
    twice); with ``drop_last=True`` up to ``num_replicas - 1`` rows are left
    out, and in batches only full batches are made. With ``shuffle=True``
    and no window the indices are exactly ``DistributedSampler``'s.

    The length of ``data`` is pinned per epoch, at the first pass: later
    passes of that epoch and a resumed epoch use the same order even if the
    blob grew. ``set_epoch`` to another epoch takes the length anew.

    ``state_dict()`` is the position the training loop has reached in the
    epoch's order, the same on every rank. It counts what the sampler
    handed out, which is what reached the loop with ``num_workers=0``; with
    workers, which fetch ahead, iterate a ``tensorblob.data.BlobLoader``,
    which counts the batches that reach the loop. See docs/ddp.md.

    Args:
        data: A reader (anything with ``len()``); ``window_blocks`` also needs
            its ``block_size``.
        num_replicas: Ranks sharing the epoch (default: the world size if
            torch.distributed is initialized, else 1).
        rank: This rank (default: the global rank if initialized, else 0).
        shuffle: Shuffle each epoch; False deals ``0, 1, 2, ...``.
        seed: Seed of the order, the same on every rank (``0 <= seed < 2**63``).
        drop_last: Cut the epoch to a multiple of the ranks (and to full
            batches) instead of padding it.
        batch_size: Yield lists of this many indices instead of indices
            (the last may be shorter unless ``drop_last``).
        window_blocks: Shuffle whole blocks, then rows only within windows
            of this many blocks, so that a blob larger than RAM is read a few
            blocks at a time (docs/ddp.md measures what it costs).

    Raises:
        BlobTypeError: an argument has the wrong type, or ``data`` has no ``len()``.
        InvalidArgumentError: an argument has a value out of range, or
            ``window_blocks`` without ``shuffle`` or on data without a block size.
    """

    def __init__(
        self,
        data: Sized,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        batch_size: int | None = None,
        window_blocks: int | None = None,
    ) -> None:
        if not hasattr(type(data), "__len__"):
            raise BlobTypeError(f"data must be a reader with len(), got {type(data).__name__}")
        live = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if live else 1
        self.num_replicas = _int(num_replicas, "num_replicas", 1)
        if rank is None:
            rank = dist.get_rank() if live else 0
        self.rank = _int(rank, "rank", 0, self.num_replicas)
        self.shuffle = _bool(shuffle, "shuffle")
        self.seed = _int(seed, "seed", 0, _MAX_SEED)
        self.drop_last = _bool(drop_last, "drop_last")
        self.batch_size = None if batch_size is None else _int(batch_size, "batch_size", 1)
        self.window_blocks = (
            None if window_blocks is None else _int(window_blocks, "window_blocks", 1)
        )
        self.block_size: int | None = None
        if self.window_blocks is not None:
            if not self.shuffle:
                raise InvalidArgumentError("window_blocks: needs shuffle=True")
            block = getattr(data, "block_size", None)
            if not isinstance(block, int) or isinstance(block, bool) or block < 1:
                raise InvalidArgumentError(
                    f"window_blocks: data has no block_size to shuffle by ({type(data).__name__})"
                )
            self.block_size = block
        self.data = data
        self.epoch = 0
        self._length: int | None = None  # pinned for this epoch
        self._resume = 0  # where the next pass starts (set by load_state_dict)
        self._begun = False  # a pass of this epoch has begun
        self._start = 0  # where the current pass started
        self._share = 0  # samples this rank gets in the current pass
        self._taken = 0  # of which the loop has consumed this many
        self._passes = 0  # passes started; identifies the current one
        self._reported = False  # a BlobLoader counts for us
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    # -- the epoch --------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a new order): forget the pinned length and any resume point.

        Setting the current epoch again changes nothing, so that a loop that
        calls ``set_epoch`` after ``load_state_dict`` resumes where it stopped.

        Raises:
            BlobTypeError: ``epoch`` is not an int.
            InvalidArgumentError: ``epoch`` is negative or too large.
        """
        epoch = _int(epoch, "epoch", 0, _MAX_SEED)
        if epoch != self.epoch:
            self.epoch = epoch
            self._length = None
            self._begun = False
            self._resume = self._start = self._share = self._taken = 0

    def _pinned(self) -> int:
        have = len(self.data)  # type: ignore[arg-type]
        if self._length is None:
            return have
        if have < self._length:
            raise InvalidArgumentError(
                f"epoch {self.epoch} was drawn from {self._length} rows but data now has {have}: "
                "resume with the same blob (a snapshot at least as long)"
            )
        return self._length

    def _order(self, n: int) -> torch.Tensor:
        key = (self.epoch, n)
        if self._cached is None or self._cached[0] != key:
            order = epoch_order(
                n,
                self.seed,
                self.epoch,
                shuffle=self.shuffle,
                block=self.block_size,
                window=self.window_blocks,
            )
            self._cached = (key, order)
        return self._cached[1]

    def _count(self, samples: int) -> int:
        """Items (indices, or batches) a share of ``samples`` makes."""
        b = self.batch_size
        if b is None:
            return samples
        return samples // b if self.drop_last else -(-samples // b)

    def __len__(self) -> int:
        """Items (indices or batches) this rank gets in a whole epoch, the same on every rank.

        Counted on the pinned length, or on ``len(data)`` before the epoch's
        first pass. A resumed pass yields fewer: the rest of the epoch.
        """
        n, r = self._pinned(), self.num_replicas
        return self._count(n // r if self.drop_last else -(-n // r))

    def __iter__(self) -> Iterator[Any]:
        """Yield this rank's indices (or lists of them) for the rest of the epoch.

        The pass begins at the first ``next()`` (DataLoader calls ``iter()``
        twice and uses the second): the epoch's first pass pins
        ``len(data)``; a pass after ``load_state_dict`` starts at the saved
        position, any other at 0.

        Raises:
            InvalidArgumentError: ``data`` is shorter than the pinned length.
        """
        return self._pass()

    def _pass(self) -> Iterator[Any]:
        n = self._pinned()
        self._length = n
        start, self._resume = self._resume, 0
        mine = deal(self._order(n), start, self.num_replicas, self.rank, self.drop_last)
        b = self.batch_size
        if b is not None and self.drop_last:
            del mine[len(mine) - len(mine) % b :]
        self._passes += 1
        this = self._passes
        self._start, self._share, self._taken, self._begun = start, len(mine), 0, True
        step = 1 if b is None else b
        for k in range(0, len(mine), step):
            # Counted before it is handed out: when the loop holds the item, it is consumed.
            if not self._reported and self._passes == this:
                self._taken = min(k + step, len(mine))
            yield mine[k] if b is None else mine[k : k + b]

    def _advance(self, samples: int) -> None:
        """A BlobLoader reports that ``samples`` more of this rank's share reached the loop."""
        self._taken = min(self._taken + samples, self._share)

    # -- state ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position the training loop reached in this epoch, to resume from it.

        ``position`` is how much of the epoch's order the ranks have consumed
        together (at the end of the epoch ``length``, less the indices that
        ``drop_last`` leaves out), assuming every rank
        consumed the same number of batches, as DDP steps do. So the state is
        the same on every rank, and rank 0's can be loaded on all of them,
        with any number of ranks, batch size or DataLoader workers.
        """
        if self._begun:
            consumed = self._taken * self.num_replicas
            position = self._start + min(consumed, (self._length or 0) - self._start)
        else:
            position = self._resume
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "length": self._length,
            "position": position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "window_blocks": self.window_blocks,
            "block_size": self.block_size,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``: the next pass yields exactly the rest of that epoch.

        The epoch's order is rebuilt from the saved length, so the rest is the
        same even if the blob has grown since; its first ``length`` rows must
        be the same rows (true of a blob that is only appended to).

        Raises:
            BlobTypeError: ``state`` is not a mapping, or a value has the wrong type
                (a bool where an int belongs, or the reverse, included).
            InvalidArgumentError: a key is missing or unknown, a value is out of range, the state
                orders differently (seed, shuffle, window, block size,
                drop_last), or ``data`` is shorter than the saved length.
        """
        if not isinstance(state, Mapping):
            raise BlobTypeError(f"state must be a mapping, got {type(state).__name__}")
        keys = {"version", "epoch", "length", "position", *_ORDER_KEYS}
        missing, unknown = sorted(keys - set(state)), sorted(map(repr, set(state) - keys))
        if missing or unknown:
            said = [f"missing keys {missing}"] if missing else []
            said += [f"unknown keys {unknown}"] if unknown else []
            raise InvalidArgumentError("state: " + ", ".join(said))
        _int(state["version"], "state['version']", 0)
        if state["version"] != STATE_VERSION:
            raise InvalidArgumentError(
                f"state: version {state['version']!r}, this sampler reads {STATE_VERSION}"
            )
        for key, types in _ORDER_KEYS.items():
            mine = getattr(self, key)
            if type(state[key]) not in types:  # True is not 1: the type is part of it
                raise BlobTypeError(
                    f"state: {key}={state[key]!r} is of type {type(state[key]).__name__}, "
                    f"not {' or '.join(t.__name__ for t in types)}"
                )
            if state[key] != mine:
                raise InvalidArgumentError(
                    f"state: {key}={state[key]!r} but this sampler has {key}={mine!r}; "
                    "the rest of the epoch would be another order"
                )
        epoch = _int(state["epoch"], "state['epoch']", 0, _MAX_SEED)
        length = state["length"]
        if length is not None:
            length = _int(length, "state['length']", 0)
        position = _int(state["position"], "state['position']", 0, (length or 0) + 1)
        have = len(self.data)  # type: ignore[arg-type]
        if length is not None and have < length:
            raise InvalidArgumentError(
                f"state: epoch {epoch} was drawn from {length} rows but data has {have}"
            )
        self.epoch, self._length, self._resume = epoch, length, position
        self._begun = False
        self._start = self._share = self._taken = 0
