"""tensorblob.data in one process: pickled snapshots, one-gather batches, BlobLoader.

The sampler's own properties are in tests/test_sampler.py, the multi-rank
tests (real torch.distributed) in tests/test_ddp.py.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from tensorblob import (
    BlobClosedError,
    BlobTypeError,
    InvalidArgumentError,
    InvalidIndexError,
    SnapshotGoneError,
    TensorBlob,
)
from tensorblob.data import BlobLoader, DistributedBlobSampler, collate, shared_snapshot

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


# -- one gather per batch --------------------------------------------------------------


def test_getitems_gathers_a_batch_once_and_returns_its_rows(tmp_path):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=(2,), block_size=B) as w:
        w.write(torch.arange(40.0).reshape(20, 2))
    with TensorBlob.open(path, "r") as blob:
        rows = blob.__getitems__([19, 0, 5, 5, -1])
        assert isinstance(rows, list)
        assert len(rows) == 5
        want = blob[[19, 0, 5, 5, -1]]
        assert torch.equal(rows.collated, want)
        for row, expected in zip(rows, want, strict=True):
            assert torch.equal(row, expected)
            assert row.data_ptr() >= rows.collated.data_ptr()  # views of the one gather
        assert torch.equal(default_collate(rows), want)  # torch's protocol: a list of samples
        assert torch.equal(collate(rows), want)
        assert collate(rows) is rows.collated  # no second copy


def test_getitems_checks_its_indices_like_indexing(tmp_path):
    path = str(tmp_path / "blob")
    make(path, 5)
    with TensorBlob.open(path, "r") as blob:
        with pytest.raises(InvalidIndexError, match="index 5 is out of bounds"):
            blob.__getitems__([0, 5])
        with pytest.raises(BlobTypeError, match="only ints"):
            blob.__getitems__([0, 1.0])
        with pytest.raises(BlobTypeError, match="not str"):
            blob.__getitems__("01")
        assert blob.__getitems__([]).collated.shape == (0,)
    with pytest.raises(BlobClosedError):
        blob.__getitems__([0])


@pytest.mark.parametrize("collate_fn", [None, collate], ids=["default_collate", "collate"])
def test_a_dataloader_batch_is_the_gathered_rows_with_either_collate(tmp_path, collate_fn):
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=(3,), block_size=B) as w:
        w.write(torch.arange(60.0).reshape(20, 3))
    with TensorBlob.open(path, "r") as blob:
        loader = DataLoader(blob, batch_size=8, shuffle=True, collate_fn=collate_fn)
        batches = list(loader)
        assert [b.shape for b in batches] == [(8, 3), (8, 3), (4, 3)]
        got = torch.cat(batches)
        assert sorted(got[:, 0].tolist()) == [3.0 * i for i in range(20)]
        assert torch.equal(got[:, 1], got[:, 0] + 1)  # whole rows


def test_collate_passes_other_batches_to_default_collate_or_through():
    assert torch.equal(collate([torch.tensor(1), torch.tensor(2)]), torch.tensor([1, 2]))
    t = torch.ones(3)
    assert collate(t) is t
    assert collate({"a": 1}) == {"a": 1}


# -- what the training loop consumed -------------------------------------------------------


@pytest.fixture
def blob(tmp_path):
    path = str(tmp_path / "blob")
    make(path, 100)
    with TensorBlob.open(path, "r") as reader:
        yield reader


def test_without_workers_the_state_counts_the_batches_the_loop_received(blob):
    sampler = DistributedBlobSampler(blob, num_replicas=2, rank=1, seed=4)
    loader = DataLoader(blob, sampler=sampler, batch_size=8, collate_fn=collate)
    for k, _batch in enumerate(loader, 1):
        assert sampler.state_dict()["position"] == min(k * 8 * 2, 100)


FORK = {"num_workers": 2, "multiprocessing_context": "fork", "prefetch_factor": 2}


def test_with_workers_a_plain_dataloader_runs_ahead_of_the_loop(blob):
    # Why BlobLoader exists: the workers have fetched further than the loop has seen.
    sampler = DistributedBlobSampler(blob, num_replicas=2, rank=0, batch_size=5)
    loader = DataLoader(blob, batch_sampler=sampler, collate_fn=collate, **FORK)
    it = iter(loader)
    next(it)
    assert sampler.state_dict()["position"] > 1 * 5 * 2
    del it


@pytest.mark.parametrize("as_batch_sampler", [True, False])
def test_with_workers_a_blob_loader_counts_exactly_the_batches_the_loop_received(
    blob, as_batch_sampler
):
    sampler = DistributedBlobSampler(blob, num_replicas=2, rank=0, batch_size=5, seed=1)
    if as_batch_sampler:
        loader = BlobLoader(blob, batch_sampler=sampler, **FORK)
    else:
        loader = BlobLoader(blob, sampler=sampler, batch_size=None, **FORK)
    got = []
    for k, batch in enumerate(loader, 1):
        got.append(batch)
        assert sampler.state_dict()["position"] == min(k * 5 * 2, 100)
        if k == 4:
            state = sampler.state_dict()
    resumed = DistributedBlobSampler(blob, num_replicas=2, rank=0, batch_size=5, seed=1)
    resumed.load_state_dict(state)
    rest = list(
        BlobLoader(blob, batch_sampler=resumed, num_workers=1, multiprocessing_context="fork")
    )
    assert torch.equal(torch.cat(got[:4] + rest), torch.cat(got))


@pytest.mark.parametrize("workers", [{}, FORK])
def test_a_blob_loader_iterator_resumed_after_a_newer_pass_began_is_not_counted(blob, workers):
    """ddp.md, Limits: only the sampler's newest pass moves its position."""
    sampler = DistributedBlobSampler(blob, num_replicas=1, rank=0, batch_size=4, shuffle=False)
    loader = BlobLoader(blob, batch_sampler=sampler, **workers)
    old = iter(loader)
    for _ in range(3):
        next(old)
    assert sampler.state_dict()["position"] == 12
    new = iter(loader)
    assert next(new).tolist() == [0, 1, 2, 3]
    assert sampler.state_dict()["position"] == 4
    next(old)
    next(old)
    assert sampler.state_dict()["position"] == 4
    assert next(new).tolist() == [4, 5, 6, 7]
    assert sampler.state_dict()["position"] == 8
    del old, new


def test_a_blob_loader_batching_a_sample_sampler_counts_its_batch_size(blob):
    sampler = DistributedBlobSampler(blob, num_replicas=3, rank=2, seed=1)
    loader = BlobLoader(blob, sampler=sampler, batch_size=7, **FORK)
    sizes = []
    for batch in loader:
        sizes.append(len(batch))
        assert sampler.state_dict()["position"] == min(sum(sizes) * 3, 100)
    assert sum(sizes) == 34
    assert sampler.state_dict()["position"] == 100


def test_a_blob_loader_without_a_blob_sampler_is_a_dataloader_with_collate(blob):
    loader = BlobLoader(blob, batch_size=30)
    assert torch.equal(torch.cat(list(loader)), torch.arange(100))


# -- bad input ---------------------------------------------------------------------------


def test_bad_blob_loader_arguments_are_refused(blob):
    batches = DistributedBlobSampler(blob, batch_size=4)
    with pytest.raises(InvalidArgumentError, match="sampler: it makes batches"):
        BlobLoader(blob, sampler=batches, batch_size=4)
    indices = DistributedBlobSampler(blob)
    with pytest.raises(InvalidArgumentError, match="batch_sampler: it yields indices"):
        BlobLoader(blob, batch_sampler=indices)
    with pytest.raises(InvalidArgumentError, match="in_order=False"):
        BlobLoader(blob, batch_sampler=batches, in_order=False)


def test_shared_snapshot_checks_its_arguments_before_any_collective(blob):
    with pytest.raises(BlobTypeError, match="src must be an int"):
        shared_snapshot(blob, src="0")
    with pytest.raises(BlobTypeError, match="src must be an int"):
        shared_snapshot(blob, src=True)
    with pytest.raises(BlobTypeError, match="group must be a ProcessGroup or None, got object"):
        shared_snapshot(blob, group=object())
    with pytest.raises(InvalidArgumentError, match="init_process_group"):
        shared_snapshot(blob)
