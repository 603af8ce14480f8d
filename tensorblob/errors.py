"""The exceptions tensorblob raises: one base class, one subclass per failure mode.

Every class also derives from the standard-library exception a caller would
naturally catch (``FileNotFoundError``, ``TimeoutError``, ``ValueError``, ...),
so code written against plain files keeps working. Messages name the blob path
or the argument at fault and, where it helps, what to do next. All classes take
a single message argument (the ``OSError`` ones also ``(errno, message,
filename)``) and pickle cleanly.
"""

from __future__ import annotations

import errno
import io
from typing import TypeVar

__all__ = [
    "BlobClosedError",
    "BlobIOError",
    "BlobNotFoundError",
    "BlobOSError",
    "BlobPermissionError",
    "BlobTypeError",
    "CorruptBlobError",
    "CorruptInputError",
    "DTypeMismatchError",
    "DestinationExistsError",
    "DiskFullError",
    "InvalidArgumentError",
    "InvalidIndexError",
    "UnknownFieldError",
    "LockTimeoutError",
    "MissingDependencyError",
    "NotABlobError",
    "ReadOnlyFilesystemError",
    "ShapeMismatchError",
    "SnapshotGoneError",
    "TensorBlobError",
    "UnsupportedFormatError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "UntrustedFilesystemError",
    "WaitTimeoutError",
]


class TensorBlobError(Exception):
    """Base class of every error tensorblob raises on purpose.

    ``TensorBlob.transaction()`` raises it itself when an operation inside
    failed and its exception was swallowed: the transaction was rolled back.

    Besides the message, an error may carry structured data, for programs
    (``tensorblob check`` among them) that must never branch on the text:
    ``path`` (the file at fault), ``reason`` (a stable code of what is wrong,
    see ``REASONS``) and ``detail`` (the message without the file it names).
    """

    path: str | None = None
    reason: str | None = None
    detail: str | None = None

    def __init__(
        self,
        *args: object,
        path: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(*args)
        if path is not None:
            self.path = path
        if reason is not None:
            self.reason = reason
        if detail is not None:
            self.detail = detail


# The reasons a CorruptBlobError gives (``reason``), one table.
REASONS = {
    "wrong-magic": "the file does not start with its magic bytes",
    "truncated": "the file is shorter than its header says",
    "bad-version": "the format version is not a valid one",
    "checksum": "the CRC-32 of the body does not match",
    "trailing": "bytes follow the body",
    "body": "the body is not a valid msgpack map",
    "schema": "a field of the body or of a record has the wrong type or value",
    "missing": "the file is missing",
    "foreign": "the file belongs to another blob (its uuid differs from meta's)",
    "generations": "the journal does not follow the manifest's generation",
    "does-not-fit": "a journal record does not apply to the state before it",
    "lost-frames": "intact journal records follow damage: committed transactions would be lost",
    "block-missing": "a block file is missing",
    "block-size": "a block file has the wrong size",
    "block-short": "a block file ends before its committed rows",
    "block-checksum": "a block's rows do not match their checksum",
}


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


class BlobClosedError(TensorBlobError, OSError, ValueError):
    """An operation was attempted on a closed blob.

    A ``ValueError``, as for a closed Python file, and an ``OSError`` (``IOError``),
    as in the original tensorblob."""


class BlobOSError(TensorBlobError, OSError):
    """A disk operation on the blob failed; ``errno`` and ``filename`` are the system's.

    Raised as it is for failures other than those of the subclasses below.
    Unless it is a ``BlobIOError``, it came before any commit point: nothing
    of the call was committed, everything committed before is intact, and
    the handle stays usable. Takes ``(message)`` or ``(errno, message[,
    filename])``, as ``OSError`` does; the message names the blob and the file.
    """

    def __str__(self) -> str:
        if self.errno is None or self.strerror is None:
            return super().__str__()
        return f"[Errno {self.errno}] {self.strerror}"


class DiskFullError(BlobOSError):
    """The disk is full or a quota is reached (``ENOSPC``, ``EDQUOT``).

    Nothing of the call was committed; free some space and retry with the
    same handle.
    """


class ReadOnlyFilesystemError(BlobOSError):
    """The blob is on a read-only filesystem (``EROFS``); open it with mode ``"r"``."""


class BlobPermissionError(BlobOSError, PermissionError):
    """The process may not read or write a file of the blob (``EACCES``, ``EPERM``)."""


class BlobIOError(BlobOSError):
    """A disk operation failed at or after a commit point; the handle closed itself.

    The message says what is durable. The transaction in flight is either
    committed or not, as the next open finds it: reopen the blob (or run
    ``tensorblob recover``) to resolve it.
    """


NOTHING_COMMITTED = (
    "Nothing of this call was committed; every transaction committed before it is intact."
)


def from_os_error(
    exc: OSError,
    blob: str,
    doing: str,
    status: str = NOTHING_COMMITTED,
    *,
    kind: str = "blob",
    usable: bool = False,
    readable: bool = False,
) -> BlobOSError:
    """The tensorblob error for ``exc``, raised while ``doing`` something to ``blob``
    (a blob or database, or, with ``kind``, another file such as an export's output).

    The class follows the errno (kept, as is the file name): ``DiskFullError``,
    ``ReadOnlyFilesystemError``, ``BlobPermissionError``, else ``BlobOSError``.
    ``status`` says what is committed; the message ends with what to do:
    ``usable``, an open handle stays usable; ``readable``, the blob exists and
    mode ``'r'`` reads it.
    """
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        cls, what = DiskFullError, "the disk is full (or a disk quota is reached)"
        todo = "Free some space and retry." + (" The handle is still usable." if usable else "")
    elif code == errno.EROFS:
        cls, what = ReadOnlyFilesystemError, "the filesystem is read-only"
        todo = f"Open the {kind} with mode 'r' to read it." if readable else ""
    elif code in (errno.EACCES, errno.EPERM):
        cls, what = BlobPermissionError, "permission denied"
        todo = "Check the permissions of the blob's directory and files."
    else:
        cls, what, todo = BlobOSError, exc.strerror or str(exc), ""
    where = f" on {exc.filename!r}" if exc.filename else ""
    message = f"{kind} {blob!r}: {doing} failed{where}: {what}. {status} {todo}".strip()
    return os_error(cls, code, message, exc.filename)


_E = TypeVar("_E", bound=OSError)


def os_error(cls: type[_E], code: int | None, message: str, filename: object = None) -> _E:
    """``cls(code, message, filename)``, or ``cls(message)`` when there is no errno."""
    if code is None:
        return cls(message)
    return cls(code, message, filename) if filename is not None else cls(code, message)


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


class DTypeMismatchError(BlobTypeError, ValueError):
    """A written tensor's dtype differs from the blob's; tensorblob never casts silently."""


class ShapeMismatchError(TensorBlobError, ValueError):
    """A written tensor's shape is not a row, a batch of rows, or a flat run of rows."""


class UnknownFieldError(TensorBlobError, KeyError):
    """A TensorDB has no field of that name."""

    def __str__(self) -> str:  # KeyError's would show the message's repr
        return str(self.args[0]) if self.args else ""


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


class SnapshotGoneError(TensorBlobError, FileNotFoundError):
    """A reader's snapshot no longer exists, so it cannot be read.

    Unpickling a reader: its blocks were freed once no reader held the
    snapshot any more, or the blob was deleted or created again. A copy
    never switches to another snapshot on its own: keep the original reader
    open while its copies unpickle, or open the blob again for its newest
    snapshot. Reading rows: the blob was deleted, moved or created again
    since the reader opened it, and the rows lie in a block it never mapped.
    """


class UntrustedFilesystemError(TensorBlobError, OSError):
    """A writer was refused on a filesystem whose locks or fsync tensorblob cannot trust.

    NFS, SMB, Lustre, CephFS, FUSE mounts and the like: the message names the
    filesystem and its mount point. Readers are allowed there. Pass
    ``trust_fs=True`` to ``TensorBlob.open`` to write anyway.
    """
