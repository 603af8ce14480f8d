"""``tensorblob.check``: the check the command line runs, as a function returning its report.

``run_check`` scans the blob (or TensorDB) read-only, reads every committed
row with ``deep``, and returns the scan, the deep read's verifier and the
report: the same dict ``tensorblob check --json`` prints. The command line
prints it; ``check`` returns it. Nothing here changes a file, and torch is
not imported.
"""

from __future__ import annotations

import os
from typing import Any

from . import _check, _deep
from ._cli_output import Progress, json_result, verdict_of
from ._findings import Scan
from .errors import BlobTypeError


def check(path: str | os.PathLike[str], deep: bool = False) -> dict[str, Any]:
    """Check the blob or TensorDB at ``path`` without changing it; return the report.

    The same report ``tensorblob check PATH --json`` prints (docs/cli.md):
    ``ok`` (True if nothing needs doing), ``exit_code`` (the command's),
    ``verdict`` (``"clean"``, ``"needs-recover"``, ``"attention"``,
    ``"damaged"``, ``"unsupported-version"`` or ``"not-a-blob"``), and
    ``problems``: each with ``severity``, ``code``, ``message``, ``fix`` and
    ``file``. With ``deep``, every committed row is read and each block's data
    checksum compared (``rows_read``, ``blocks_read``, ``data_checksums``).
    A writer may keep working meanwhile. Problems are reported, not raised.

    Raises:
        BlobTypeError: ``path`` is not a str or ``os.PathLike``; ``deep`` not a bool.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BlobTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(deep, bool):
        raise BlobTypeError(f"deep must be True or False, got {type(deep).__name__}")
    return run_check(os.fspath(path), deep, None)[2]


def run_check(
    path: str, deep: bool, progress: Progress | None
) -> tuple[Scan, _deep.BlockVerifier | None, dict[str, Any]]:
    """Scan (and with ``deep`` read) ``path``; return the scan, verifier and report."""
    verifier = None
    with _check.scan(path) as sc:
        if deep and sc.kind == "blob":
            verifier = _deep.deep_read(sc, progress)
    code, verdict = verdict_of(sc)
    report: dict[str, Any] = {
        "command": "check",
        "path": sc.root,
        **json_result(code, verdict, sc.problems, sc.root),
        "actions": [],
        "deep": deep,
    }
    if verifier is not None:
        report |= {
            "rows_read": sc.rows_read,
            "blocks_read": sc.blocks_read,
            "data_checksums": verifier.summary(),
        }
    return sc, verifier, report
