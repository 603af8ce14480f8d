"""What ``import_blob`` reads from: the rows of a file or directory of another format.

Each format module (``_fmt_npy``, ``_fmt_safetensors``, ``_fmt_orig``) checks
its input completely when it opens it, and returns a ``Source``: the layout
of the rows, and a function that reads any range of them. So every refusal
(an unsupported dtype, a damaged header, a file cut short) happens before
anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .errors import UnsupportedFormatError

# Rows are moved in pieces of about this many bytes (at least one row): import
# and export hold one or two such pieces in memory, whatever the blob's size.
CHUNK_BYTES = 32 << 20


def _nothing() -> None:
    return None


@dataclass
class Source:
    """The rows of an input, readable by range.

    Attributes:
        path: The input's absolute path.
        format: Its format: ``"npy"``, ``"safetensors"`` or ``"tensorblob-0.3"``.
        dtype: The element type of the rows.
        shape: The shape of one row.
        length: The number of rows.
        read: ``read(start, stop)`` returns rows ``start:stop`` as a CPU tensor
            ``(stop - start, *shape)`` of ``dtype``, bit for bit as stored.
        block_size: The block size to suggest for a new blob (the original
            tensorblob's own), or None for the default.
        close: Releases what the source holds open.
    """

    path: str
    format: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    length: int
    read: Callable[[int, int], torch.Tensor]
    block_size: int | None = None
    close: Callable[[], None] = field(default=_nothing)

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)


def check_layout(path: str, what: str, dims: tuple[int, ...]) -> tuple[int, ...]:
    """Return the row shape of an array of shape ``dims`` (rows first), or refuse it.

    Raises:
        UnsupportedFormatError: ``dims`` is empty (no rows), or a row dimension is 0.
    """
    if not dims:
        raise UnsupportedFormatError(
            f"{what} {path!r} is a 0-d array: a blob needs a first dimension to count rows"
        )
    shape = tuple(int(d) for d in dims[1:])
    if any(d < 1 for d in shape):
        raise UnsupportedFormatError(
            f"{what} {path!r} has rows of shape {shape}: every dimension of a blob's row "
            "must be at least 1"
        )
    return shape


def spans(length: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """Split rows ``0:length`` into ranges of about ``CHUNK_BYTES`` (at least one row each)."""
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, length, step):
        yield start, min(length, start + step)
