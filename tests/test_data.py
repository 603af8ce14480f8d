"""tensorblob.data in one process: pickled snapshots, one-gather batches, the sampler, BlobLoader.

The multi-rank tests (real torch.distributed) are in tests/test_ddp.py.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tensorblob import SnapshotGoneError, TensorBlob

B = 4


def make(path: str, n: int, block_size: int = B) -> None:
    """A blob of ``n`` int64 scalar rows whose values are their indices."""
    with TensorBlob.open(path, "w", dtype="int64", shape=(), block_size=block_size) as w:
        w.write(torch.arange(n))


# -- a pickled reader never switches snapshot ----------------------------------------------


def test_a_pickled_reader_reads_its_snapshot_while_the_original_is_open(tmp_path):
    path = str(tmp_path / "blob")
    make(path, 10)
    with TensorBlob.open(path, "r") as reader:
        data = pickle.dumps(reader)
        with TensorBlob.open(path, "r+") as w:
            w.write(torch.full((10,), 7))  # copy-on-write: frees every block of the snapshot
            w.flush()
        with pickle.loads(data) as copy:
            assert copy[:].tolist() == list(range(10))


def test_a_pickled_reader_whose_blocks_were_freed_raises_instead_of_reading_newer_rows(tmp_path):
    path = str(tmp_path / "blob")
    make(path, 10)
    with TensorBlob.open(path, "r") as reader:
        data = pickle.dumps(reader)
    with TensorBlob.open(path, "r+") as w:
        w.write(torch.full((10,), 7))
        w.flush()  # no reader holds the old snapshot: its blocks are deleted
    with pytest.raises(SnapshotGoneError, match="snapshot of 10 rows is gone") as info:
        pickle.loads(data)
    assert isinstance(info.value, FileNotFoundError)
    assert path in str(info.value)
    assert len(os.listdir(os.path.join(path, "blocks"))) == 3  # only the new blocks


def test_a_pickled_reader_of_a_blob_created_again_raises(tmp_path):
    path = str(tmp_path / "blob")
    make(path, 10)
    with TensorBlob.open(path, "r") as reader:
        data = pickle.dumps(reader)
    TensorBlob.unlink(path)
    make(path, 10)  # the same block ids, other rows
    with pytest.raises(SnapshotGoneError, match="deleted and created again"):
        pickle.loads(data)


def test_a_pickled_reader_of_a_deleted_blob_raises(tmp_path):
    path = str(tmp_path / "blob")
    make(path, 3)
    with TensorBlob.open(path, "r") as reader:
        data = pickle.dumps(reader)
    TensorBlob.unlink(path)
    with pytest.raises(SnapshotGoneError, match="was deleted"):
        pickle.loads(data)
