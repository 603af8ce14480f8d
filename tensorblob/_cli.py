"""The ``tensorblob`` command: ``info``, ``check`` and ``recover`` for operators (docs/cli.md).

``export`` and ``import`` (rows to and from ``.npy``, ``.safetensors`` and the
original tensorblob) live in ``_cli_transfer``.

Exit codes (every command): 0 all is well; 1 problems found (``check``), the
blob is damaged (``info``) or ``recover`` stopped or failed; 2 usage error,
not a blob, or a newer format version; 3 (``recover``) another writer holds
the lock. ``--json`` prints one JSON object on stdout instead of text. A
progress line goes to stderr only when stderr is a terminal and the work
takes over a second.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from . import _check, _cli_transfer, _repair, _report
from ._cli_output import (
    Progress,
    conclusion_of,
    json_result,
    print_json,
    print_problems,
    say,
    size,
    verdict_of,
)
from ._findings import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Problem, Scan, describe
from ._locking import holder_text
from ._version import __version__

WIDTH = 100
_LABEL = {"error": "ERROR", "warning": "WARNING", "note": "note"}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would sys.exit(2); main() decides
        raise _UsageError(f"{self.format_usage()}{self.prog}: error: {message}")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def _parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("path", metavar="PATH", help="the blob directory")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p = _Parser(
        prog="tensorblob",
        description="Inspect, check and recover tensorblob blobs, and export or import their "
        "rows (see docs/cli.md).",
    )
    p.add_argument("--version", action="version", version=f"tensorblob {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    sub.add_parser(
        "info",
        parents=[common],
        help="layout, size, generation, journal and writer of a blob",
        description="Show what a blob holds and its state. Changes nothing.",
    )
    c = sub.add_parser(
        "check",
        parents=[common],
        help="verify a blob's structure (changes nothing)",
        description="Verify meta, manifest, journal, block files, references and leftovers. "
        "Changes nothing and takes no writer lock. Exit 0 clean, 1 problems found, "
        "2 usage error or not a blob.",
    )
    c.add_argument("--deep", action="store_true", help="also read every committed row")
    r = sub.add_parser(
        "recover",
        parents=[common],
        help="do a writer's recovery: replay, discard torn tail, delete leftovers, checkpoint",
        description="Take the writer lock and bring the blob to a clean checkpoint, as a "
        "writable open does, printing each action. Idempotent. Stops on damage that would "
        "drop committed data unless --salvage. Exit 0 clean now, 1 stopped or failed, "
        "2 usage error or not a blob, 3 another writer holds the lock.",
    )
    r.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    r.add_argument(
        "--timeout",
        type=_timeout,
        default=30.0,
        metavar="S",
        help="seconds to wait for the writer lock (default 30)",
    )
    r.add_argument(
        "--salvage",
        action="store_true",
        help="on damage, keep the longest consistent prefix and drop the rest (reported)",
    )
    _cli_transfer.add_parsers(sub, _timeout)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``tensorblob`` command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        if "--json" in argv:
            problem = Problem("error", "usage", str(exc).splitlines()[-1], "see --help")
            usage = json_result(EXIT_USAGE, "usage", [problem])
            print_json({"command": None, "path": None, **usage})
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    handler = {
        "info": _info,
        "check": _check_cmd,
        "recover": _recover,
        "export": _cli_transfer.run_export,
        "import": _cli_transfer.run_import,
        "copy": _cli_transfer.run_copy,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tensorblob check ... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PROBLEMS


# -- info ------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    with _check.scan(args.path) as sc:
        code, verdict = verdict_of(sc)
        facts = describe(sc) if sc.kind == "blob" else {}
    if code == EXIT_PROBLEMS and verdict != "damaged":
        code = EXIT_OK  # info's job is done; the status line says what is needed
    if args.json:
        result = json_result(code, verdict, sc.problems, sc.root)
        print_json({"command": "info", "path": sc.root, **result, "actions": [], "info": facts})
        return code
    if not facts:
        print_problems(sc.problems, sc.root)
        if sc.kind == "damaged":
            say(sys.stdout, f"status      {_status(sc, verdict)}", "", 12)
        return code
    out = sys.stdout
    meta = sc.meta
    rows = [
        (meta.noun if meta is not None else "blob", sc.root),
        ("format", f"version {facts['format_version']}"),
    ]
    if meta is not None and meta.db:
        rows += [
            (
                "" if i else "fields",
                f"{f.name}: {f.dtype_name} {_shape(f.shape)} ({_bytes(f.row_bytes)} per row)",
            )
            for i, f in enumerate(meta.fields)
        ]
        rows.append(("row", f"{_bytes(meta.row_bytes)}, all {len(meta.fields)} fields"))
    elif meta is not None:
        rows += [
            ("dtype", meta.dtype_name),
            ("row shape", f"{_shape(meta.shape)} ({_bytes(meta.row_bytes)} per row)"),
        ]
    if meta is not None:
        rows.append(
            ("block size", f"{meta.block_size} rows ({size(facts['block_bytes'])} per block)")
        )
    if facts.get("rows") is not None:
        rows.append(("rows", f"{facts['rows']} in {facts['blocks']} block(s)"))
    else:
        rows.append(("rows", "unknown: the committed state cannot be read"))
    files = f"{facts['block_files']} block file(s)"
    if facts["freed_blocks"]:
        files += f", {facts['freed_blocks']} of them freed and awaiting deletion"
    rows.append(
        (
            "on disk",
            f"{size(facts['bytes_on_disk'])} allocated, {size(facts['bytes_apparent'])} "
            f"in file sizes; {files}",
        )
    )
    if facts["generation"] is not None:
        rows.append(("generation", f"{facts['generation']} (the last checkpoint)"))
    j = sc.journal
    if not j.present:
        rows.append(("journal", "missing"))
    elif j.error:
        rows.append(("journal", f"{j.size} bytes, unreadable"))
    else:
        pending = f"{j.commits} transaction(s) committed since the checkpoint"
        if sc.relation == "stale":
            pending = "stale (an interrupted checkpoint); the manifest holds everything"
        rows.append(("journal", f"{j.size} bytes, {pending}"))
    if sc.writer_active:
        rows.append(("shutdown", "a writer has the blob open now"))
    elif facts["clean"] is True:
        rows.append(("shutdown", "clean (the last writer closed the blob)"))
    elif facts["clean"] is False:
        codes = {p.code for p in sc.problems}
        why = "the last writer did not close the blob"
        if "journal-stale" in codes:
            why = "a checkpoint was interrupted"
        elif "journal-torn" in codes:
            why = "the journal ends in torn bytes (a crash while appending)"
        rows.append(("shutdown", f"unclean: {why}"))
    lock = sc.lock
    if lock.held:
        rows.append(("writer", f"lock held by {holder_text(lock)}"))
    elif lock.text:
        rows.append(("writer", f"none (the lock is free; the last writer was {lock.text})"))
    else:
        rows.append(("writer", "none (the lock is free)"))
    rows.append(("status", _status(sc, verdict)))
    for key, value in rows:
        say(out, value, f"{key:<11} ", 12)
    return code


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _status(sc: Scan, verdict: str) -> str:
    path = shlex.quote(sc.root)
    if verdict == "clean":
        return "ok"
    if verdict == "needs-recover":
        return f"needs recovery: run `tensorblob recover {path}` (nothing committed will be lost)"
    if verdict == "attention":
        return f"ok, but has files that are not tensorblob's: see `tensorblob check {path}`"
    return f"DAMAGED: run `tensorblob check {path}` for what happened and what to do"


# -- check -------------------------------------------------------------------------


def _check_cmd(args: argparse.Namespace) -> int:
    progress = Progress("check --deep", quiet=args.json)
    try:
        sc, verifier, report = _report.run_check(args.path, args.deep, progress)
    finally:
        progress.close()
    code, verdict = report["exit_code"], report["verdict"]
    if args.json:
        print_json(report)
        return code
    print(f"check {sc.root}")
    if sc.kind == "blob":
        print("  " + _checked(sc))
    if verifier is not None:
        say(
            sys.stdout,
            f"deep: read {sc.rows_read} committed row(s) in {sc.blocks_read} block(s); data "
            f"checksums: {verifier.status()}",
            "  ",
            4,
        )
    print_problems(sc.problems, sc.root)
    say(sys.stdout, conclusion_of(sc, verdict))
    return code


def _checked(sc: Scan) -> str:
    parts = ["meta"]
    m, j = sc.manifest, sc.journal
    if m is not None:
        parts.append(f"manifest (generation {m.gen}, {m.length} rows)")
    if j.present and not j.error:
        parts.append(f"journal ({j.size} bytes, {j.commits} transaction(s))")
    if sc.loaded is not None:
        state = sc.loaded.state
        parts.append(f"{len(state.blocks)} referenced block(s) for {state.length} row(s)")
    parts.append(f"{len(sc.on_disk)} block file(s)")
    return "checked: " + ", ".join(parts)


# -- recover -------------------------------------------------------------------------


def _recover(args: argparse.Namespace) -> int:
    progress = Progress("recover", unit="step", quiet=args.json)
    try:
        out = _repair.recover(
            args.path,
            timeout=args.timeout,
            dry_run=args.dry_run,
            salvage=args.salvage,
            progress=progress,
        )
    finally:
        progress.close()
    if args.json:
        result = json_result(out.exit_code, out.verdict, out.problems, out.path)
        print_json(
            {
                "command": "recover",
                "path": out.path,
                **result,
                "actions": out.actions,
                **out.as_dict(),
            }
        )
        return out.exit_code
    head = "recover --dry-run" if args.dry_run else "recover"
    print(f"{head} {out.path}" + (" (--salvage)" if args.salvage else ""))
    shown = [p for p in out.problems if p.severity != "note" or out.exit_code]
    if out.exit_code or args.dry_run:
        print_problems(shown, out.path)
    elif out.problems:
        print_problems([p for p in out.problems if p.severity != "note"], out.path)
    if out.actions:
        print("would:" if args.dry_run else "done:")
        for action in out.actions:
            say(sys.stdout, action, "  - ", 4)
    say(sys.stdout, out.summary.replace("PATH", shlex.quote(out.path)))
    return out.exit_code
