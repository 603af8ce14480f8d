"""The maintenance CLI against a catalogue of damage: info, check, recover --dry-run, recover.

Each case damages a real blob the way an incident would, then runs the commands as an
operator would, in that order, in-process through ``tensorblob._cli.main``. It checks the
exit codes, that the words say what happened and what to do, that info, check and
--dry-run change no file (bytes and mtimes, and no disk step through ``_durable``), and that
no committed row is lost, except under --salvage, whose report lists what was dropped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness
import pytest
import torch

import tensorblob
from tensorblob import TensorBlob, _durable, _format
from tensorblob._cli import main
from tensorblob._cli_output import Progress
from tensorblob._journal import scan_journal
from tensorblob._meta import read_meta

B = 4
ROOT = Path(__file__).resolve().parent.parent


def rows(start: int, stop: int) -> torch.Tensor:
    """Rows ``start..stop-1``; row i holds 3i, 3i+1, 3i+2."""
    return torch.arange(start * 3, stop * 3, dtype=torch.float32).reshape(-1, 3)


def make_blob(path: str) -> torch.Tensor:
    """13 rows: 8 in the manifest (generation 2), 5 in two journal transactions."""
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as blob:
        blob.write(rows(0, 8))
    with open(os.path.join(path, "journal"), "ab") as f:
        # A torn byte (zeros would be padding, F5): the next writer recovers,
        # which checkpoints the 8 rows.
        f.write(b"\x01")
    with TensorBlob.open(path, "a") as blob:
        blob.write(rows(8, 11))
    with TensorBlob.open(path, "a") as blob:
        blob.write(rows(11, 13))
    return rows(0, 13)


def content(path: str) -> torch.Tensor:
    with TensorBlob.open(path, "r") as blob:
        return blob[:]


def snapshot(root: str) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (or ``root`` itself): bytes and mtime."""
    if os.path.isfile(root):
        return {"": (Path(root).read_bytes(), os.stat(root).st_mtime_ns)}
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            p = os.path.join(dirpath, name)
            data = Path(p).read_bytes() if os.path.isfile(p) else b"<dir>"
            out[os.path.relpath(p, root)] = (data, os.stat(p).st_mtime_ns)
    return out


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_opens: list[tuple[str, Any, Any]] | None = None  # recording, while not None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opens is not None and event == "open":
        path, mode, flags = args
        writes = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writes or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            _opens.append((str(path), mode, flags))


sys.addaudithook(_audit)  # audit hooks cannot be removed: inert unless _opens is a list


@contextmanager
def no_disk_change(root: str, *, read_only: bool = True) -> Iterator[None]:
    """Fail if any disk step goes through _durable, or any file's bytes or mtime change.

    With ``read_only``, also fail if anything under ``root`` is opened for writing (what
    makes info and check work without write permission, which root cannot test).
    """
    global _opens  # noqa: PLW0603 - the audit hook reads it
    steps: list[tuple[str, str]] = []

    def hook(step: str, path: str, _extent: Any) -> None:
        steps.append((step, path))

    before = snapshot(root) if os.path.exists(root) else None
    old = _durable.set_fault_hook(hook)
    _opens = []
    try:
        yield
        opened = [o for o in _opens if o[0].startswith(root)]
    finally:
        _opens = None
        _durable.set_fault_hook(old)
    assert steps == []
    assert (snapshot(root) if os.path.exists(root) else None) == before
    if read_only:
        assert opened == []


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str]:
        """Text mode: the exit code and everything printed, on one line per wrapped paragraph."""
        code = main(list(args))
        got = self.capsys.readouterr()
        return code, " ".join((got.out + got.err).split())

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        code = main([*args, "--json"])
        got = self.capsys.readouterr()
        data = json.loads(got.out)
        assert data["exit_code"] == code
        assert data["ok"] is (code == 0)
        assert data["command"] == args[0]
        for p in data["problems"]:
            assert set(p) == {"severity", "code", "message", "fix", "file"}
        return code, data

    def inspect(self, path: str) -> dict[str, Any]:
        """info, check, check --deep and recover --dry-run (text and JSON): nothing changes."""
        got: dict[str, Any] = {}
        with no_disk_change(path):
            for name, args in (
                ("info", ("info", path)),
                ("check", ("check", path)),
                ("deep", ("check", "--deep", path)),
                ("dry", ("recover", "--dry-run", path)),
            ):
                got[name] = self(*args)
                got[name + "_json"] = self.json(*args)
                assert got[name][0] == got[name + "_json"][0]
        return got


def codes(data: dict[str, Any]) -> set[str]:
    return {p["code"] for p in data["problems"]}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def blob(tmp_path: Path) -> tuple[str, torch.Tensor]:
    path = str(tmp_path / "blob")
    return path, make_blob(path)


def recovered_twice(run: Run, path: str, *extra: str) -> str:
    """recover (exit 0), then recover again: nothing to do, and no file changes."""
    code, out = run("recover", *extra, path)
    assert code == 0, out
    with no_disk_change(path, read_only=False):
        code2, again = run("recover", path)
        assert code2 == 0
        assert "nothing to do" in again
        code3, check = run("check", path)
    assert code3 == 0, check
    assert "result: clean" in check
    return out


# -- a healthy blob -----------------------------------------------------------------


def test_fixture_blob_has_a_checkpoint_and_journal_transactions(blob: Any) -> None:
    path, data = blob
    meta = read_meta(path)
    j = scan_journal(path, meta.uuid)
    assert j.commits == 2
    assert torch.equal(content(path), data)


def test_clean_blob_is_reported_clean_and_recover_touches_nothing(run: Run, blob: Any) -> None:
    path, data = blob
    got = run.inspect(path)
    code, info = got["info"]
    assert code == 0
    for words in (
        "float32",
        "(3,)",
        "13 in 4 block(s)",
        "generation 2 (the last checkpoint)",
        "2 transaction(s)",
    ):
        assert words in info
    assert "clean (the last writer closed the blob)" in info
    assert f"the last writer was pid {os.getpid()} on {socket.gethostname()}" in info
    assert got["check"][0] == 0
    assert "result: clean" in got["check"][1]
    # The blob was closed: every block's rows are durable, and each has its crc32.
    assert "data checksums: 4 block(s) verified against their crc32" in got["deep"][1]
    assert got["deep_json"][1]["rows_read"] == 13
    assert got["deep_json"][1]["data_checksums"] == {
        "verified": 4,
        "mismatched": 0,
        "without_checksum": 0,
        "rows_without_checksum": 0,
    }
    assert got["dry"][0] == 0
    assert "nothing to do" in got["dry"][1]
    facts = got["info_json"][1]["info"]
    assert facts["rows"] == 13
    assert facts["blocks"] == 4
    assert facts["dtype"] == "float32"
    assert facts["shape"] == [3]
    assert facts["block_size"] == B
    assert facts["generation"] == 2
    assert facts["pending_commits"] == 2
    assert facts["format_version"] == 2
    assert facts["clean"] is True
    assert facts["writer"]["held"] is False
    with no_disk_change(path, read_only=False):  # no checkpoint, not even the lock's text
        code, out = run("recover", path)
    assert code == 0
    assert "nothing to do" in out
    assert torch.equal(content(path), data)


# -- crashes: recover repairs them without losing anything committed ------------------


def test_torn_journal_tail_is_a_warning_and_recover_discards_it(run: Run, blob: Any) -> None:
    path, data = blob
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(b"\x07garbage")
    got = run.inspect(path)
    assert got["info"][0] == 0
    assert "unclean: the journal ends in torn bytes" in got["info"][1]
    code, check = got["check"]
    assert code == 1
    assert "the last writer crashed; recover will discard 8 torn bytes" in check
    assert "nothing committed will be lost" in check
    assert got["check_json"][1]["verdict"] == "needs-recover"
    [torn] = got["check_json"][1]["problems"]
    assert (torn["severity"], torn["code"]) == ("warning", "journal-torn")
    assert got["dry"][0] == 0
    assert "discard a torn journal tail of 8 bytes" in got["dry"][1]
    assert "nothing was changed" in got["dry"][1]
    out = recovered_twice(run, path)
    assert "discarded a torn journal tail of 8 bytes" in out
    assert "nothing committed was lost" in out
    assert torch.equal(content(path), data)


def test_crashed_writer_needs_recovery_and_recover_keeps_every_commit(run: Run, blob: Any) -> None:
    path, data = blob
    child = f"""
import os, torch
from tensorblob import TensorBlob
blob = TensorBlob.open({path!r}, "a")
blob.write(torch.arange(39, 45, dtype=torch.float32).reshape(2, 3))  # committed: rows 13, 14
with blob.transaction():
    blob.write(torch.zeros(6, 3))  # new blocks, never committed
    os._exit(0)  # the writer dies inside the transaction
"""
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    committed = torch.cat([data, rows(13, 15)])
    assert torch.equal(content(path), committed)  # a reader needs no recovery
    got = run.inspect(path)
    code, check = got["check"]
    assert code == 1
    assert "the last writer did not close the blob (it crashed or was killed)" in check
    assert "2 block file(s) are in no committed state" in check
    assert "result: needs recovery" in check
    assert codes(got["check_json"][1]) == {"unclean", "orphan-blocks"}
    assert "needs recovery" in got["info"][1]
    assert "delete 2 block(s) of uncommitted transactions" in got["dry"][1]
    out = recovered_twice(run, path)
    assert "replayed 3 committed transaction(s)" in out
    assert "deleted 2 block(s) of uncommitted transactions" in out
    assert torch.equal(content(path), committed)


def test_an_unreadable_lock_file_is_reported_not_a_traceback(run: Run, blob: Any) -> None:
    """The lock file's owner line only informs: check and info read the blob without it
    (an outside audit got EIO reading it; a directory in its place fails the same read)."""
    path, data = blob
    os.remove(os.path.join(path, "lock"))
    os.mkdir(os.path.join(path, "lock"))
    got = run.inspect(path)
    assert got["check"][0] == 0, got["check"][1]
    assert got["info_json"][1]["info"]["writer"]["lock_file_text"] in ("", None)
    code, out = run("recover", path)
    assert code == 1
    assert "lock-failed" in out
    assert torch.equal(content(path), data)


def test_stale_lock_file_is_not_held_and_recover_proceeds(run: Run, blob: Any) -> None:
    path, data = blob
    Path(path, "lock").write_text("pid 99999 on otherhost")
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(b"\x01")  # and the writer crashed
    got = run.inspect(path)
    assert (
        "writer none (the lock is free; the last writer was pid 99999 on otherhost)"
        in (got["info"][1])
    )
    assert got["info_json"][1]["info"]["writer"] == {
        "held": False,
        "holder": None,
        "pid": None,
        "lock_file_text": "pid 99999 on otherhost",
    }
    assert "writer-active" not in codes(got["check_json"][1])
    recovered_twice(run, path, "--timeout", "0")
    assert torch.equal(content(path), data)


def test_leftover_temp_files_are_removed_by_recover(run: Run, blob: Any) -> None:
    path, data = blob
    Path(path, "manifest.tmp").write_bytes(b"half a manif")
    Path(path, "journal.tmp").write_bytes(b"")
    got = run.inspect(path)
    code, check = got["check"]
    assert code == 1
    assert "manifest.tmp is left over from an interrupted checkpoint" in check
    assert "journal.tmp is left over" in check
    assert "it removes it" in check
    assert "remove stray temporary file manifest.tmp" in got["dry"][1]
    out = recovered_twice(run, path)
    assert "removed stray temporary file journal.tmp" in out
    assert not os.path.exists(os.path.join(path, "manifest.tmp"))
    assert torch.equal(content(path), data)


def test_interrupted_checkpoint_leaves_a_stale_journal_that_recover_replaces(
    run: Run, blob: Any
) -> None:
    path, data = blob
    old_journal = Path(path, "journal").read_bytes()
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(b"\x01")
    assert run("recover", path)[0] == 0  # manifest generation 3 holds all 13 rows
    # As if the checkpoint had died between its two renames: the old journal is back.
    Path(path, "journal").write_bytes(old_journal)
    Path(path, "journal.tmp").write_bytes(b"\x00" * 10)
    got = run.inspect(path)
    check = got["check"][1]
    assert "the journal follows generation 2 but the manifest is generation 3" in check
    assert "a checkpoint was interrupted" in check
    assert "the manifest already holds every committed transaction" in check
    assert codes(got["check_json"][1]) == {"journal-stale", "stray-temp"}
    assert "unclean: a checkpoint was interrupted" in got["info"][1]
    recovered_twice(run, path)
    assert torch.equal(content(path), data)


def test_missing_readers_file_is_recreated(run: Run, blob: Any) -> None:
    path, data = blob
    os.unlink(os.path.join(path, "readers"))
    got = run.inspect(path)
    assert got["check"][0] == 1
    assert "readers cannot open the blob" in got["check"][1]
    out = recovered_twice(run, path)
    assert "recreated the empty readers file" in out
    assert torch.equal(content(path), data)


def test_commits_before_a_reboot_are_dropped_by_the_boot_rule(run: Run, blob: Any) -> None:
    """The last session's sync='normal' commit was never flushed, then the machine restarted."""
    path, data = blob
    j = scan_journal(path, read_meta(path).uuid)
    assert [r["t"] for r in j.records[-3:]] == ["o", "a", "s"]  # open, append, close
    # The commit inherits the boot id of its session's open record.
    session = [dict(j.records[-3], b="a-boot-before-the-power-cut"), j.records[-2]]
    raw = Path(path, "journal").read_bytes()[: j.offsets[-3]]  # drop the close marker
    frames = b"".join(_format.encode_frame(j.salt, r) for r in session)
    Path(path, "journal").write_bytes(raw + frames)
    assert torch.equal(content(path), data[:11])  # readers already apply the boot rule
    got = run.inspect(path)
    check = got["check"][1]
    assert "1 transaction(s) committed with sync='normal' after the last durable point" in check
    assert "their rows may never have reached the disk" in check
    assert codes(got["check_json"][1]) == {"boot-discard", "unclean", "orphan-blocks"}
    assert "discard 1 transaction(s) committed with sync='normal'" in got["dry"][1]
    out = recovered_twice(run, path)
    assert "discarded 1 transaction(s)" in out
    assert torch.equal(content(path), data[:11])


def test_freed_blocks_kept_for_a_reader_are_deleted_by_recover_once_it_closes(
    run: Run, blob: Any
) -> None:
    path, data = blob
    reader = TensorBlob.open(path, "r")
    with TensorBlob.open(path, "r+") as writer:
        writer.write(rows(100, 101))  # row 0, copy-on-write: block 0 is freed
    # The writer could not delete block 0: the reader's snapshot still uses it.
    assert os.path.exists(os.path.join(path, "blocks", "0000000000000000"))
    code, check = run("check", path)
    assert code == 0
    assert "1 freed block file(s) are kept while open readers may still use them" in check
    with no_disk_change(path, read_only=False):
        assert "nothing to do" in run("recover", path)[1]  # it is the reader's
    assert torch.equal(reader[:], data)
    reader.close()
    code, check = run("check", path)
    assert code == 0
    assert "1 freed block file(s) wait to be deleted; no reader needs them now" in check
    assert "delete 1 freed block(s)" in run("recover", "--dry-run", path)[1]
    out = recovered_twice(run, path)
    assert "deleted 1 freed block(s)" in out
    assert not os.path.exists(os.path.join(path, "blocks", "0000000000000000"))
    assert torch.equal(content(path), torch.cat([rows(100, 101), data[1:]]))


# -- files that are not tensorblob's: reported, left alone -------------------------------


def test_unknown_files_are_reported_and_left_alone(run: Run, blob: Any) -> None:
    path, data = blob
    Path(path, "notes.txt").write_text("mine")
    Path(path, "blocks", "junk").write_text("mine")
    Path(path, "blocks", "000000000000000A").write_text("not a canonical block name")
    got = run.inspect(path)
    code, check = got["check"]
    assert code == 1
    assert got["check_json"][1]["verdict"] == "attention"
    for name in ("notes.txt", "blocks/junk", "blocks/000000000000000A"):
        assert f"{name} is not a tensorblob file" in check
    assert "move it out of the blob directory by hand" in check
    assert "recover leaves it alone" in check
    with no_disk_change(path, read_only=False):
        code, out = run("recover", path)
    assert code == 0
    assert "nothing to do" in out
    assert "left alone: 3 file(s)" in out
    assert torch.equal(content(path), data)


# -- damage that drops committed data: recover stops, --salvage drops and says so ----------


def _stops_then_salvages(run: Run, path: str, got: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """recover refuses (exit 1, nothing changed); --dry-run --salvage plans; --salvage does."""
    assert got["info"][0] == 1
    assert "DAMAGED" in got["info"][1]
    assert got["check"][0] == 1
    assert "--salvage" in got["check"][1]
    assert got["check_json"][1]["verdict"] == "damaged"
    assert got["dry"][0] == 1
    assert "recover stopped" in got["dry"][1]
    with no_disk_change(path):
        code, out = run("recover", path)
        assert code == 1
        assert "recover stopped: repairing this blob means dropping committed data" in out
        assert "Nothing was changed" in out
        code, plan = run.json("recover", "--dry-run", "--salvage", path)
        assert code == 0
        assert plan["verdict"] == "would-salvage"
        assert plan["changed"] is False
    code, done = run.json("recover", "--salvage", path)
    assert code == 0
    assert done["verdict"] == "salvaged"
    assert done["changed"] is True
    assert done["dropped"] == plan["dropped"]
    assert done["dropped"]["what"]
    recovered_twice(run, path)
    return plan["actions"][0], done


def test_garbage_journal_header_is_salvaged_back_to_the_checkpoint(run: Run, blob: Any) -> None:
    path, data = blob
    with open(os.path.join(path, "journal"), "r+b") as f:
        f.write(b"\xa5" * 20)
    got = run.inspect(path)
    check = got["check"][1]
    assert "the journal is damaged: it does not start with TBLBJRNL (wrong magic)" in check
    assert "restore this blob's `journal` from a backup" in check
    assert "keeps the manifest's state (generation 2, 8 rows)" in check
    assert codes(got["check_json"][1]) == {"journal-damaged"}
    first, done = _stops_then_salvages(run, path, got)
    assert first.startswith("drop: the journal (")
    assert "every transaction committed since checkpoint generation 2" in first
    assert done["dropped"]["exact"] is False
    assert done["rows"] == 8
    assert torch.equal(content(path), data[:8])


def test_journal_of_another_blob_is_reported_as_foreign(
    run: Run, blob: Any, tmp_path: Path
) -> None:
    path, data = blob
    other = str(tmp_path / "other")
    make_blob(other)
    shutil.copy(os.path.join(other, "journal"), os.path.join(path, "journal"))
    got = run.inspect(path)
    assert "the journal belongs to another blob" in got["check"][1]
    assert "copied in from another blob" in got["check"][1]
    assert codes(got["check_json"][1]) == {"journal-foreign"}
    size = os.path.getsize(os.path.join(path, "journal"))
    first, done = _stops_then_salvages(run, path, got)
    assert first.startswith(f"drop: the journal ({size} bytes)")  # its size, though not ours
    assert done["dropped"]["journal_bytes"] == size
    assert torch.equal(content(path), data[:8])
    assert torch.equal(content(other), data)  # the other blob is untouched


def test_missing_journal_is_salvaged_back_to_the_checkpoint(run: Run, blob: Any) -> None:
    path, data = blob
    os.unlink(os.path.join(path, "journal"))
    got = run.inspect(path)
    assert "the journal is missing" in got["check"][1]
    _stops_then_salvages(run, path, got)
    assert torch.equal(content(path), data[:8])


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_damaged_block_file_is_salvaged_by_truncating_before_it(
    run: Run, blob: Any, damage: str
) -> None:
    path, data = blob
    block = os.path.join(path, "blocks", "0000000000000001")  # rows 4 to 7
    if damage == "missing":
        os.unlink(block)
        said = "block 0000000000000001 (slot 1, rows 4 to 7) is missing"
    else:
        os.truncate(block, 10)
        said = "block 0000000000000001 (slot 1, rows 4 to 7) has 10 bytes, expected 48"
    got = run.inspect(path)
    check = got["check"][1]
    assert said in check
    assert "restore blocks/0000000000000001 from a backup" in check
    assert "truncates the blob to 4 rows" in check
    assert codes(got["check_json"][1]) >= {f"block-{'missing' if damage == 'missing' else 'size'}"}
    first, done = _stops_then_salvages(run, path, got)
    assert first.startswith("drop: 9 rows (rows 4 to 12) in 3 block(s) from slot 1 on")
    assert done["dropped"]["rows"] == 9
    assert done["dropped"]["exact"] is True
    assert done["dropped"]["blocks"][0] == "0000000000000001"
    assert done["rows"] == 4
    assert torch.equal(content(path), data[:4])


def test_invalid_commit_record_in_the_middle_is_salvaged_before_it(run: Run, blob: Any) -> None:
    path, data = blob
    j = scan_journal(path, read_meta(path).uuid)
    bad = {"t": "c", "b": _durable.boot_id(), "d": False, "n": 99, "k": 1}
    bad |= {"s": [[5, 1]], "h": [], "f": [], "w": [], "x": 9, "q": len(j.records) + 1}
    close = {"t": "s", "b": _durable.boot_id(), "c": True, "q": len(j.records) + 2}
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(_format.encode_frame(j.salt, bad) + _format.encode_frame(j.salt, close))
    got = run.inspect(path)
    check = got["check"][1]
    assert f"journal record q={len(j.records) + 1}" in check
    assert "passes its checksum but is invalid (commit q=7 sets slot 5 >= 1)" in check
    assert "the journal is damaged, not torn" in check
    assert "keeps the 13 rows committed before it and drops 1 transaction(s)" in check
    _first, done = _stops_then_salvages(run, path, got)
    assert done["dropped"]["transactions"] == 1
    assert torch.equal(content(path), data)


def test_journal_damaged_in_the_middle_is_not_mistaken_for_a_torn_tail(run: Run, blob: Any) -> None:
    path, data = blob
    j = scan_journal(path, read_meta(path).uuid)
    first_commit = next(i for i, r in enumerate(j.records) if r["t"] in ("a", "c"))
    raw = bytearray(Path(path, "journal").read_bytes())
    raw[j.offsets[first_commit] + 12] ^= 0xFF  # a flipped bit in the first transaction
    Path(path, "journal").write_bytes(bytes(raw))
    got = run.inspect(path)
    check = got["check"][1]
    assert "intact record(s) follow the damage (1 committed transaction(s))" in check
    assert "readers and writers refuse the blob rather than drop them" in check
    assert "copy the blob somewhere safe first" in check
    assert "journal-torn" not in codes(got["check_json"][1])
    first, done = _stops_then_salvages(run, path, got)
    assert "the last dropped transaction had left it at 13 rows" in first
    assert "the damaged record itself may have been a transaction too" in first
    assert done["dropped"]["rows"] == 5
    assert torch.equal(content(path), data[:8])


def test_readers_and_writers_refuse_a_journal_damaged_before_intact_records(
    blob: Any, tmp_path: Path
) -> None:
    """G5: never drop committed transactions silently. A flipped byte before intact
    records is damage: every open refuses the blob and changes nothing (it opened as
    far as the damage, and a writer's open then dropped the rest for good)."""
    path, data = blob
    j = scan_journal(path, read_meta(path).uuid)
    first_commit = next(i for i, r in enumerate(j.records) if r["t"] in ("a", "c"))
    raw = bytearray(Path(path, "journal").read_bytes())
    raw[j.offsets[first_commit] + 12] ^= 0xFF
    Path(path, "journal").write_bytes(bytes(raw))
    for boot in (None, "another boot"):  # sync records follow the damage: in any boot
        with no_disk_change(path, read_only=False), _maybe_boot(boot):
            for mode in ("r", "a", "r+", "w"):
                with pytest.raises(tensorblob.CorruptBlobError, match="intact record") as e:
                    TensorBlob.open(path, mode)
                assert e.value.reason == "lost-frames"

    # A session killed before its close (no sync record): damage to its first append,
    # with its second one intact after it.
    live = str(tmp_path / "live")
    # sync="full": the intact frame is a durable marker (d), but nothing follows it,
    # so nothing shows that its flush ever ran (a power cut may come first).
    for sync in ("normal", "full"):
        shutil.rmtree(path)
        make_blob(path)
        with TensorBlob.open(path, "a", sync=sync) as w:
            w.write(rows(13, 14))
            w.write(rows(14, 15))
            shutil.rmtree(live, ignore_errors=True)
            shutil.copytree(path, live)  # the files as a kill -9 would leave them
        j = scan_journal(live, read_meta(live).uuid)
        appends = [i for i, r in enumerate(j.records) if r["t"] == "a"]
        raw = bytearray(Path(live, "journal").read_bytes())
        raw[j.offsets[appends[-2]] + 10] ^= 0xFF
        Path(live, "journal").write_bytes(bytes(raw))
        with pytest.raises(tensorblob.CorruptBlobError, match="intact record"):
            TensorBlob.open(live)  # this boot: no power cut since, so nothing was torn
        with harness.fake_boot("another boot"):
            # After a power cut the same bytes are a torn tail: the page cache may
            # have written the later frame back and not the earlier one. The boot
            # rule drops both, as it drops every record after the last durable marker.
            with TensorBlob.open(live) as r:
                assert torch.equal(r[:], data)
            with TensorBlob.open(live, "a") as w:
                assert len(w) == 13


@contextmanager
def _maybe_boot(boot: str | None) -> Iterator[None]:
    if boot is None:
        yield
    else:
        with harness.fake_boot(boot):
            yield


def test_older_manifest_copied_back_is_salvaged_to_that_manifest(run: Run, tmp_path: Path) -> None:
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as blob:
        blob.write(rows(0, 5))
    Path(path, "journal").write_bytes(Path(path, "journal").read_bytes() + b"\x01")
    with TensorBlob.open(path, "a") as blob:  # recovery checkpoints generation 2: 5 rows
        old = Path(path, "manifest").read_bytes()
        blob.write(rows(5, 6))
    Path(path, "journal").write_bytes(Path(path, "journal").read_bytes() + b"\x01")
    with TensorBlob.open(path, "a") as blob:  # generation 3: 6 rows
        blob.write(rows(6, 7))
    Path(path, "manifest").write_bytes(old)  # someone restores an old manifest
    got = run.inspect(path)
    check = got["check"][1]
    assert "the journal follows checkpoint generation 3 but the manifest is generation 2" in check
    assert "put back the newest manifest if you have it" in check
    first, done = _stops_then_salvages(run, path, got)
    assert "with its 1 transaction(s); the last of them left the blob at 7 rows" in first
    assert done["generation"] == 4  # after every generation seen
    assert torch.equal(content(path), rows(0, 5))


def test_deep_check_finds_block_bytes_that_changed_on_disk(run: Run, blob: Any) -> None:
    path, _data = blob
    with open(os.path.join(path, "blocks", "0000000000000001"), "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0x10]))  # one flipped bit in row 5
    got = run.inspect(path)
    assert got["check"][0] == 0  # structure is fine: only --deep reads rows
    code, deep = got["deep"]
    assert code == 1
    assert "block 0000000000000001 (rows 4 to 7): its bytes do not match the crc32" in deep
    assert "restore blocks/0000000000000001 from a backup" in deep
    assert got["deep_json"][1]["data_checksums"]["mismatched"] == 1
    assert codes(got["deep_json"][1]) == {"checksum"}


# -- damage recover cannot repair: it stops, even with --salvage ---------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_manifest_is_reported_and_never_repaired(run: Run, blob: Any, damage: str) -> None:
    path, _data = blob
    manifest = Path(path, "manifest")
    if damage == "truncated":
        manifest.write_bytes(manifest.read_bytes()[:40])
        said = "manifest is damaged: body is truncated"
    elif damage == "garbage":
        manifest.write_bytes(b"\x13" * 90)
        said = "manifest is damaged: it does not start with TBLBMANI (wrong magic)"
    else:
        manifest.unlink()
        said = "manifest is missing: the committed state (row count and block list) is gone"
    got = run.inspect(path)
    assert got["info"][0] == 1
    assert "rows unknown: the committed state cannot be read" in got["info"][1]
    code, check = got["check"]
    assert code == 1
    assert said in check
    assert "restore `manifest` from a backup of this blob" in check
    assert "recover cannot rebuild it" in check
    assert "recover cannot repair this (not even with --salvage)" in check
    with no_disk_change(path):
        for args in (("recover", path), ("recover", "--salvage", path)):
            code, out = run(*args)
            assert code == 1
            assert "recover cannot repair this blob, not even with --salvage" in out
            assert "Nothing was changed" in out
    assert run.json("recover", "--salvage", path)[1]["verdict"] == "unrepairable"


@pytest.mark.parametrize("damage", ["damaged", "missing"])
def test_damaged_meta_cannot_be_repaired(run: Run, blob: Any, damage: str) -> None:
    path, _data = blob
    meta = Path(path, "meta")
    if damage == "damaged":
        meta.write_bytes(meta.read_bytes()[:-1] + b"?")
        said = "meta is damaged: checksum mismatch"
    else:
        meta.unlink()
        said = "meta is missing, but manifest and journal are tensorblob files"
    with no_disk_change(path):
        for args in (("info", path), ("check", path), ("recover", "--salvage", path)):
            code, out = run(*args)
            assert code == 1
            assert said in out
            assert "restore `meta` from a backup of this blob" in out
    assert run.json("check", path)[1]["verdict"] == "damaged"


def test_meta_of_a_newer_format_version_is_refused_by_every_command(run: Run, blob: Any) -> None:
    path, _data = blob
    with open(os.path.join(path, "meta"), "r+b") as f:
        f.seek(8)
        newer = _format.FORMAT_VERSION + 1
        f.write(newer.to_bytes(2, "little"))  # the CRC covers only the body: still valid
    with no_disk_change(path):
        for args in (("info", path), ("check", path), ("recover", path)):
            code, out = run(*args)
            assert code == 2
            assert f"format version {newer} is newer than this library reads ({newer - 1})" in out
            assert "upgrade tensorblob" in out
            assert run.json(*args)[1]["verdict"] == "unsupported-version"


@pytest.mark.parametrize("kind", ["file", "empty-dir", "other-dir", "nothing"])
def test_a_path_that_is_not_a_blob_is_a_usage_error(run: Run, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("hello")
        said = "is not a tensorblob: it is a file, and a blob is a directory"
    elif kind == "empty-dir":
        path.mkdir()
        said = "is an empty directory, not a tensorblob"
    elif kind == "other-dir":
        path.mkdir()
        (path / "photo.jpg").write_text("x")
        said = "is not a tensorblob (it has no meta file); it holds: photo.jpg"
    else:
        said = "no such file or directory"
    with no_disk_change(str(path)):
        for args in (("info",), ("check",), ("recover", "--dry-run"), ("recover",)):
            code, out = run(*args, str(path))
            assert code == 2, out
            assert said in out
            assert run.json(*args, str(path))[1]["verdict"] == "not-a-blob"
    assert os.path.exists(path) is (kind != "nothing")
    if kind in ("file", "other-dir"):  # copy reads its source as the library's readers do
        dst = str(tmp_path / "copy")
        code, out = run("copy", str(path), dst)
        assert code == 2, out
        assert "not-a-blob" in out
        with pytest.raises(tensorblob.NotABlobError):
            tensorblob.copy_blob(str(path), dst)
        assert not os.path.exists(dst)


def test_info_says_nothing_of_a_lock_file_left_holding_zeros(run: Run, blob: Any) -> None:
    """The owner line is never fsynced: after a crash the lock file may hold zeros."""
    path, _ = blob
    Path(path, "lock").write_bytes(bytes(14))
    code, out = run("info", path)
    assert code == 0, out
    assert "\0" not in out
    assert "writer none (the lock is free) status" in out  # (run() joins the lines)


# -- a live writer -----------------------------------------------------------------------


def test_recover_counts_the_freed_block_files_it_deletes(run: Run, tmp_path: Path) -> None:
    """Blocks freed twice over: the writer's close deletes those no reader holds, the
    rest wait for the reader. recover then deletes those, and says how many it did."""
    path = str(tmp_path / "freed")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=B) as blob:
        blob.write(rows(0, 40))  # 10 blocks
    reader = TensorBlob.open(path, "r")
    try:
        with TensorBlob.open(path, "r+") as blob:
            blob.write(rows(100, 140))  # copies of the 10: the originals wait for the reader
            blob.seek(0)
            blob.write(rows(200, 240))  # the copies are freed too, and deleted at close
        blocks = os.path.join(path, "blocks")
        assert len(os.listdir(blocks)) == 20
    finally:
        reader.close()
    _, plan = run.json("recover", "--dry-run", path)
    assert "delete 10 freed block(s)" in plan["actions"]
    _, done = run.json("recover", path)
    assert "deleted 10 freed block(s)" in done["actions"]
    assert len(os.listdir(blocks)) == 10
    assert torch.equal(content(path), rows(200, 240))


def test_blob_held_by_a_live_writer_is_checked_but_not_recovered(run: Run, blob: Any) -> None:
    path, data = blob
    writer = TensorBlob.open(path, "a")
    try:
        writer.write(rows(13, 14))
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        got = run.inspect(path)
        assert f"lock held by {holder}" in got["info"][1]
        assert "a writer has the blob open now" in got["info"][1]
        assert got["info_json"][1]["info"]["writer"]["held"] is True
        code, check = got["check"]
        assert code == 0, check
        assert "the writer has not closed the blob yet" in check
        assert "crashed" not in check
        # Row 13 is committed but not durable yet: no checksum covers it.
        assert got["deep_json"][1]["data_checksums"]["rows_without_checksum"] == 1
        assert "1 committed row(s) not durable yet, so not covered (only read)" in got["deep"][1]
        assert f"a writer has the blob open right now: {holder}" in check
        assert "result: clean (a writer has it open right now)" in check
        assert got["dry"][0] == 3
        assert "recover would wait for it to close" in got["dry"][1]
        with no_disk_change(path, read_only=False):
            code, out = run("recover", "--timeout", "0.2", path)
        assert code == 3
        assert f"another writer has the blob open ({holder})" in out
        assert "gave up waiting for the writer lock after 0.2 s. Nothing was changed" in out
        assert "close that writer" in out
        assert run.json("recover", "--timeout", "0", path)[1]["verdict"] == "busy"
    finally:
        writer.close()
    code, out = run("recover", path)
    assert code == 0
    assert "nothing to do" in out
    assert torch.equal(content(path), torch.cat([data, rows(13, 14)]))


_BUSY_WRITER = """
import sys, torch
from tensorblob import TensorBlob
blob = TensorBlob.open(sys.argv[1], "a", dtype="float32", shape=3, block_size=4)
i = 0
while True:
    blob.write(torch.full((4, 3), float(i)))  # a new block in every commit
    i += 1
    if i % 7 == 0:  # free blocks, and delete them at the durable point
        blob.truncate(len(blob) - 6)
        blob.flush()
    if i == 20:
        print("ready", flush=True)
"""


def test_check_while_a_busy_writer_commits_finds_no_damage(run: Run, tmp_path: Path) -> None:
    """A writer that adds a block in every commit and deletes freed ones: check, check
    --deep and info, run meanwhile, see a committed state whose blocks all exist."""
    path = str(tmp_path / "busy")
    writer = subprocess.Popen(
        [sys.executable, "-c", _BUSY_WRITER, path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        for k in range(30):
            args = ("check", "--deep", path) if k % 3 == 0 else ("check", path)
            code, got = run.json(*args)
            assert code == 0, got["problems"]
            assert got["verdict"] == "clean"
            assert "writer-active" in {p["code"] for p in got["problems"]}
            assert run.json("info", path)[0] == 0
    finally:
        writer.kill()
        writer.communicate()
    code, out = run("recover", path)
    assert code == 0, out
    assert run.json("check", "--deep", path)[0] == 0


_KILLED_WRITER = """
import sys, time, torch
from tensorblob import TensorBlob
blob = TensorBlob.open(sys.argv[1], "a", dtype="float32", shape=3, block_size=4)
if sys.argv[2] == "write":
    blob.write(torch.zeros(5, 3))
print("ready", flush=True)
time.sleep(600)
"""


def test_check_after_a_killed_writer_says_what_is_to_be_replayed(run: Run, tmp_path: Path) -> None:
    """SIGKILL a writer that committed 5 rows, then one that recovered and committed nothing."""
    path = str(tmp_path / "killed")
    said = {
        "write": "1 committed transaction(s) since the last checkpoint are to be replayed",
        "nothing": "it committed nothing since the last checkpoint, so nothing is to be replayed",
    }
    for what, words in said.items():
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, path, what], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        writer.kill()
        writer.communicate()
        code, out = run("check", path)
        assert code == 1
        assert "[unclean]" in out
        assert words in out
    assert torch.equal(content(path), torch.zeros(5, 3))


# -- the command line itself ---------------------------------------------------------------


def test_json_output_has_the_documented_fields(run: Run, blob: Any) -> None:
    path, _data = blob
    common = {"command", "path", "ok", "exit_code", "verdict", "problems", "actions"}
    assert set(run.json("info", path)[1]) == common | {"info"}
    assert set(run.json("check", path)[1]) == common | {"deep"}
    deep = common | {"deep", "rows_read", "blocks_read", "data_checksums"}
    assert set(run.json("check", "--deep", path)[1]) == deep
    extra = {"dry_run", "salvage", "changed", "dropped", "rows", "generation"}
    _, rec = run.json("recover", path)
    assert set(rec) == common | extra
    assert set(rec["dropped"]) == {
        "rows",
        "transactions",
        "exact",
        "blocks",
        "journal_bytes",
        "what",
    }
    assert rec["path"] == os.path.abspath(path)


def test_usage_errors_exit_2(run: Run, blob: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _data = blob
    assert main([]) == 2
    assert main(["check"]) == 2
    assert main(["recover", "--timeout", "-1", path]) == 2
    assert main(["recover", "--timeout", "soon", path]) == 2
    assert main(["frobnicate", path]) == 2
    err = capsys.readouterr().err
    assert "usage: tensorblob" in err
    assert "must be 0 or more seconds" in err
    assert main(["check", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 2
    assert out["verdict"] == "usage"
    assert main(["--help"]) == 0
    assert "info" in capsys.readouterr().out


def test_console_script_runs_as_a_real_process(blob: Any) -> None:
    path, data = blob
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(b"\x01\x02")
    exe = shutil.which("tensorblob")
    assert exe is not None, "pip install -e . installs the tensorblob console script"
    got = subprocess.run(
        [exe, "recover", path, "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert got.returncode == 0, got.stderr
    assert got.stderr == ""  # no progress line when stderr is not a terminal
    out = json.loads(got.stdout)
    assert out["verdict"] == "recovered"
    assert "discarded a torn journal tail of 2 bytes" in out["actions"]
    assert torch.equal(content(path), data)


def test_scripts_recover_is_an_executable_wrapper_of_tensorblob_recover(
    blob: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = blob
    script = ROOT / "scripts" / "recover"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    with open(os.path.join(path, "journal"), "ab") as f:
        f.write(b"\x01")
    monkeypatch.setattr(sys, "argv", [str(script), path, "--timeout", "5"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 0
    assert "recovered: the blob is clean with 13 rows" in capsys.readouterr().out
    assert torch.equal(content(path), data)


def test_python_dash_m_tensorblob_runs_the_cli(
    blob: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _data = blob
    monkeypatch.setattr(sys, "argv", ["tensorblob", "check", path])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("tensorblob", run_name="__main__")
    assert exit_.value.code == 0
    assert "result: clean" in capsys.readouterr().out


def test_progress_bar_only_on_a_terminal_and_never_under_json() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe, quiet = Tty(), io.StringIO(), Tty()
    for stream, is_quiet in ((tty, False), (pipe, False), (quiet, True)):
        bar = Progress("check --deep", stream, delay=0, quiet=is_quiet)
        bar(0, 10 << 20)
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        bar(5 << 20, 10 << 20)
        bar.close()
    shown = tty.getvalue()
    assert "check --deep" in shown
    assert "50%" in shown  # tqdm: the fraction, the amount and the rate
    assert "MB" in shown
    assert pipe.getvalue() == ""
    assert quiet.getvalue() == ""
    slow = Tty()
    bar = Progress("recover", slow, unit="step", delay=60)  # work under the delay shows nothing
    bar(1, 2)
    bar.close()
    assert slow.getvalue() == ""


def _as_nobody_without_write_permission(path: str, argv: list[list[str]]) -> list[int]:
    """Run CLI commands in a child that cannot write the blob: no write bits, and not root.

    Root ignores permission bits, so when the tests run as root the child
    drops to the unprivileged uid 65534 before running the commands.
    """
    paths = [os.path.join(d, n) for d, ds, fs in os.walk(path) for n in fs + ds] + [path]
    modes = {p: os.stat(p).st_mode for p in paths}
    read, write = os.pipe()
    try:
        for p in paths:
            os.chmod(p, (modes[p] & ~0o222) | 0o444 | (0o111 if os.path.isdir(p) else 0))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.close(read)
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                codes = []
                for args in argv:
                    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                        codes.append(main(args))
                os.write(write, " ".join(map(str, codes)).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as f:
            return [int(c) for c in f.read().split()]
    finally:
        for p in reversed(paths):
            os.chmod(p, modes[p])


def test_check_and_info_work_without_write_permission() -> None:
    import tempfile  # noqa: PLC0415 - only this test needs a world-traversable directory

    top = tempfile.mkdtemp(prefix="tb-noperm-")  # under /tmp: pytest's tmp_path is 0700
    try:
        os.chmod(top, 0o755)
        path = os.path.join(top, "blob")
        with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4) as b:
            b.write(torch.arange(30, dtype=torch.float32).reshape(10, 3))
        codes = _as_nobody_without_write_permission(
            path, [["check", "--deep", path], ["info", path], ["recover", "--dry-run", path]]
        )
        assert codes == [0, 0, 0]
    finally:
        shutil.rmtree(top)


def test_the_check_function_returns_the_report_the_command_prints(run: Run, blob: Any) -> None:
    path, _data = blob
    for deep in (False, True):
        args = ("check", "--deep", path) if deep else ("check", path)
        assert tensorblob.check(path, deep=deep) == run.json(*args)[1]
    # A damaged block: the same problems, found without raising.
    block = os.path.join(path, "blocks", sorted(os.listdir(os.path.join(path, "blocks")))[0])
    with open(block, "r+b") as f:
        f.write(b"\xff\xff")
    report = tensorblob.check(path, deep=True)
    assert report == run.json("check", "--deep", path)[1]
    assert (report["ok"], report["verdict"]) == (False, "damaged")
    assert [p["code"] for p in report["problems"]] == ["checksum"]
    with pytest.raises(tensorblob.BlobTypeError):
        tensorblob.check(123)  # type: ignore[arg-type]
