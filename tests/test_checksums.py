"""Per-block data checksums: computed once per full block at checkpoint, verified on demand."""

from __future__ import annotations

import os

import torch

from tensorblob import TensorBlob, _txn
from tensorblob._blocks import BlockStore
from tensorblob._manifest import read_manifest
from tensorblob._meta import read_meta
from tensorblob._recovery import load, verify_checksums


def _state(path):
    meta = read_meta(path)
    return meta, load(path, meta).state


def _checkpointed_blob(path, monkeypatch, rows=10):
    monkeypatch.setattr(_txn, "CHECKPOINT_BYTES", 1)  # checkpoint after every commit
    with TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4) as b:
        for i in range(rows):
            b.write(torch.tensor([i, -i], dtype=torch.int32))


def test_full_blocks_get_a_checksum_at_checkpoint_and_partial_blocks_do_not(tmp_path, monkeypatch):
    path = str(tmp_path / "b")
    _checkpointed_blob(path, monkeypatch)
    meta = read_meta(path)
    st = read_manifest(path, meta.uuid, meta.block_size)
    assert st.blocks == [0, 1, 2]
    assert set(st.crc) == {0, 1}  # rows 8-9 sit in a partial block


def test_verify_finds_a_flipped_byte_in_a_full_block(tmp_path, monkeypatch):
    path = str(tmp_path / "b")
    _checkpointed_blob(path, monkeypatch)
    meta, st = _state(path)
    blocks = BlockStore(path, meta, writable=False, max_cached=4)
    assert verify_checksums(st, blocks) == (2, [])
    with open(blocks.path(1), "r+b") as f:
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 0x40]))
    blocks = BlockStore(path, meta, writable=False, max_cached=4)
    assert verify_checksums(st, blocks) == (2, [1])


def test_a_block_replaced_by_copy_on_write_loses_its_old_checksum(tmp_path, monkeypatch):
    path = str(tmp_path / "b")
    _checkpointed_blob(path, monkeypatch)
    with TensorBlob.open(path, "r+") as b:
        b.seek(1)
        b.write(torch.tensor([7, 7], dtype=torch.int32))  # copies block 0
    meta, st = _state(path)
    assert 0 not in st.blocks
    assert 0 not in st.crc
    assert not os.path.exists(BlockStore(path, meta, writable=False, max_cached=1).path(0))
    blocks = BlockStore(path, meta, writable=False, max_cached=4)
    checked, damaged = verify_checksums(st, blocks)
    assert damaged == []
    assert checked == len(st.crc)
