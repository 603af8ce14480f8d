"""``TensorDB``: records of several row-aligned fields, committed as one, on the same engine.

A TensorDB is a blob whose rows have several fields (F2): each block file
holds the block's rows of every field, one field after the other, so a
block is still the unit of allocation, copy-on-write and checksums, and a
transaction covers every field by construction. Reads return a dict of
tensors, one per field; ``column(name)`` reads one field alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from . import _dirs, _rows, _watch
from ._args import DEFAULT_TIMEOUT, abspath, as_rows, check_open, check_timeout
from ._column import Column
from ._handle import Handle
from ._meta import Meta, check_field_name, parse_dtype, parse_shape
from .errors import (
    BlobTypeError,
    DTypeMismatchError,
    InvalidArgumentError,
    ShapeMismatchError,
    TensorBlobError,
    UnknownFieldError,
    from_os_error,
)

_FAST_BYTES = 1 << 16  # write() batches up to this size take the memmove fast path

Schema = dict[str, tuple[str, tuple[int, ...]]]


def parse_schema(schema: object) -> list[tuple[str, str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` as ``[(name, dtype name, shape)]``, in the dict's order.

    Raises:
        InvalidArgumentError: not a non-empty dict, a bad field name or entry.
        BlobTypeError: a dtype is neither a str nor a torch.dtype.
    """
    if not isinstance(schema, dict) or not schema:
        raise InvalidArgumentError(
            f"Schema must be a non-empty dict mapping field names to (dtype, shape), got {schema!r}"
        )
    specs = []
    for name, spec in schema.items():
        check_field_name(name)
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise InvalidArgumentError(
                f"schema[{name!r}] must be a (dtype, shape) pair, got {spec!r}"
            )
        specs.append((name, parse_dtype(spec[0]), parse_shape(spec[1])))
    return specs


class TensorDB(Handle):
    """Records of several row-aligned fields (``obs``, ``action``, ``reward``, ...).

    Open one with ``TensorDB.open``. It behaves as a ``TensorBlob`` whose rows
    are dicts of tensors, one per field of its schema: every mutating call is
    one atomic transaction over all fields, ``transaction()`` groups several,
    and a reader sees one committed snapshot, in which every field has the same
    length and every row is one committed version of all its fields.

    Attributes:
        recovery_actions: What the recovery run by this writable open did.
    """

    _KIND = "database"
    _LAYOUT = "schema="
    _NEEDS = "the argument ``schema`` is required"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        schema: dict[str, tuple[Any, Any]] | None = None,
        block_size: int | None = None,
        max_cached_blocks: int | None = None,
        sync: str = "normal",
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool = False,
        trust_fs: bool = False,
    ) -> TensorDB:
        """Open the database at ``path`` (a directory), creating it if the mode allows.

        Modes, ``block_size``, ``max_cached_blocks``, ``sync``, ``timeout``,
        ``verify`` and ``trust_fs`` mean what they mean for ``TensorBlob.open``.

        Args:
            path: The database's directory.
            mode: ``"r"``, ``"w"``, ``"a"``, ``"r+"``, ``"w+"`` or ``"a+"``.
            schema: The fields, in order: ``{name: (dtype, shape)}``, a dtype as a
                ``torch.dtype`` or its name, a shape as an int or a tuple, e.g.
                ``{"obs": (torch.uint8, (3, 84, 84)), "reward": ("float32", ())}``.
                Needed to create; for an existing database it must match.
                A name is 1 to 255 printable characters, without ``/`` or ``\\``,
                not starting with ``.``.

        Raises:
            BlobNotFoundError: ``"r"``/``"r+"`` and nothing at ``path``, or
                ``"a"``/``"a+"`` and neither a database nor a ``schema``.
            NotABlobError: ``path`` is a file, a TensorBlob, or a directory
                tensorblob did not create.
            InvalidArgumentError: a bad argument, a ``schema`` missing to create,
                or one that conflicts with the existing database.
            BlobTypeError: ``path`` is not a str or ``os.PathLike``, or a dtype of
                the schema is neither a str nor a ``torch.dtype``.
            TensorBlobError: the other errors of ``TensorBlob.open`` (a lock held past
                ``timeout``, damage, a newer format, a read-only filesystem, ...).
        """
        check_open(mode, sync, max_cached_blocks, block_size, timeout, verify, trust_fs)
        specs = parse_schema(schema) if schema is not None else None

        def layout(uuid: bytes, block_size: int) -> Meta | None:
            return None if specs is None else Meta.database(uuid, specs, block_size)

        def fits(meta: Meta) -> list[tuple[str, Any, Any]]:
            have = {f.name: (f.dtype_name, f.shape) for f in meta.fields}
            want = None if specs is None else {n: (d, s) for n, d, s in specs}
            return [("schema", want, have)]

        return cls._open_dir(
            path, mode, layout, fits, block_size, max_cached_blocks, sync, timeout, verify, trust_fs
        )

    def _setup(self, root: str, mode: str, meta: Meta, *args: Any, **kw: Any) -> None:
        self._names = meta.names
        self._shapes = tuple(torch.Size(f.shape) for f in meta.fields)
        super()._setup(root, mode, meta, *args, **kw)

    def _fast_ok(self) -> bool:
        """write() copies rows as raw bytes on its fast path: right for every dtype but
        complex ones (a conjugate view holds other bytes than it shows)."""
        fields = self._meta.fields
        self._lanes = tuple(zip(self._names, (f.dtype for f in fields), self._shapes, strict=True))
        self._fast_rows = max(1, _FAST_BYTES // self._meta.row_bytes)
        return not any(f.dtype.is_complex for f in fields)

    @classmethod
    def unlink(
        cls,
        path: str | os.PathLike[str],
        *,
        missing_ok: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> bool:
        """Delete the database at ``path``, atomically (see ``TensorBlob.unlink``).

        Returns True, or False if nothing was there and ``missing_ok``.

        Raises:
            BlobNotFoundError: nothing at ``path`` (unless ``missing_ok``).
            NotABlobError: ``path`` is not a TensorDB, or holds foreign files.
            CorruptBlobError: the database's ``meta`` is damaged.
            LockTimeoutError: a writer kept the lock past ``timeout``.
        """
        check_timeout(timeout)
        return _dirs.unlink(abspath(path), db=True, missing_ok=missing_ok, timeout=timeout)

    # -- properties -------------------------------------------------------

    @property
    def schema(self) -> Schema:
        """The fields, in order: ``{name: (dtype name, shape)}``, fixed at creation."""
        return {f.name: (f.dtype_name, f.shape) for f in self._meta.fields}

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names, in order."""
        return self._names

    def column(self, name: str) -> Column:
        """A read view of the field ``name`` alone, with the whole indexing of a TensorBlob.

        It reads this handle's snapshot (``refresh()`` moves both) and touches
        only that field's bytes.

        Raises:
            UnknownFieldError: no field ``name`` (a ``KeyError``).
        """
        self._check_open()
        if name not in self._names:
            raise UnknownFieldError(
                f"database {self._path!r} has no field {name!r} (it has {list(self._names)})"
            )
        return Column(self, self._names.index(name))

    @property
    def _cols(self) -> dict[str, Column]:
        """Every field's column (the original tensorblob's name)."""
        return {name: self.column(name) for name in self._names}

    def __repr__(self) -> str:
        if self._closed:
            return f"TensorDB({getattr(self, '_path', '?')!r}, closed)"
        return (
            f"TensorDB({self._path!r}, mode={self._mode!r}, fields={list(self._names)}, "
            f"{len(self)} rows)"
        )

    # -- writing ----------------------------------------------------------

    def write(self, rows: dict[str, torch.Tensor]) -> int:
        """Write records at the cursor (at the end in append modes); return how many.

        ``rows`` maps every field of the schema, and nothing else, to a row, a
        batch ``(n, *shape)`` or a flat 1-D tensor of whole rows of exactly the
        field's dtype; every field must have the same number of rows. Anything
        else is refused before anything is written. The call is one transaction
        (or part of the open one) over all fields.

        Raises:
            BlobTypeError: ``rows`` is not a dict, or a value is not a tensor.
            InvalidArgumentError: a field is missing, or one is not in the schema.
            DTypeMismatchError: a field's dtype is wrong (nothing is cast silently).
            ShapeMismatchError: a field's shape is wrong, or the fields have
                different row counts.
            TensorBlobError: the other errors of ``TensorBlob.write`` (not writable,
                closed, a full disk, a failed commit step).
        """
        try:
            fast = self._fast
            if fast is not None and type(rows) is dict and len(rows) == len(self._names):
                # The fast path: every field a row or the same small batch, copied
                # straight into the write window (Engine.fast_write).
                srcs, n = self._fast_srcs(rows)
                if n and self._put_fast(fast, srcs, n):
                    return n
            engine = self._check_writable()
            return self._put(engine, self._checked(rows))
        except OSError as exc:  # the library's own disk work only: nothing else runs here
            if isinstance(exc, TensorBlobError):
                raise
            raise from_os_error(
                exc, self._path, "writing rows", kind=self._KIND, usable=True
            ) from exc

    def _fast_srcs(self, rows: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], int]:
        """The fields' addresses and row count if the fast path applies, else ``((), 0)``."""
        srcs = []
        n = 0
        get, most = rows.get, self._fast_rows
        for name, dtype, shape in self._lanes:
            t = get(name)
            if (
                type(t) is not torch.Tensor
                or t.dtype is not dtype
                or not t.is_cpu
                or t.layout is not torch.strided
            ):
                return (), 0
            ts = t.shape
            if ts == shape:
                k = 1
            elif ts[1:] == shape and 0 < ts[0] <= most:
                k = ts[0]
            else:
                return (), 0
            # (A 0-d tensor is contiguous; a negative view holds other bytes than it shows.)
            if (n and k != n) or (ts and not t.is_contiguous()) or t.is_neg():
                return (), 0
            n = k
            srcs.append(t.data_ptr())
        return tuple(srcs), n

    def _checked(self, rows: object) -> list[torch.Tensor]:
        """``rows`` as one checked tensor per field, in schema order (see ``write``)."""
        if not isinstance(rows, dict):
            raise BlobTypeError(
                f"write() takes a dict mapping field names to tensors, got {type(rows).__name__}"
            )
        missing = [n for n in self._names if n not in rows]
        extra = [n for n in rows if n not in self._names]
        if missing or extra:
            raise InvalidArgumentError(
                f"write(): a record needs exactly the fields {list(self._names)}; "
                f"missing: {missing}, unexpected: {extra}"
            )
        out = [as_rows(rows[f.name], f) for f in self._meta.fields]
        counts = {f.name: t.shape[0] for f, t in zip(self._meta.fields, out, strict=True)}
        if len(set(counts.values())) != 1:
            raise ShapeMismatchError(
                f"write(): all fields must have the same row count; got {counts}"
            )
        return out

    def extend(self, other: TensorDB, maintain_order: bool = True) -> int:
        """Append all records of ``other`` (another open database with the same fields) as
        one transaction; return the count. See ``TensorBlob.extend``: with
        ``maintain_order=False`` whole block files are copied when both have the
        same layout (fields in the same order, block size).

        Raises:
            BlobTypeError: ``other`` is not a TensorDB.
            InvalidArgumentError: the field names differ, or ``other`` is another handle
                inside a ``transaction()`` (its rows are not committed).
            DTypeMismatchError: a field's dtype differs.
            ShapeMismatchError: a field's shape differs.
            UnsupportedOperationError: this database is not writable.
            BlobClosedError: either is closed.
            BlobIOError: a commit step failed; the handle closed itself.
        """
        engine = self._check_writable()
        if not isinstance(other, TensorDB):
            raise BlobTypeError(f"extend() takes a TensorDB, got {type(other).__name__}")
        other._check_open()
        mine, theirs = self.schema, other.schema
        if set(mine) != set(theirs):
            raise InvalidArgumentError(
                f"extend(): Schema fields must match: other has {sorted(theirs)}, "
                f"this one {sorted(mine)}"
            )
        for name, (dtype, shape) in mine.items():
            if theirs[name][0] != dtype:
                raise DTypeMismatchError(
                    f"extend(): field {name!r}: data types must match: other has "
                    f"{theirs[name][0]}, this one {dtype}"
                )
            if theirs[name][1] != shape:
                raise ShapeMismatchError(
                    f"extend(): field {name!r}: shapes must match: other has "
                    f"{theirs[name][1]}, this one {shape}"
                )
        return self._extend(engine, other, maintain_order)

    def _as_list(self, rows: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [rows[name] for name in self._names]

    # -- reading ----------------------------------------------------------

    def _take(
        self, p: _rows.Plan, out: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        blocks, slots, names = self._blocks, self._state.blocks, self._names
        if out is None:
            return {name: _rows.take(blocks, slots, f, p) for f, name in enumerate(names)}
        if not isinstance(out, dict) or set(out) != set(names):
            raise InvalidArgumentError(
                f"out= must be a dict of one tensor per field {list(names)}, got "
                f"{sorted(out) if isinstance(out, dict) else type(out).__name__}"
            )
        n = _rows.count(p)
        for f, name in enumerate(names):  # every field checked before any is read
            _rows.into(out[name], self._meta.fields[f], n if not isinstance(p, int) else None)
        return {name: _rows.take(blocks, slots, f, p, out[name]) for f, name in enumerate(names)}

    def _unbatch(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        cols = [batch[name].unbind(0) for name in self._names]
        return [dict(zip(self._names, row, strict=True)) for row in zip(*cols, strict=True)]

    def follow(
        self, batch: int | None = None, timeout: float | None = None, *, until_closed: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield records from the cursor on, then each as a writer commits it (``tail -f``):
        ``TensorBlob.follow``, with dicts of tensors."""
        return _watch.follow(self, batch, timeout, until_closed)
