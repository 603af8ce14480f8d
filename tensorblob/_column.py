"""``Column``: one field of an open TensorDB, read alone (``db.column(name)``).

A read view with the whole indexing of a ``TensorBlob``: it reads the
database's snapshot through the same plans and gathers (``_rows``), and
touches only its field's bytes in each block file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from . import _rows
from ._handle import Handle


class Column:
    """One field of an open TensorDB, read alone: ``db.column("embed")``.

    Indexing, ``len`` and iteration as a ``TensorBlob``'s (without a cursor:
    iteration goes over every row); it reads the database's snapshot and
    touches only this field's bytes. It stays valid while the database is open.
    """

    def __init__(self, db: Handle, f: int) -> None:
        self._db = db
        self._f = f
        self._field = db._meta.fields[f]

    @property
    def name(self) -> str:
        return self._field.name

    @property
    def dtype(self) -> torch.dtype:
        return self._field.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._field.shape

    @property
    def block_size(self) -> int:
        return self._db.block_size

    @property
    def max_cached_blocks(self) -> int:
        return self._db.max_cached_blocks

    def __len__(self) -> int:
        return len(self._db)

    def __repr__(self) -> str:
        return f"Column({self._db.path!r}, {self.name!r}, dtype={self.dtype}, shape={self.shape})"

    def _take(self, p: _rows.Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        db = self._db
        return _rows.take(db._blocks, db._state.blocks, self._f, p, out)

    def take(self, index: Any, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``col[index]``, copied into ``out`` (see ``TensorBlob.take``)."""
        db = self._db
        db._check_open()
        what = f"field {self.name!r} of database {db.path!r}"
        return self._take(_rows.plan(index, db._state.length, what), out)

    def __getitem__(self, index: Any) -> torch.Tensor:
        """``col[i]``, ``col[a:b:c]``, ``col[list | tuple | tensor | ndarray]``: as a blob's."""
        db = self._db
        db._check_open()
        what = f"field {self.name!r} of database {db.path!r}"
        return self._take(_rows.plan(index, db._state.length, what))

    def __getitems__(self, indices: Any) -> list[torch.Tensor]:
        """A DataLoader batch of this field, gathered in one call (see TensorBlob's)."""
        db = self._db
        db._check_open()
        what = f"field {self.name!r} of database {db.path!r}"
        return _rows.items(indices, db._state.length, what, self._take, lambda b: b.unbind(0))

    def __iter__(self) -> Iterator[torch.Tensor]:
        db = self._db
        B = db.block_size
        for start in range(0, len(db), B):
            yield from self._take((start, min(len(db), start + B))).unbind(0)
