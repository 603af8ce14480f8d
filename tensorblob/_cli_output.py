"""What every ``tensorblob`` command prints: problems, verdicts, JSON, progress (docs/cli.md).

Shared by the metadata commands (``_cli``) and the transfer commands
(``_cli_transfer``). Pure Python; tqdm is imported only when a progress bar
is shown.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
import time
from typing import Any, TextIO

from ._findings import CODES, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Problem, Scan

WIDTH = 100
_LABEL = {"error": "ERROR", "warning": "WARNING", "note": "note"}


def print_json(obj: dict[str, Any]) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def json_result(code: int, verdict: str, problems: list[Problem], path: str = "") -> dict[str, Any]:
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


def say(out: TextIO, text: str, lead: str = "", indent: int = 0) -> None:
    out.write(
        textwrap.fill(
            text,
            WIDTH,
            initial_indent=lead,
            subsequent_indent=" " * (indent or len(lead)),
            break_on_hyphens=False,
            break_long_words=False,
        )
        + "\n"
    )


def print_problems(problems: list[Problem], path: str) -> None:
    quoted = shlex.quote(path)
    order = ("error", "warning", "note")
    for raw in sorted(problems, key=lambda p: order.index(p.severity)):
        p = _fill(raw, quoted)
        say(sys.stdout, f"{p.message}  [{p.code}]", f"{_LABEL[p.severity]:<8} ", 9)
        if p.fix:
            say(sys.stdout, p.fix, " " * 9 + "what to do: ", 9)


def verdict_of(sc: Scan) -> tuple[int, str]:
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


def conclusion_of(sc: Scan, verdict: str) -> str:
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
    """A progress bar on stderr (tqdm: done, rate, time left), shown once work has taken
    ``delay`` seconds; nothing when the stream is not a terminal or when ``quiet``."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        unit: str = "B",
        delay: float = 1.0,
        quiet: bool = False,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = not quiet and bool(isatty and isatty())
        self.label, self.unit, self.delay = label, unit, delay
        self.start = time.monotonic()
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.start < self.delay:
                return
            from tqdm import tqdm  # noqa: PLC0415 - only when a bar is shown

            self.bar = tqdm(
                total=total,
                desc=self.label,
                unit=self.unit,
                unit_scale=self.unit == "B",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
