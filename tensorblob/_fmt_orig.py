"""Blobs of the original tensorblob (0.3 and before), read for import.

An original blob is a directory holding (docs/migration.md):

- ``.conf``: JSON with ``dtype`` (a torch dtype name), ``shape`` (a list of
  ints) and ``block_size``; the original also wrote ``__notes__``, whose
  ``class_name`` is ``"TensorBlob"`` (or ``"TensorDB"`` for a database);
- ``.stat``: JSON with ``len`` (the rows) and ``bds`` (the block files, in order);
- one raw file per block, named by a UUID: ``block_size`` rows in native
  (little-endian) byte order, no header. The last block's rows past ``len``
  are garbage.

The original had no transactions: ``.stat`` is what its last ``flush()`` or
``close()`` wrote. Import trusts it, and checks that every block it names
exists and holds the rows it should.

An original ``TensorDB`` is a directory with its own ``.conf`` (a ``schema``:
field names to ``[dtype, shape]``, in order), a ``.stat`` (``len``: the
committed rows) and one original blob per field in a subdirectory named
after it. ``open_db`` reads one: its committed rows are the first
``min(len, every field's len)``, as the original's own open took them (a
crash could leave a field longer than ``len``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch

from ._meta import check_field_name, parse_dtype, parse_shape, torch_dtype
from ._source import Source
from .errors import (
    BlobTypeError,
    CorruptInputError,
    InvalidArgumentError,
    UnsupportedFormatError,
)

CONF, STAT = ".conf", ".stat"


def is_original(path: str) -> bool:
    """True if the directory ``path`` looks like an original blob or database: it holds
    ``.conf`` or ``.stat`` (one without the other is a damaged original)."""
    return os.path.isfile(os.path.join(path, CONF)) or os.path.isfile(os.path.join(path, STAT))


def _is_db(conf: dict[str, Any]) -> bool:
    """Does ``.conf`` describe a TensorDB: a schema, or the class named in ``__notes__``
    (the original writes ``"tensorblob._db.TensorDB"``)?"""
    notes = conf.get("__notes__")
    kind = notes.get("class_name") if isinstance(notes, dict) else None
    return "schema" in conf or (isinstance(kind, str) and kind.rsplit(".", 1)[-1] == "TensorDB")


def is_database(path: str) -> bool:
    """True if ``path`` (an original blob or database, ``is_original``) is a TensorDB."""
    try:
        return _is_db(_json(path, CONF))
    except CorruptInputError:
        return False


def open_db(path: str) -> tuple[list[tuple[str, Source]], int, int | None]:
    """Check the original TensorDB at ``path``; return its fields' rows (in schema order),
    its committed row count and its block size.

    Raises:
        CorruptInputError: a ``.conf``, ``.stat`` or field blob is missing or
            damaged, or a field blob disagrees with the schema.
        UnsupportedFormatError: a field's rows have a dimension of 0.
    """
    conf, stat = _json(path, CONF), _json(path, STAT)
    where = os.path.join(path, CONF)
    schema = conf.get("schema")
    if not isinstance(schema, dict) or not schema:
        raise CorruptInputError(f"{where!r}: the schema is missing or empty")
    length = _uint(stat.get("len"), f"{os.path.join(path, STAT)!r}: len")
    fields = []
    for name, spec in schema.items():
        try:
            check_field_name(name)
            dtype_name, shape = spec
            want = (torch_dtype(parse_dtype(dtype_name)), parse_shape(shape))
        except (InvalidArgumentError, BlobTypeError, TypeError, ValueError) as exc:
            raise CorruptInputError(f"{where!r}: bad schema entry {name!r}: {exc}") from None
        source = open_source(os.path.join(path, name))
        if (source.dtype, source.shape) != want:
            raise CorruptInputError(
                f"field {name!r} of {path!r} holds {source.dtype} rows of shape {source.shape}, "
                f"but the schema says {want[0]} of shape {want[1]}"
            )
        fields.append((name, source))
        length = min(length, source.length)
    block_size = conf.get("block_size")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        block_size = fields[0][1].block_size
    return fields, length, block_size


def _json(path: str, name: str) -> dict[str, Any]:
    file = os.path.join(path, name)
    try:
        with open(file, "rb") as f:
            value = json.loads(f.read())
    except FileNotFoundError:
        raise CorruptInputError(
            f"{file!r} is missing: the original tensorblob at {path!r} is damaged"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptInputError(f"{file!r} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CorruptInputError(f"{file!r} does not hold a JSON object")
    return value


def _uint(value: object, what: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CorruptInputError(f"{what} must be an integer of at least {low}, not {value!r}")
    return value


def open_source(path: str) -> Source:
    """Check the original blob at ``path`` and return its rows, read block by block.

    Raises:
        CorruptInputError: ``.conf`` or ``.stat`` is missing or damaged, or a block
            file they name is missing or too short.
        UnsupportedFormatError: ``path`` is an original ``TensorDB``, or its rows
            have a dimension of 0.
    """
    conf, stat = _json(path, CONF), _json(path, STAT)
    if _is_db(conf):
        schema = conf.get("schema")
        fields = ", ".join(schema) if isinstance(schema, dict) else "?"
        raise UnsupportedFormatError(
            f"{path!r} is a TensorDB of the original tensorblob (fields: {fields}), not a "
            "blob: import it with tensorblob.import_db (the `tensorblob import` command "
            "tells the two apart)"
        )
    try:
        dtype = torch_dtype(parse_dtype(conf.get("dtype")))
    except (InvalidArgumentError, BlobTypeError):
        raise CorruptInputError(
            f"{os.path.join(path, CONF)!r}: dtype {conf.get('dtype')!r} is not a torch dtype"
        ) from None
    shape = conf.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise CorruptInputError(f"{os.path.join(path, CONF)!r}: bad shape {shape!r}")
    if any(d < 1 for d in shape):
        raise UnsupportedFormatError(
            f"{path!r} has rows of shape {tuple(shape)}: every dimension of a blob's row "
            "must be at least 1"
        )
    B = _uint(conf.get("block_size"), f"{os.path.join(path, CONF)!r}: block_size", 1)
    length = _uint(stat.get("len"), f"{os.path.join(path, STAT)!r}: len")
    names = stat.get("bds")
    nblocks = math.ceil(length / B)
    if not isinstance(names, list) or len(names) < nblocks:
        raise CorruptInputError(
            f"{os.path.join(path, STAT)!r} lists too few blocks ({names!r:.80}) for "
            f"{length} rows of {B} per block"
        )
    row_bytes = dtype.itemsize * math.prod(shape)
    files = []
    for i, name in enumerate(names[:nblocks]):
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise CorruptInputError(f"{os.path.join(path, STAT)!r}: bad block name {name!r}")
        file = os.path.join(path, name)
        need = min(B, length - i * B) * row_bytes
        try:
            size = os.path.getsize(file)
        except FileNotFoundError:
            raise CorruptInputError(
                f"block file {file!r} of the original blob is missing"
            ) from None
        if size < need:
            raise CorruptInputError(
                f"block file {file!r} has {size} bytes; its {need // row_bytes} rows need {need}"
            )
        files.append(file)

    def read(start: int, stop: int) -> torch.Tensor:
        out = np.empty((stop - start) * row_bytes, dtype=np.uint8)
        pos = start
        while pos < stop:
            slot, off = divmod(pos, B)
            k = min(B - off, stop - pos)
            at = (pos - start) * row_bytes
            _read_into(files[slot], off * row_bytes, memoryview(out)[at : at + k * row_bytes])
            pos += k
        return torch.from_numpy(out).view(dtype).reshape(stop - start, *shape)

    return Source(path, "tensorblob-0.3", dtype, tuple(shape), length, read, block_size=B)


def _read_into(file: str, offset: int, view: memoryview) -> None:
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise CorruptInputError(f"block file {file!r} was cut short while importing it")
            done += n
    finally:
        os.close(fd)
