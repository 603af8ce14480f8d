"""tensorblob: crash-safe, growable, memory-mapped storage for same-shaped tensors."""

from ._blob import TensorBlob
from .errors import (
    BlobClosedError,
    BlobIOError,
    BlobNotFoundError,
    BlobTypeError,
    CorruptBlobError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    LockTimeoutError,
    NotABlobError,
    ShapeMismatchError,
    SnapshotGoneError,
    TensorBlobError,
    UnsupportedOperationError,
    UnsupportedVersionError,
    UntrustedFilesystemError,
)

__version__ = "0.1.0"

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
    "TensorBlob",
    "TensorBlobError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "UntrustedFilesystemError",
    "__version__",
]
