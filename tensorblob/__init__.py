"""tensorblob: crash-safe, growable, memory-mapped storage for same-shaped tensors."""

from ._blob import TensorBlob
from ._import import import_blob
from ._transfer import export_blob
from .errors import (
    BlobClosedError,
    BlobIOError,
    BlobNotFoundError,
    BlobOSError,
    BlobPermissionError,
    BlobTypeError,
    CorruptBlobError,
    CorruptInputError,
    DestinationExistsError,
    DiskFullError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    LockTimeoutError,
    MissingDependencyError,
    NotABlobError,
    ReadOnlyFilesystemError,
    ShapeMismatchError,
    TensorBlobError,
    UnsupportedFormatError,
    UnsupportedOperationError,
    UnsupportedVersionError,
    WaitTimeoutError,
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
    "CorruptInputError",
    "DTypeMismatchError",
    "DestinationExistsError",
    "DiskFullError",
    "InvalidArgumentError",
    "InvalidIndexError",
    "LockTimeoutError",
    "MissingDependencyError",
    "NotABlobError",
    "ReadOnlyFilesystemError",
    "ShapeMismatchError",
    "TensorBlob",
    "TensorBlobError",
    "UnsupportedFormatError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "WaitTimeoutError",
    "__version__",
    "export_blob",
    "import_blob",
]
