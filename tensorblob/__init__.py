"""tensorblob: crash-safe, growable, memory-mapped storage for same-shaped tensors."""

from ._blob import TensorBlob
from .errors import (
    BlobClosedError,
    BlobIOError,
    BlobNotFoundError,
    BlobOSError,
    BlobPermissionError,
    BlobTypeError,
    CorruptBlobError,
    DiskFullError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    LockTimeoutError,
    NotABlobError,
    ReadOnlyFilesystemError,
    ShapeMismatchError,
    TensorBlobError,
    UnsupportedOperationError,
    UnsupportedVersionError,
)

__version__ = "0.1.0"

__all__ = [
    "BlobClosedError",
    "BlobIOError",
    "BlobNotFoundError",
    "BlobOSError",
    "BlobPermissionError",
    "BlobTypeError",
    "CorruptBlobError",
    "DTypeMismatchError",
    "DiskFullError",
    "InvalidArgumentError",
    "InvalidIndexError",
    "LockTimeoutError",
    "NotABlobError",
    "ReadOnlyFilesystemError",
    "ShapeMismatchError",
    "TensorBlob",
    "TensorBlobError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "__version__",
]
