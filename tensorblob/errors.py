"""The exceptions tensorblob raises: one base class, one subclass per failure mode.

Every class also derives from the standard-library exception a caller would
naturally catch (``FileNotFoundError``, ``TimeoutError``, ``ValueError``, ...),
so code written against plain files keeps working. Messages name the blob path
or the argument at fault and, where it helps, what to do next. All classes take
a single message argument and pickle cleanly.
"""

from __future__ import annotations

import io

__all__ = [
    "BlobClosedError",
    "BlobIOError",
    "BlobNotFoundError",
    "BlobTypeError",
    "CorruptBlobError",
    "DTypeMismatchError",
    "InvalidArgumentError",
    "InvalidIndexError",
    "LockTimeoutError",
    "NotABlobError",
    "ShapeMismatchError",
    "TensorBlobError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
]


class TensorBlobError(Exception):
    """Base class of every error tensorblob raises on purpose."""


class BlobNotFoundError(TensorBlobError, FileNotFoundError):
    """The path does not exist and the mode does not create a blob."""


class NotABlobError(TensorBlobError, ValueError):
    """The path exists but is not a tensorblob (a plain file, or a foreign directory)."""


class CorruptBlobError(TensorBlobError, ValueError):
    """A file inside the blob is damaged: bad magic, checksum, framing or record.

    tensorblob never repairs such damage by dropping committed data on its own;
    run ``tensorblob check PATH`` to see what is wrong.
    """


class UnsupportedVersionError(TensorBlobError, ValueError):
    """The blob was written by a newer format version than this library reads."""


class LockTimeoutError(TensorBlobError, TimeoutError):
    """Another writer held the blob's writer lock for longer than ``timeout``."""


class BlobClosedError(TensorBlobError, ValueError):
    """An operation was attempted on a closed blob."""


class BlobIOError(TensorBlobError, OSError):
    """A disk operation failed during or after a commit; the handle was closed.

    The transaction in flight is either committed or not, as the next open
    finds it: reopen the blob (or run ``tensorblob recover``) to resolve it.
    """


class UnsupportedOperationError(TensorBlobError, io.UnsupportedOperation):
    """The operation is not allowed in this mode (e.g. ``write`` on a blob opened ``"r"``)."""


class InvalidArgumentError(TensorBlobError, ValueError):
    """An argument has the right type but a value tensorblob cannot accept."""


class BlobTypeError(TensorBlobError, TypeError):
    """An argument has the wrong type (e.g. a string index, a non-tensor write)."""


class DTypeMismatchError(BlobTypeError):
    """A written tensor's dtype differs from the blob's; tensorblob never casts silently."""


class ShapeMismatchError(TensorBlobError, ValueError):
    """A written tensor's shape is not a row, a batch of rows, or a flat run of rows."""


class InvalidIndexError(TensorBlobError, IndexError):
    """A row index is out of range for the blob's length."""
