"""The release of this package (also ``tensorblob.__version__``)."""

__version__ = "0.1.0"
