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
    "CorruptInputError",
    "DTypeMismatchError",
    "DestinationExistsError",
    "InvalidArgumentError",
    "InvalidIndexError",
    "LockTimeoutError",
    "MissingDependencyError",
    "NotABlobError",
    "ShapeMismatchError",
    "TensorBlobError",
    "UnsupportedFormatError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "WaitTimeoutError",
]


class TensorBlobError(Exception):
    """Base class of every error tensorblob raises on purpose.

    ``TensorBlob.transaction()`` raises it itself when an operation inside
    failed and its exception was swallowed: the transaction was rolled back.
    """


class BlobNotFoundError(TensorBlobError, FileNotFoundError):
    """The path does not exist and the mode does not create a blob.

    Also raised by ``TensorBlob.unlink`` without ``missing_ok``, when the
    parent directory of a blob (or of an exported file) to create does not
    exist, and by ``import_blob`` when its input does not exist.
    """


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
    """Another writer held the blob's writer lock for longer than ``timeout``.

    The message names the blob and the holder (pid and host).
    """


class BlobClosedError(TensorBlobError, ValueError):
    """An operation was attempted on a closed blob."""


class BlobIOError(TensorBlobError, OSError):
    """A disk operation failed at or after a commit point; the handle closed itself.

    The transaction in flight is either committed or not, as the next open
    finds it: reopen the blob (or run ``tensorblob recover``) to resolve it.
    """


class UnsupportedOperationError(TensorBlobError, io.UnsupportedOperation):
    """The operation is not allowed on this handle.

    The mode forbids it (``write`` on a blob opened ``"r"``, ``read`` on one
    opened ``"a"``), a writer is pickled, or a forked child writes through its
    parent's writer.
    """


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


class UnsupportedFormatError(TensorBlobError, ValueError):
    """A file format cannot hold this data, or the format is unknown.

    Raised by ``export_blob`` and ``import_blob`` before anything is written:
    ``bfloat16`` rows to ``.npy`` (NumPy has no such dtype), an input whose
    dtype or shape no blob can hold, or a path whose format cannot be told.
    """


class CorruptInputError(TensorBlobError, ValueError):
    """A file to import is damaged, cut short, or not of the format it claims.

    Raised by ``import_blob`` before anything is written; the message names
    the file.
    """


class DestinationExistsError(TensorBlobError, FileExistsError):
    """The destination of an export or import exists and the call may not replace it.

    ``export_blob`` refuses an existing file and ``import_blob`` a blob that
    holds rows, unless told otherwise (``if_exists=``).
    """


class WaitTimeoutError(TensorBlobError, TimeoutError):
    """``wait_for`` gave up: the blob did not reach the rows asked for within ``timeout``."""


class MissingDependencyError(TensorBlobError, ImportError):
    """An optional package that this call needs is not installed.

    The message names the package and the extra that installs it
    (``pip install 'tensorblob[safetensors]'``).
    """
