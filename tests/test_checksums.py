"""Per-block data checksums: every block's rows are covered once durable, verified on demand."""

from __future__ import annotations

import os
import zlib

import torch

from tensorblob import TensorBlob, _durability
from tensorblob._blocks import BlockStore
from tensorblob._manifest import read_manifest
from tensorblob._meta import read_meta
from tensorblob._recovery import verify_checksums
from tensorblob._snapshot import load


def _state(path):
    meta = read_meta(path)
    return meta, load(path, meta).state


def _crc(values: list[int]) -> int:
    return zlib.crc32(torch.tensor(values, dtype=torch.int32).numpy().tobytes())


def _rows(i: int) -> list[int]:
    return [i, -i]


def _checkpointed_blob(path, monkeypatch, rows=10):
    monkeypatch.setattr(_durability, "CHECKPOINT_BYTES", 1)  # checkpoint at every transaction
    with TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4) as b:
        for i in range(rows):
            b.write(torch.tensor(_rows(i), dtype=torch.int32))


def _expected(first: int, n: int) -> tuple[int, tuple[int]]:
    """A blob's checksum of ``n`` rows: one crc, of its one field."""
    return n, (_crc([v for i in range(first, first + n) for v in _rows(i)]),)


def test_a_checkpoint_records_a_checksum_of_every_blocks_rows(tmp_path, monkeypatch):
    path = str(tmp_path / "b")
    _checkpointed_blob(path, monkeypatch)
    meta = read_meta(path)
    st = read_manifest(path, meta.uuid, meta.block_size)
    assert st.blocks == [0, 1, 2]
    # Full blocks and the partial last one (rows 8-9) alike.
    assert st.sums == {0: _expected(0, 4), 1: _expected(4, 4), 2: _expected(8, 2)}


def test_close_without_a_checkpoint_records_checksums_in_the_journal(tmp_path):
    path = str(tmp_path / "b")
    with TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4) as b:
        for i in range(6):
            b.write(torch.tensor(_rows(i), dtype=torch.int32))
    meta, st = _state(path)
    assert read_manifest(path, meta.uuid, meta.block_size).length == 0  # no checkpoint ran
    assert st.sums == {0: _expected(0, 4), 1: _expected(4, 2)}
    with TensorBlob.open(path, "a") as b:  # a later session extends the partial block's sum
        b.write(torch.tensor(_rows(6), dtype=torch.int32))
    assert _state(path)[1].sums[1] == _expected(4, 3)


def test_sync_full_commits_carry_the_checksums_of_their_rows(tmp_path):
    path = str(tmp_path / "b")
    b = TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4, sync="full")
    for i in range(5):
        b.write(torch.tensor(_rows(i), dtype=torch.int32))
    # Not closed: the commits themselves are the durable markers.
    _, st = _state(path)
    assert st.sums == {0: _expected(0, 4), 1: _expected(4, 1)}
    b.close()


def test_verify_finds_a_flipped_byte_in_any_block(tmp_path, monkeypatch):
    path = str(tmp_path / "b")
    _checkpointed_blob(path, monkeypatch)
    meta, st = _state(path)
    blocks = BlockStore(path, meta, writable=False, max_cached=4)
    assert verify_checksums(st, blocks) == (3, [])
    for bid in (1, 2):  # a full block, then the partial one
        with open(blocks.path(bid), "r+b") as f:
            f.seek(5)
            byte = f.read(1)
            f.seek(5)
            f.write(bytes([byte[0] ^ 0x40]))
    assert verify_checksums(st, blocks) == (3, [1, 2])


def test_a_block_replaced_by_copy_on_write_loses_its_old_checksum(tmp_path, monkeypatch):
    path = str(tmp_path / "b")
    _checkpointed_blob(path, monkeypatch)
    with TensorBlob.open(path, "r+") as b:
        b.seek(1)
        b.write(torch.tensor([7, 7], dtype=torch.int32))  # copies block 0
    meta, st = _state(path)
    assert 0 not in st.blocks
    assert 0 not in st.sums
    assert not os.path.exists(BlockStore(path, meta, writable=False, max_cached=1).path(0))
    new = st.blocks[0]
    assert st.sums[new] == (4, (_crc([0, 0, 7, 7, 2, -2, 3, -3]),))
    checked, damaged = verify_checksums(st, BlockStore(path, meta, writable=False, max_cached=4))
    assert (checked, damaged) == (3, [])
