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
    "SnapshotGoneError",
    "TensorBlobError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "UntrustedFilesystemError",
]


class TensorBlobError(Exception):
    """Base class of every error tensorblob raises on purpose.

    ``TensorBlob.transaction()`` raises it itself when an operation inside
    failed and its exception was swallowed: the transaction was rolled back.
    """


class BlobNotFoundError(TensorBlobError, FileNotFoundError):
    """The path does not exist and the mode does not create a blob.

    Also raised by ``TensorBlob.unlink`` without ``missing_ok``, and when the
    parent directory of a blob to create does not exist.
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


class SnapshotGoneError(TensorBlobError, FileNotFoundError):
    """A pickled reader's snapshot no longer exists, so its copy cannot read it.

    Its blocks were freed once no reader held the snapshot any more, or the
    blob was deleted or created again. A copy never switches to another
    snapshot on its own: keep the original reader open while its copies
    unpickle, or open the blob again for its newest snapshot.
    """


class UntrustedFilesystemError(TensorBlobError, OSError):
    """A writer was refused on a filesystem whose locks or fsync tensorblob cannot trust.

    NFS, SMB, Lustre, CephFS, FUSE mounts and the like: the message names the
    filesystem and its mount point. Readers are allowed there. Pass
    ``trust_fs=True`` to ``TensorBlob.open`` to write anyway.
    """
