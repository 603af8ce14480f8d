"""Journal rotation: an append-only session under sync="normal" passes the journal
bound without a checkpoint (docs/design.md, item 4; docs/format.md, F7).

Real files and real child processes: a writer killed after rotating, a
reader whose snapshot is older than the rotation, a power cut simulated by a
new boot id.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import harness
import pytest
import torch

from tensorblob import (
    CorruptBlobError,
    TensorBlob,
    _durability,
    _durable,
    _format,
    _manifest,
    _state,
)
from tensorblob._meta import read_meta

B = 4  # rows per block
NEW = {"dtype": "float32", "shape": [3], "block_size": B}


def _journal_header(path: str) -> tuple[int, dict[str, Any]]:
    with open(os.path.join(path, "journal"), "rb") as f:
        data = f.read()
    header, _ = _format.decode_header(_format.MAGIC_JOURNAL, data, "journal")
    return struct.unpack_from("<H", data, 8)[0], header


def _manifest_of(path: str) -> _state.State:
    meta = read_meta(path)
    return _manifest.read_manifest(path, meta.uuid, meta.block_size)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "blob"


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_durability, "CHECKPOINT_RECORDS", 6)


def _append_rows(blob: TensorBlob, data: torch.Tensor) -> None:
    for row in data:
        blob.write(row)


def test_an_append_only_session_rotates_instead_of_checkpointing(
    path: Any, small_bound: None
) -> None:
    data = harness.rows(25, 1)
    with TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B) as blob:
        gen0 = _manifest_of(path).gen
        _append_rows(blob, data)
        # The bound passed five times: the manifest is untouched, the journal rotated.
        m = _manifest_of(path)
        assert (m.gen, m.length) == (gen0, 0)
        version, header = _journal_header(path)
        assert version == 3
        assert header["base"] == gen0
        assert header["gen"] > gen0
        with TensorBlob.open(path, "r") as reader:  # a reader sees every committed row
            assert torch.equal(reader[:], data)
    assert torch.equal(harness.read_all(path), data)


def test_rows_past_rotate_bytes_are_checkpointed(
    path: Any, small_bound: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_durability, "ROTATE_BYTES", 10 * 12)  # ten rows of 3 float32
    data = harness.rows(25, 2)
    with TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B) as blob:
        _append_rows(blob, data)
        m = _manifest_of(path)
        assert m.length > 10  # a checkpoint made the rows durable
    assert torch.equal(harness.read_all(path), data)


def test_a_session_after_a_durable_point_checkpoints(path: Any, small_bound: None) -> None:
    data = harness.rows(12, 3)
    with TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B) as blob:
        _append_rows(blob, data[:3])
        blob.flush()  # the durable state is no longer the manifest's
        _append_rows(blob, data[3:])
        assert _manifest_of(path).length >= 3  # the first bound after it checkpointed


def test_sync_full_never_rotates(path: Any, small_bound: None) -> None:
    data = harness.rows(12, 4)
    with TensorBlob.open(
        path, "w", dtype=torch.float32, shape=(3,), block_size=B, sync="full"
    ) as blob:
        _append_rows(blob, data)
        assert _manifest_of(path).length > 0
        version, header = _journal_header(path)
        assert "base" not in header  # checkpointed, never rotated
        assert version == _format.LOG_VERSION  # a sync="full" writer's journal (F6 ``r``)


def _killed_after_rotation(path: str, work: str) -> harness.Run:
    """A child appends 15 rows one by one, rotating the journal, and is killed at close.

    A journal bound of 200 bytes rotates it every few records; 15 rows of 12
    bytes stay below ROTATE_BYTES (also 200), so no checkpoint happens.
    """
    ops = [["checkpoint_every", 200], ["open", "w", "normal", NEW]]
    ops += [["write", 1, 100 + i] for i in range(15)]
    clean = harness.run_child(path + ".clean", [*ops, ["close"]], 0, work)  # the same steps
    renames = [p for s, p, _ in clean.log if s == "rename" and p.endswith("journal")]
    assert len(renames) >= 2, "the journal did not rotate"
    assert not [p for s, p, _ in clean.log if s == "rename" and p.endswith("manifest")][1:]
    # Killed just before the close appends its close marker: nothing durable since open.
    marker = [i for i, (s, _, _) in enumerate(clean.log) if s == "append"][-1]
    return harness.run_child(path, [*ops, ["close"]], marker + 1, work)


WANT = [harness.rows(1, 100 + i) for i in range(15)]


def test_a_writer_killed_after_rotating_keeps_its_rows_in_the_same_boot(tmp_path: Path) -> None:
    path, work = str(tmp_path / "blob"), str(tmp_path / "work")
    os.mkdir(work)
    run = _killed_after_rotation(path, work)
    assert run.exitcode != 0
    assert (run.acks, run.durable) == (16, 0)
    assert _journal_header(path)[0] == 3  # it died over a rotated journal
    want = torch.cat(WANT)
    assert torch.equal(harness.read_all(path), want)  # a reader changes nothing
    with TensorBlob.open(path, "a") as blob:  # the writer recovers
        assert torch.equal(blob[:], want)
    assert torch.equal(harness.read_all(path), want)


def test_a_power_cut_after_rotating_goes_back_to_the_manifest(tmp_path: Path) -> None:
    path, work = str(tmp_path / "blob"), str(tmp_path / "work")
    os.mkdir(work)
    _killed_after_rotation(path, work)
    with harness.fake_boot("another-boot"):
        assert harness.read_all(path).shape == (0, 3)  # the manifest's state: nothing flushed
        with TensorBlob.open(path, "a") as blob:
            assert len(blob) == 0
            blob.write(harness.rows(2, 7))
        assert torch.equal(harness.read_all(path), harness.rows(2, 7))


def test_a_reader_older_than_a_rotation_keeps_its_blocks(path: Any, small_bound: None) -> None:
    """Blocks a carried record names were born in an older journal: a later writer
    that frees them must keep them for a reader whose snapshot predates the rotation."""
    data = harness.rows(10, 5)
    blob = TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B)
    _append_rows(blob, data[:3])  # block 0; the journal holds 5 records
    reader = TensorBlob.open(path, "r")  # its snapshot: 3 rows, before any rotation
    try:
        _append_rows(blob, data[3:])  # passes the bound: the journal rotates
        blob.close()  # a close marker on the rotated journal, no checkpoint
        assert _journal_header(path)[0] == 3
        assert _manifest_of(path).length == 0
        with TensorBlob.open(path, "r+") as writer:  # replays the carried record
            writer.truncate(0)  # frees every block
            writer.flush()  # deletes the freed blocks no open snapshot needs
        assert torch.equal(reader[:], data[:3])
    finally:
        reader.close()


def test_check_and_info_read_a_rotated_journal(path: Any, small_bound: None) -> None:
    data = harness.rows(10, 6)
    with TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B) as blob:
        _append_rows(blob, data)
    assert _journal_header(path)[0] == 3
    for cmd in ("check", "info"):
        out = subprocess.run(
            [sys.executable, "-m", "tensorblob", cmd, str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    info = subprocess.run(
        [sys.executable, "-m", "tensorblob", "info", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)["info"]["format_version"] == 3  # the rotated journal's
    assert torch.equal(harness.read_all(path), data)


def test_a_manifest_newer_than_the_rotated_journals_base_is_damage(
    path: Any, small_bound: None
) -> None:
    with TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B) as blob:
        _append_rows(blob, harness.rows(10, 8))
    _, header = _journal_header(path)
    m = _manifest_of(path)
    m.gen = header["gen"]  # a manifest of the journal's own generation: never written so
    _durable.write_atomic(os.path.join(path, "manifest"), _manifest.encode_manifest(m, B))
    before = harness.snapshot_files(str(path))
    with pytest.raises(CorruptBlobError, match="the journal may have been replaced"):
        TensorBlob.open(path, "r")
    assert harness.snapshot_files(str(path)) == before


def test_a_journal_header_whose_base_is_past_its_generation_is_damage(path: Any) -> None:
    TensorBlob.open(path, "w", dtype=torch.float32, shape=(3,), block_size=B).close()
    uuid = read_meta(path).uuid
    body = _format.pack({"uuid": uuid, "gen": 1, "salt": 5, "base": 2})
    head = struct.pack("<8sHHII", _format.MAGIC_JOURNAL, 3, 0, len(body), zlib.crc32(body))
    with open(os.path.join(path, "journal"), "wb") as f:
        f.write(head + body)
    before = harness.snapshot_files(str(path))
    with pytest.raises(CorruptBlobError, match="bad base generation"):
        TensorBlob.open(path, "r")
    assert harness.snapshot_files(str(path)) == before
