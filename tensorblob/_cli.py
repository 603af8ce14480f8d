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
import json
import os
import shlex
import sys
import textwrap
import time
from typing import Any, TextIO

from . import __version__, _check, _cli_transfer, _deep, _repair
from ._findings import CODES, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Problem, Scan
from ._locking import holder_text

_WIDTH = 100
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
            _print_json({"command": None, "path": None, **_result(EXIT_USAGE, "usage", [problem])})
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    handler = {
        "info": _info,
        "check": _check_cmd,
        "recover": _recover,
        "export": _cli_transfer.run_export,
        "import": _cli_transfer.run_import,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tensorblob check ... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PROBLEMS


# -- shared output -----------------------------------------------------------------


def _print_json(obj: dict[str, Any]) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _result(code: int, verdict: str, problems: list[Problem], path: str = "") -> dict[str, Any]:
    quoted = shlex.quote(path) if path else "PATH"
    return {
        "ok": code == EXIT_OK,
        "exit_code": code,
        "verdict": verdict,
        "problems": [_fill(p, quoted).as_dict() for p in problems],
    }


def _fill(p: Problem, quoted: str) -> Problem:
    return Problem(
        p.severity, p.code, p.message.replace("PATH", quoted), p.fix.replace("PATH", quoted), p.file
    )


def _say(out: TextIO, text: str, lead: str = "", indent: int = 0) -> None:
    out.write(
        textwrap.fill(
            text,
            _WIDTH,
            initial_indent=lead,
            subsequent_indent=" " * (indent or len(lead)),
            break_on_hyphens=False,
            break_long_words=False,
        )
        + "\n"
    )


def _print_problems(problems: list[Problem], path: str) -> None:
    quoted = shlex.quote(path)
    order = ("error", "warning", "note")
    for raw in sorted(problems, key=lambda p: order.index(p.severity)):
        p = _fill(raw, quoted)
        _say(sys.stdout, f"{p.message}  [{p.code}]", f"{_LABEL[p.severity]:<8} ", 9)
        if p.fix:
            _say(sys.stdout, p.fix, " " * 9 + "what to do: ", 9)


def _verdict(sc: Scan) -> tuple[int, str]:
    if sc.kind in ("missing", "not-a-blob"):
        return EXIT_USAGE, "not-a-blob"
    if sc.kind == "unsupported":
        return EXIT_USAGE, "unsupported-version"
    if sc.count("error"):
        return EXIT_PROBLEMS, "damaged"
    warnings = [p for p in sc.problems if p.severity == "warning"]
    if any(CODES[p.code] for p in warnings):
        return EXIT_PROBLEMS, "needs-recover"
    if warnings:
        return EXIT_PROBLEMS, "attention"
    return EXIT_OK, "clean"


def _conclusion(sc: Scan, verdict: str) -> str:
    path = shlex.quote(sc.root)
    if verdict == "not-a-blob":
        return "result: not a tensorblob; nothing was checked or changed"
    if verdict == "unsupported-version":
        return "result: written by a newer tensorblob; nothing was checked or changed"
    if verdict == "damaged":
        if sc.unrepairable:
            return (
                "result: DAMAGED. recover cannot repair this (not even with --salvage): restore "
                "the files named above from a backup. Do not open the blob for writing"
            )
        if sc.salvage is not None:
            return (
                "result: DAMAGED. Readers and writers fail on the damage. Restore the damaged "
                f"files from a backup if you can; otherwise `tensorblob recover --salvage {path}` "
                "keeps the longest consistent prefix and would: " + "; ".join(sc.drops.lines)
            )
        return "result: DAMAGED (see the errors above)"
    if verdict == "needs-recover":
        return (
            f"result: needs recovery: run `tensorblob recover {path}` (or open it for writing); "
            "nothing committed will be lost"
        )
    if verdict == "attention":
        return "result: the blob is sound, but needs the manual fixes above"
    if sc.writer_active:
        return "result: clean (a writer has it open right now)"
    return "result: clean"


class Progress:
    """A ``\\r``-updated progress line on a terminal, shown once work has taken a second."""

    def __init__(self, label: str, stream: TextIO | None = None, delay: float = 1.0) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.label = label
        self.start = time.monotonic()
        self.delay = delay
        self.last = 0.0
        self.shown = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.delay or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        line = f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}%"
        self.shown = len(line)
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
            self.shown = 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# -- info ------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    with _check.scan(args.path) as sc:
        code, verdict = _verdict(sc)
        facts = _check.describe(sc) if sc.kind == "blob" else {}
    if code == EXIT_PROBLEMS and verdict != "damaged":
        code = EXIT_OK  # info's job is done; the status line says what is needed
    if args.json:
        result = _result(code, verdict, sc.problems, sc.root)
        _print_json({"command": "info", "path": sc.root, **result, "actions": [], "info": facts})
        return code
    if not facts:
        _print_problems(sc.problems, sc.root)
        if sc.kind == "damaged":
            _say(sys.stdout, f"status      {_status(sc, verdict)}", "", 12)
        return code
    out = sys.stdout
    rows = [("blob", sc.root), ("format", f"version {facts['format_version']}")]
    meta = sc.meta
    if meta is not None:
        shape = "(" + ", ".join(map(str, meta.shape)) + ("," if len(meta.shape) == 1 else "") + ")"
        rows += [
            ("dtype", meta.dtype_name),
            ("row shape", f"{shape} ({meta.row_bytes} bytes per row)"),
            ("block size", f"{meta.block_size} rows ({_size(facts['block_bytes'])} per block)"),
        ]
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
            f"{_size(facts['bytes_on_disk'])} allocated, {_size(facts['bytes_apparent'])} "
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
        _say(out, value, f"{key:<11} ", 12)
    return code


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
    progress = Progress("check --deep")
    verifier = None
    with _check.scan(args.path) as sc:
        if args.deep and sc.kind == "blob":
            try:
                verifier = _deep.deep_read(sc, progress)
            finally:
                progress.close()
    code, verdict = _verdict(sc)
    deep: dict[str, Any] = {}
    if verifier is not None:
        deep = {
            "rows_read": sc.rows_read,
            "blocks_read": sc.blocks_read,
            "data_checksums": verifier.summary(),
        }
    if args.json:
        result = _result(code, verdict, sc.problems, sc.root)
        _print_json(
            {
                "command": "check",
                "path": sc.root,
                **result,
                "actions": [],
                "deep": args.deep,
                **deep,
            }
        )
        return code
    print(f"check {sc.root}")
    if sc.kind == "blob":
        print("  " + _checked(sc))
    if verifier is not None:
        _say(
            sys.stdout,
            f"deep: read {sc.rows_read} committed row(s) in {sc.blocks_read} block(s); data "
            f"checksums: {verifier.status()}",
            "  ",
            4,
        )
    _print_problems(sc.problems, sc.root)
    _say(sys.stdout, _conclusion(sc, verdict))
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
    progress = Progress("recover")
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
        result = _result(out.exit_code, out.verdict, out.problems, out.path)
        _print_json(
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
        _print_problems(shown, out.path)
    elif out.problems:
        _print_problems([p for p in out.problems if p.severity != "note"], out.path)
    if out.actions:
        print("would:" if args.dry_run else "done:")
        for action in out.actions:
            _say(sys.stdout, action, "  - ", 4)
    _say(sys.stdout, out.summary.replace("PATH", shlex.quote(out.path)))
    return out.exit_code
