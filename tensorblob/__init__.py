"""tensorblob: crash-safe, growable, memory-mapped storage for same-shaped tensors
(``TensorBlob``) and for records of several row-aligned fields (``TensorDB``)."""

from typing import TYPE_CHECKING, Any

from ._version import __version__
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
    SnapshotGoneError,
    TensorBlobError,
    UnknownFieldError,
    UnsupportedFormatError,
    UnsupportedOperationError,
    UnsupportedVersionError,
    UntrustedFilesystemError,
    WaitTimeoutError,
)

# The public names that need torch (or tqdm) are imported on first use (PEP
# 562), so that ``import tensorblob`` and the metadata commands (``tensorblob
# info``, ``check``, ``recover``) do not pay for importing torch.
_LAZY = {
    "TensorBlob": "._blob",
    "TensorDB": "._db",
    "check": "._report",
    "copy_blob": "._copy",
    "export_blob": "._transfer",
    "import_blob": "._import",
    "import_db": "._import",
}

if TYPE_CHECKING:
    from ._blob import TensorBlob
    from ._copy import copy_blob
    from ._db import TensorDB
    from ._import import import_blob, import_db
    from ._report import check
    from ._transfer import export_blob


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tensorblob' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - only on first use of a lazy name

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "SnapshotGoneError",
    "TensorBlob",
    "TensorBlobError",
    "TensorDB",
    "UnknownFieldError",
    "UnsupportedFormatError",
    "UnsupportedOperationError",
    "UnsupportedVersionError",
    "UntrustedFilesystemError",
    "WaitTimeoutError",
    "__version__",
    "check",
    "copy_blob",
    "export_blob",
    "import_blob",
    "import_db",
]
