"""tensorblob: crash-safe, growable, memory-mapped storage for same-shaped tensors."""

from ._blob import TensorBlob
from ._import import import_blob
from ._transfer import export_blob
from .errors import (
    BlobClosedError,
    BlobIOError,
    BlobNotFoundError,
    BlobTypeError,
    CorruptBlobError,
    CorruptInputError,
    DestinationExistsError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    LockTimeoutError,
    MissingDependencyError,
    NotABlobError,
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
