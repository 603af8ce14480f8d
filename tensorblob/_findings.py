"""What a scan of a blob finds: problems, the lock, the journal, the states, the drops.

Plain data, filled in by ``_check`` and ``_diagnose`` and read by ``_repair``
and ``_cli``. Each ``Problem`` says what happened (``message``) and what to
do (``fix``); its ``code`` is stable (docs/cli.md lists them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import _format, _recovery
from ._blockfiles import block_name
from ._locking import ReaderLease
from ._meta import Meta
from ._state import State

# What a live writer's session leaves by itself: only notes while it holds the lock.
_IN_FLIGHT = {"unclean", "journal-torn", "journal-stale", "stray-temp", "orphan-blocks"}


@dataclass
class Problem:
    """One finding. ``severity``: "error" (damage: recover stops unless ``--salvage``, or
    cannot repair at all), "warning" (recover repairs it without losing committed data, or
    a manual fix is needed), "note" (information; does not change the exit code)."""

    severity: str
    code: str
    message: str
    fix: str = ""
    file: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class LockInfo:
    exists: bool = False
    held: bool = False  # some process holds the writer lock right now
    text: str = ""  # what the lock file says: "pid N on HOST" of the last writer
    pid: int | None = None  # the holder's pid according to /proc/locks, if visible


@dataclass
class JournalScan:
    """The journal file as found: its header, the valid frames, and what follows them."""

    present: bool = False
    size: int = 0
    error: str = ""  # the header is unusable (damaged, or another blob's): nothing can be read
    foreign: bool = False
    gen: int = 0
    base: int = 0  # the manifest generation its records apply to (F7)
    salt: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each valid frame starts
    end: int = 0  # just past the last valid frame
    bad_index: int | None = None  # first record that passes its CRC but is invalid (F6)
    bad_reason: str = ""
    lost: list[dict[str, Any] | None] = field(default_factory=list)  # intact frames in the tail

    def offset(self, i: int) -> int:
        return self.offsets[i] if i < len(self.offsets) else self.end

    @property
    def commits(self) -> int:
        return sum(r["t"] in _format.COMMITS for r in self.records)


@dataclass
class Drops:
    """What ``recover --salvage`` drops to keep the longest consistent prefix."""

    rows: int = 0
    transactions: int = 0
    exact: bool = True  # False: an unreadable journal held an unknown number of transactions
    blocks: list[int] = field(default_factory=list)  # block ids of the dropped rows
    journal_bytes: int = 0
    lines: list[str] = field(default_factory=list)  # the same, in words

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "transactions": self.transactions,
            "exact": self.exact,
            "blocks": [block_name(b) for b in self.blocks],
            "journal_bytes": self.journal_bytes,
            "what": list(self.lines),
        }


@dataclass
class Scan:
    root: str
    kind: str = "blob"  # "blob" | "missing" | "not-a-blob" | "unsupported" | "damaged"
    meta: Meta | None = None
    version: int = 0
    problems: list[Problem] = field(default_factory=list)
    lock: LockInfo = field(default_factory=LockInfo)
    own_lock: bool = False  # scanned by recover, under the writer lock
    manifest: State | None = None  # the last checkpoint
    journal: JournalScan = field(default_factory=JournalScan)
    relation: str = ""  # "current" | "stale" | "newer": the journal's generations vs manifest's
    committed: _recovery.Loaded | None = None  # what readers load (even if blocks are bad)
    loaded: _recovery.Loaded | None = None  # the committed state, when recover can keep it all
    salvage: _recovery.Loaded | None = None  # the prefix --salvage keeps, when damage stops it
    drops: Drops = field(default_factory=Drops)
    unrepairable: bool = False  # damage recover cannot repair, not even with --salvage
    on_disk: dict[int, int] = field(default_factory=dict)  # block id -> file size
    unknown: list[str] = field(default_factory=list)  # names that are not tensorblob's
    temps: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    reclaimable: list[int] = field(default_factory=list)  # freed, present, no reader needs them
    freed_in_use: list[int] = field(default_factory=list)  # freed, present, a reader may need them
    blocks_dir: bool = True
    readers_file: bool = True
    bytes_on_disk: int = 0
    bytes_apparent: int = 0
    rows_read: int = 0
    blocks_read: int = 0
    lease: ReaderLease | None = None

    # -- derived ------------------------------------------------------------

    @property
    def state(self) -> State | None:
        """The state recover would checkpoint: the committed one, else the salvage prefix."""
        chosen = self.loaded or self.salvage
        return chosen.state if chosen is not None else None

    @property
    def writer_active(self) -> bool:
        return self.lock.held and not self.own_lock

    def add(self, severity: str, code: str, message: str, fix: str = "", file: str = "") -> None:
        if self.writer_active and code in _IN_FLIGHT and severity == "warning":
            severity = "note"
            message += " (a writer has the blob open right now, so this is expected)"
            fix = "nothing to do while the writer runs; if it dies, run `tensorblob recover`"
        self.problems.append(Problem(severity, code, message, fix, file))

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- small readers -------------------------------------------------------------


def rows_text(n: int) -> str:
    return f"{n} row{'s' if n != 1 else ''}"


def ids_text(bids: list[int], limit: int = 4) -> str:
    names = [block_name(b) for b in bids[:limit]]
    return ", ".join(names) + (f" and {len(bids) - limit} more" if len(bids) > limit else "")
