"""The ``tensorblob export``, ``import`` and ``copy`` commands (docs/cli.md).

Exit codes, as for the other commands: 0 done; 1 the work failed (a damaged
input or blob, an I/O error such as a full disk); 2 usage error, not a blob,
a format that cannot hold the data, or a destination that exists; 3
(``import``) another writer held the destination's lock past ``--timeout``.
Whatever the code, a failed command leaves no output file and changes no
blob. ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._cli_output import Progress, json_result, print_json, print_problems, say
from ._findings import EXIT_BUSY, EXIT_PROBLEMS, EXIT_USAGE, Problem
from ._formats import DEFAULT_NAME, EXPORT_FORMATS, IMPORT_FORMATS
from ._meta import dtype_name
from .errors import (
    BlobNotFoundError,
    BlobTypeError,
    CorruptBlobError,
    CorruptInputError,
    DestinationExistsError,
    InvalidArgumentError,
    LockTimeoutError,
    MissingDependencyError,
    NotABlobError,
    UnknownFieldError,
    UnsupportedFormatError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:
    from ._transfer import Transfer


def _transfer() -> ModuleType:
    from . import _transfer  # noqa: PLC0415 - torch only when a transfer runs

    return _transfer


def _copy() -> ModuleType:
    from . import _copy  # noqa: PLC0415 - torch only when a copy runs

    return _copy


def _import() -> ModuleType:
    from . import _import  # noqa: PLC0415 - torch only when a transfer runs

    return _import


# Exception class -> exit code, verdict (= problem code), what to do. First match wins.
_OUTCOMES: list[tuple[type[BaseException], int, str, str]] = [
    (LockTimeoutError, EXIT_BUSY, "busy", "close the other writer, or pass a larger --timeout"),
    (BlobNotFoundError, EXIT_USAGE, "not-found", "check the path"),
    (NotABlobError, EXIT_USAGE, "not-a-blob", "check the path"),
    (UnsupportedVersionError, EXIT_USAGE, "unsupported-version", "use a newer tensorblob"),
    (
        UnsupportedFormatError,
        EXIT_USAGE,
        "unsupported-format",
        "see the message: another format or input",
    ),
    (
        DestinationExistsError,
        EXIT_USAGE,
        "exists",
        "choose another destination (export and import also take --replace, import --append)",
    ),
    (
        MissingDependencyError,
        EXIT_USAGE,
        "missing-dependency",
        "pip install 'tensorblob[safetensors]'",
    ),
    (InvalidArgumentError, EXIT_USAGE, "usage", "see --help"),
    (UnknownFieldError, EXIT_USAGE, "usage", "check the field's name (tensorblob info SRC)"),
    (BlobTypeError, EXIT_USAGE, "usage", "see --help"),
    (
        CorruptInputError,
        EXIT_PROBLEMS,
        "damaged-input",
        "the input is damaged: recreate it from its source",
    ),
    (CorruptBlobError, EXIT_PROBLEMS, "damaged", "run `tensorblob check PATH` for what happened"),
    (
        OSError,
        EXIT_PROBLEMS,
        "failed",
        "fix the cause (a full disk, permissions) and run the command again",
    ),
]


def add_parsers(sub: Any, timeout: Any) -> None:
    """Add ``export`` and ``import`` to the ``tensorblob`` parser's subcommands.

    ``timeout`` is the argparse type of ``--timeout`` (as ``recover`` takes it).
    """
    e = sub.add_parser(
        "export",
        help="write a blob's or TensorDB's rows to a .npy or .safetensors file",
        description="Write every committed row of the blob or TensorDB SRC into the file OUT, "
        "bit for bit, streamed in bounded pieces (a TensorDB: each field a tensor named after "
        "it in .safetensors; one field, --field, in .npy). OUT appears whole or not at all. "
        "Exit 0 done, 1 failed, 2 usage error, not a blob, unsupported format or OUT exists.",
    )
    e.add_argument("src", metavar="SRC", help="the blob or TensorDB directory")
    e.add_argument("out", metavar="OUT", help="the file to write (*.npy or *.safetensors)")
    e.add_argument("--format", choices=EXPORT_FORMATS, help="default: OUT's suffix")
    e.add_argument(
        "--name", help=f"a blob's tensor's name in .safetensors (default: {DEFAULT_NAME})"
    )
    e.add_argument("--field", help="export only this field of a TensorDB (needed for .npy)")
    e.add_argument("--replace", action="store_true", help="replace an existing OUT atomically")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    i = sub.add_parser(
        "import",
        help="copy a .npy, .safetensors or original tensorblob into a blob or TensorDB",
        description="Copy the rows of IN (a .npy file, a .safetensors file, or a blob of the "
        "original tensorblob 0.3) into the blob DST, creating it, in one transaction. An "
        "original TensorDB, or a .safetensors file of several tensors (without --name), goes "
        "into the TensorDB DST, one field per field or tensor. Exit 0 "
        "done, 1 failed, 2 usage error, unsupported or DST holds rows, 3 DST's lock is busy.",
    )
    i.add_argument("src", metavar="IN", help="the file or original blob directory to read")
    i.add_argument("dst", metavar="DST", help="the blob to create or fill")
    i.add_argument("--format", choices=IMPORT_FORMATS, help="default: told from IN's bytes")
    i.add_argument("--name", help="the tensor to read from .safetensors (default: data)")
    i.add_argument("--block-size", type=int, metavar="N", help="rows per block of a new DST")
    how = i.add_mutually_exclusive_group()
    how.add_argument("--replace", action="store_true", help="replace the rows DST holds")
    how.add_argument("--append", action="store_true", help="append after the rows DST holds")
    i.add_argument(
        "--timeout",
        type=timeout,
        default=30.0,
        metavar="S",
        help="seconds to wait for DST's writer lock (default 30)",
    )
    i.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    c = sub.add_parser(
        "copy",
        help="copy one committed snapshot of a blob or TensorDB, even while a writer works",
        description="Copy the newest committed snapshot of SRC (a blob or TensorDB, which a "
        "writer may keep changing) to DST, which must not exist. DST appears whole or not at "
        "all and is durable when the command returns. Exit 0 done, 1 failed, 2 usage error, "
        "not a blob, or DST exists.",
    )
    c.add_argument("src", metavar="SRC", help="the blob or TensorDB to copy")
    c.add_argument("dst", metavar="DST", help="where the copy goes (must not exist)")
    c.add_argument(
        "--compact",
        action="store_true",
        help="rewrite the rows in order instead of copying block files (can change the block size)",
    )
    c.add_argument("--block-size", type=int, metavar="N", help="rows per block (--compact)")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` command; return its exit code."""
    blob, file = os.path.abspath(args.src), os.path.abspath(args.out)
    return _run(
        args,
        "export",
        blob,
        file,
        lambda progress: _transfer().run_export(
            args.src,
            args.out,
            format=args.format,
            name=args.name,
            field=args.field,
            if_exists="replace" if args.replace else "error",
            progress=progress,
        ),
    )


def run_import(args: argparse.Namespace) -> int:
    """The ``import`` command; return its exit code."""
    blob, file = os.path.abspath(args.dst), os.path.abspath(args.src)
    if_exists = "replace" if args.replace else "append" if args.append else "error"
    return _run(
        args,
        "import",
        blob,
        file,
        lambda progress: _import().run_import(
            args.src,
            args.dst,
            format=args.format,
            name=args.name,
            block_size=args.block_size,
            if_exists=if_exists,
            timeout=args.timeout,
            progress=progress,
            db=None,  # an original TensorDB becomes a TensorDB
        ),
    )


def run_copy(args: argparse.Namespace) -> int:
    """The ``copy`` command; return its exit code."""
    dst, src = os.path.abspath(args.dst), os.path.abspath(args.src)
    return _run(
        args,
        "copy",
        dst,
        src,
        lambda progress: _copy().run_copy(
            args.src, args.dst, compact=args.compact, block_size=args.block_size, progress=progress
        ),
    )


_VERDICTS = {"export": "exported", "import": "imported", "copy": "copied"}


def _run(args: argparse.Namespace, command: str, blob: str, file: str, work: Any) -> int:
    progress = Progress(command, quiet=args.json)
    done: Transfer | None = None
    problems: list[Problem] = []
    try:
        done = work(progress)
        code, verdict = 0, _VERDICTS[command]
    except Exception as exc:
        outcome = next((o for o in _OUTCOMES if isinstance(exc, o[0])), None)
        if outcome is None:
            raise
        _, code, verdict, fix = outcome
        problems.append(Problem("error", verdict, str(exc), fix))
    finally:
        progress.close()
    actions = [_action(command, done)] if done is not None else []
    if args.json:
        result = json_result(code, verdict, problems, blob)
        print_json(
            {"command": command, "path": blob, **result, "actions": actions, **_facts(file, done)}
        )
        return code
    if command == "export":
        print(f"export {blob} -> {file}")
    else:
        print(f"{command} {file} -> {blob}")
    print_problems(problems, blob)
    for action in actions:
        say(sys.stdout, action, "  ", 4)
    if done is not None:
        say(sys.stdout, f"result: {verdict}")
    else:
        what = {
            "export": "no file was written",
            "import": "the blob was not changed",
            "copy": "no copy was left",
        }[command]
        say(sys.stdout, f"result: failed ({verdict}); {what}")
    return code


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _action(command: str, t: Transfer) -> str:
    mib = t.nbytes / (1 << 20)
    rate = f" ({mib / t.seconds:.0f} MiB/s)" if mib >= 1 and t.seconds > 0 else ""
    layout = f"{t.rows} row(s) of {dtype_name(t.dtype)} {_shape(t.shape)}"
    if t.dtype is None:
        layout = f"{t.rows} record(s) of fields {', '.join(t.fields)}"
    size = f"{t.nbytes} bytes in {t.seconds:.2f} s{rate}"
    if command == "export":
        return f"wrote {shlex.quote(t.file)} ({t.format}): {layout}, {size}"
    if command == "copy":
        return f"copied {layout}: one committed snapshot, durable, {size}"
    return f"copied {layout} from {t.format} in one transaction, {size}"


def _facts(file: str, t: Transfer | None) -> dict[str, Any]:
    if t is None:
        return {"file": file} | dict.fromkeys(
            ("format", "rows", "dtype", "shape", "fields", "bytes", "seconds")
        )
    return {
        "file": t.file,
        "format": t.format,
        "rows": t.rows,
        "dtype": None if t.dtype is None else dtype_name(t.dtype),
        "shape": None if t.dtype is None else list(t.shape),
        "fields": list(t.fields) or None,
        "bytes": t.nbytes,
        "seconds": round(t.seconds, 6),
    }
