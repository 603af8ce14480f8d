"""What a scan of a blob finds: problems, the lock, the journal, the states, the drops.

Plain data, filled in by ``_check`` and ``_diagnose`` and read by ``_repair``
and ``_cli``. Each ``Problem`` says what happened (``message``) and what to
do (``fix``); its ``code`` is stable (docs/cli.md lists them). ``describe``
gives the facts ``tensorblob info`` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import _snapshot
from ._blockfiles import block_name
from ._journal import JournalScan
from ._locking import LockInfo, ReaderLease, holder_text
from ._meta import Meta
from ._state import State

# What a live writer's session leaves by itself: only notes while it holds the lock.
_IN_FLIGHT = {"unclean", "journal-torn", "journal-stale", "stray-temp", "orphan-blocks"}


# Exit codes of every command (docs/cli.md), one table.
EXIT_OK = 0  # all is well (recover: the blob is clean now; dry run: recover would succeed)
EXIT_PROBLEMS = 1  # problems found, damage, or recover stopped or failed
EXIT_USAGE = 2  # usage error, not a blob, a newer format version: nothing was changed
EXIT_BUSY = 3  # another writer holds the lock

# Every problem code (docs/cli.md lists them), one table: True for the warnings
# that recover repairs without losing committed data.
CODES: dict[str, bool] = {
    "unclean": True,
    "journal-torn": True,
    "journal-stale": True,
    "boot-discard": True,
    "stray-temp": True,
    "orphan-blocks": True,
    "readers-missing": True,
    "blocks-dir-missing": True,
    "journal-damaged": False,
    "journal-foreign": False,
    "journal-missing": False,
    "manifest-older": False,
    "journal-bad-record": False,
    "journal-lost-frames": False,
    "manifest-damaged": False,
    "manifest-missing": False,
    "manifest-foreign": False,
    "block-missing": False,
    "block-size": False,
    "io-error": False,
    "checksum": False,
    "unknown-file": False,
    "writer-active": False,
    "unsupported-version": False,
    "meta-damaged": False,
    "meta-missing": False,
    "not-a-blob": False,
    "freed-blocks": False,
    "freed-in-use": False,
    "lock-missing": False,
    "load-failed": False,
    "changed": False,
    "writer-busy": False,
    "lock-failed": False,
    "recover-failed": False,
    "not-found": False,
    "usage": False,
    # export and import
    "unsupported-format": False,
    "exists": False,
    "damaged": False,
    "damaged-input": False,
    "missing-dependency": False,
    "busy": False,
    "failed": False,
}


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

    def __post_init__(self) -> None:
        if self.code not in CODES:  # pragma: no cover - a typo in the code, caught by tests
            raise ValueError(f"unknown problem code {self.code!r}: add it to _findings.CODES")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


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
    committed: _snapshot.Loaded | None = None  # what readers load (even if blocks are bad)
    loaded: _snapshot.Loaded | None = None  # the committed state, when recover can keep it all
    salvage: _snapshot.Loaded | None = None  # the prefix --salvage keeps, when damage stops it
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


def describe(sc: Scan) -> dict[str, Any]:
    """The facts ``tensorblob info`` prints (whatever could be read)."""
    meta, m, j = sc.meta, sc.manifest, sc.journal
    out: dict[str, Any] = {"format_version": sc.version or None}
    if meta is not None:
        out["kind"] = meta.kind
        if meta.db:
            out["fields"] = [
                {
                    "name": f.name,
                    "dtype": f.dtype_name,
                    "shape": list(f.shape),
                    "row_bytes": f.row_bytes,
                    "offset": f.offset,
                }
                for f in meta.fields
            ]
        else:
            out |= {"dtype": meta.dtype_name, "shape": list(meta.shape)}
        out |= {
            "block_size": meta.block_size,
            "row_bytes": meta.row_bytes,
            "block_bytes": meta.block_bytes,
        }
    committed = sc.committed
    state = committed.state if committed is not None else None
    out |= {
        "rows": state.length if state is not None else None,
        "blocks": len(state.blocks) if state is not None else None,
        "freed_blocks": len(set(sc.reclaimable + sc.freed_in_use) - set(sc.drops.blocks)),
        "block_files": len(sc.on_disk),
        "bytes_on_disk": sc.bytes_on_disk,
        "bytes_apparent": sc.bytes_apparent,
        "generation": m.gen if m is not None else None,
        "journal_bytes": j.size if j.present else None,
        "journal_generation": j.gen if j.present and not j.error else None,
        "pending_commits": j.commits if sc.relation == "current" else 0,
        "clean": committed.clean if committed is not None else None,
        "writer": {
            "held": sc.lock.held,
            "holder": holder_text(sc.lock) if sc.lock.held else None,
            "pid": sc.lock.pid,
            "lock_file_text": sc.lock.text,
        },
    }
    return out
