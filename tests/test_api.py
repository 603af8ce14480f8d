"""The public API of TensorBlob, one user-visible behaviour per test.

Every test uses real blobs in ``tmp_path``; the expected values come from a
plain in-memory reference tensor (or a Python list, for indexing semantics
torch itself does not support, such as negative slice steps).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import fake_boot
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorblob
import tensorblob.errors as tb_errors
from tensorblob import (
    BlobNotFoundError,
    LockTimeoutError,
    NotABlobError,
    TensorBlob,
    TensorBlobError,
    UnsupportedOperationError,
    _durability,
    _durable,
    _format,
    _journal,
    _snapshot,
)
from tensorblob._blocks import BlockStore
from tensorblob._manifest import read_manifest
from tensorblob._meta import read_meta
from tensorblob._state import State

# -- helpers ---------------------------------------------------------------


def rows(n: int, shape: tuple[int, ...] = (3,), dtype=torch.float32, start: int = 0):
    """``n`` distinct rows of ``shape``: row ``i`` holds ``(start + i) * numel + 0..numel-1``."""
    numel = math.prod(shape)
    flat = torch.arange(start * numel, (start + n) * numel, dtype=torch.int64)
    return flat.reshape(n, *shape).to(dtype)


def new_blob(
    path,
    data: torch.Tensor | None = None,
    *,
    mode: str = "w+",
    shape: tuple[int, ...] = (3,),
    dtype=torch.float32,
    block_size: int = 4,
) -> TensorBlob:
    blob = TensorBlob.open(path, mode, dtype=dtype, shape=shape, block_size=block_size)
    if data is not None:
        assert blob.write(data) == data.shape[0]
    return blob


def make_blob(path, data: torch.Tensor, **kw) -> None:
    """Create a blob holding ``data`` and close it."""
    with new_blob(path, data, **kw):
        pass


def stored(path) -> torch.Tensor:
    """All rows of the blob at ``path``, read through a fresh read-only handle.

    Uses a full slice rather than ``read()`` so that a fault in ``read`` shows up
    only in the tests about ``read``.
    """
    with TensorBlob.open(path, "r") as blob:
        return blob[:]


def list_index(ref: torch.Tensor, key) -> torch.Tensor:
    """``ref`` indexed with Python list semantics (negative steps allowed)."""
    idx = list(range(ref.shape[0]))[key]
    return ref[torch.tensor(idx, dtype=torch.int64)]


class Boom(Exception):
    """Raised on purpose inside a transaction."""


def fail_in_transaction(blob: TensorBlob, *steps) -> None:
    """Run ``steps`` inside one transaction, then raise Boom out of it."""
    with blob.transaction():
        for step in steps:
            step()
        raise Boom


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "blob"


# -- creation --------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "torch.float32", torch.float32])
def test_dtype_can_be_given_as_a_name_or_a_torch_dtype(path, dtype):
    with TensorBlob.open(path, "w", dtype=dtype, shape=3) as blob:
        assert blob.dtype is torch.float32
    with TensorBlob.open(path, "r") as blob:
        assert blob.dtype is torch.float32


def test_int_shape_means_one_dimensional_rows(path):
    with TensorBlob.open(path, "w+", dtype="int64", shape=5) as blob:
        assert blob.shape == (5,)
        blob.write(rows(2, (5,), torch.int64))
        assert blob[0].shape == (5,)
    with TensorBlob.open(path, "r") as blob:
        assert blob.shape == (5,)


def test_tuple_shape_is_the_shape_of_every_row(path):
    with TensorBlob.open(path, "w+", dtype="float32", shape=(2, 3, 4), block_size=2) as blob:
        assert blob.shape == (2, 3, 4)
        data = rows(5, (2, 3, 4))
        blob.write(data)
        blob.seek(0)
        assert torch.equal(blob.read(), data)
        assert blob[3].shape == (2, 3, 4)
    assert torch.equal(stored(path), data)


def test_empty_tuple_shape_stores_scalar_rows(path):
    with TensorBlob.open(path, "w+", dtype="int32", shape=(), block_size=4) as blob:
        assert blob.shape == ()
        assert blob.write(torch.tensor(7, dtype=torch.int32)) == 1
        assert blob.write(torch.arange(10, dtype=torch.int32)) == 10
        assert len(blob) == 11
        assert blob[0].shape == ()
        assert int(blob[0]) == 7
        assert int(blob[-1]) == 9
        blob.seek(0)
        assert blob.read(3).shape == (3,)
    assert torch.equal(stored(path), torch.tensor([7, *range(10)], dtype=torch.int32))


def test_block_size_defaults_to_8192_rows(path):
    with TensorBlob.open(path, "w", dtype="uint8", shape=1) as blob:
        assert blob.block_size == 8192


def test_open_accepts_a_str_path_and_reports_it_absolute(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    with TensorBlob.open("blob", "w", dtype="float32", shape=1) as blob:
        assert blob.path == str(path)
    with TensorBlob.open(str(path), "r") as blob:
        assert blob.path == str(path)


def test_a_blob_can_be_created_in_an_existing_empty_directory(path):
    path.mkdir()
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4) as blob:
        blob.write(rows(5))
    assert torch.equal(stored(path), rows(5))


def _random_rows(dtype: torch.dtype, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n, *shape), generator=gen).bool()
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * math.prod(shape) * size,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(n, *shape)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
    ],
    ids=str,
)
def test_every_dtype_round_trips_bit_exactly(path, dtype):
    # Random bit patterns: NaN payloads, infinities, -0.0 and subnormals included.
    data = _random_rows(dtype, 11, (2, 3))
    with new_blob(path, data, dtype=dtype, shape=(2, 3), block_size=4) as blob:
        assert same_bits(blob[0:11], data)
    with TensorBlob.open(path, "r") as blob:
        assert blob.dtype == dtype
        got = blob.read()
        assert same_bits(got, data)
        assert same_bits(blob[[10, 0, 5]], data[[10, 0, 5]])
        assert same_bits(blob[7], data[7])


# -- writing ---------------------------------------------------------------


def test_writing_one_row_returns_one(path):
    with new_blob(path) as blob:
        assert blob.write(torch.tensor([1.0, 2.0, 3.0])) == 1
        assert len(blob) == 1
        assert blob.tell() == 1
        assert torch.equal(blob[0], torch.tensor([1.0, 2.0, 3.0]))


def test_writing_a_batch_returns_its_row_count(path):
    with new_blob(path) as blob:
        assert blob.write(rows(9)) == 9
        assert len(blob) == 9
        assert blob.tell() == 9
    assert torch.equal(stored(path), rows(9))


def test_writing_a_flat_run_of_rows_returns_the_number_of_rows(path):
    with new_blob(path, shape=(2, 3)) as blob:
        assert blob.write(torch.arange(30, dtype=torch.float32)) == 5
        assert len(blob) == 5
    assert torch.equal(stored(path), torch.arange(30, dtype=torch.float32).reshape(5, 2, 3))


def test_writing_an_empty_batch_returns_zero_and_changes_nothing(path):
    with new_blob(path, rows(3)) as blob:
        blob.seek(1)
        assert blob.write(torch.empty(0, 3)) == 0
        assert len(blob) == 3
        assert blob.tell() == 1
    assert torch.equal(stored(path), rows(3))


def test_a_non_contiguous_tensor_is_written_in_logical_order(path):
    wide = rows(10, (6,))
    strided = wide[:, ::2]  # (10, 3), non-contiguous
    assert not strided.is_contiguous()
    with new_blob(path, strided):
        pass
    assert torch.equal(stored(path), strided.contiguous())


def test_a_transposed_tensor_is_written_in_logical_order(path):
    data = rows(3, (7,)).T  # (7, 3), a transposed view
    assert not data.is_contiguous()
    with new_blob(path, data):
        pass
    assert torch.equal(stored(path), data.contiguous())


def test_a_broadcast_tensor_is_written_as_repeated_rows(path):
    data = torch.tensor([1.0, 2.0, 3.0]).expand(6, 3)  # stride 0 along rows
    with new_blob(path, data):
        pass
    assert torch.equal(stored(path), data.contiguous())


def test_writes_reaching_past_the_end_grow_the_blob(path):
    with new_blob(path, rows(6)) as blob:
        blob.seek(4)
        assert blob.write(rows(5, start=100)) == 5
        assert len(blob) == 9
        assert blob.tell() == 9
    assert torch.equal(stored(path), torch.cat([rows(4), rows(5, start=100)]))


# -- modes -----------------------------------------------------------------


def test_read_mode_starts_at_row_zero_and_reads_but_does_not_write(path):
    make_blob(path, rows(6))
    with TensorBlob.open(path, "r") as blob:
        assert blob.tell() == 0
        assert torch.equal(blob.read(), rows(6))
        with pytest.raises(UnsupportedOperationError):
            blob.write(rows(1))
    assert torch.equal(stored(path), rows(6))


def test_write_mode_creates_a_missing_blob(path):
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4) as blob:
        assert len(blob) == 0
        assert blob.tell() == 0
        blob.write(rows(5))
    assert torch.equal(stored(path), rows(5))


def test_write_mode_empties_an_existing_blob(path):
    make_blob(path, rows(9))
    with TensorBlob.open(path, "w") as blob:
        assert len(blob) == 0
        assert blob.tell() == 0
    assert stored(path).shape == (0, 3)


def test_write_mode_cannot_read(path):
    with TensorBlob.open(path, "w", dtype="float32", shape=3) as blob:
        blob.write(rows(2))
        with pytest.raises(UnsupportedOperationError):
            blob.read()


def test_write_plus_mode_empties_the_blob_and_can_read_back(path):
    make_blob(path, rows(9))
    with TensorBlob.open(path, "w+") as blob:
        assert len(blob) == 0
        blob.write(rows(2, start=50))
        blob.seek(0)
        assert torch.equal(blob.read(), rows(2, start=50))
    assert torch.equal(stored(path), rows(2, start=50))


def test_read_plus_mode_starts_at_row_zero_and_overwrites_there(path):
    make_blob(path, rows(6))
    with TensorBlob.open(path, "r+") as blob:
        assert blob.tell() == 0
        assert len(blob) == 6
        blob.write(rows(2, start=100))
        assert blob.tell() == 2
        assert torch.equal(blob.read(1), rows(1, start=2))
    assert torch.equal(stored(path), torch.cat([rows(2, start=100), rows(4, start=2)]))


def test_append_mode_starts_at_the_end(path):
    make_blob(path, rows(6))
    with TensorBlob.open(path, "a") as blob:
        assert blob.tell() == 6
        assert len(blob) == 6


def test_append_mode_writes_at_the_end_even_after_seek(path):
    make_blob(path, rows(6))
    with TensorBlob.open(path, "a") as blob:
        assert blob.seek(1) == 1
        blob.write(rows(2, start=100))
        assert blob.tell() == 8
        assert len(blob) == 8
        with pytest.raises(UnsupportedOperationError):
            blob.read()
    assert torch.equal(stored(path), torch.cat([rows(6), rows(2, start=100)]))


def test_append_plus_mode_reads_at_the_cursor_and_writes_at_the_end(path):
    make_blob(path, rows(6))
    with TensorBlob.open(path, "a+") as blob:
        assert blob.tell() == 6
        blob.seek(2)
        assert torch.equal(blob.read(2), rows(2, start=2))
        blob.write(rows(1, start=100))
        assert blob.tell() == 7
        blob.seek(0)
        assert torch.equal(blob.read(), torch.cat([rows(6), rows(1, start=100)]))


@pytest.mark.parametrize("mode", ["a", "a+"])
def test_append_modes_create_a_missing_blob_when_dtype_and_shape_are_given(path, mode):
    with TensorBlob.open(path, mode, dtype="int16", shape=(2,), block_size=4) as blob:
        assert len(blob) == 0
        assert blob.tell() == 0
        blob.write(rows(3, (2,), torch.int16))
    assert torch.equal(stored(path), rows(3, (2,), torch.int16))


@pytest.mark.parametrize("mode", ["r", "r+", "a", "a+", "w", "w+"])
def test_matching_dtype_shape_and_block_size_may_be_repeated_when_opening(path, mode):
    make_blob(path, rows(5))
    with TensorBlob.open(path, mode, dtype="float32", shape=3, block_size=4) as blob:
        assert (blob.dtype, blob.shape, blob.block_size, blob.mode) == (
            torch.float32,
            (3,),
            4,
            mode,
        )


# -- seek and tell ---------------------------------------------------------


def test_seek_set_cur_and_end_return_the_new_position(path):
    with new_blob(path, rows(10)) as blob:
        assert blob.seek(3) == 3
        assert blob.tell() == 3
        assert blob.seek(4, io.SEEK_CUR) == 7
        assert blob.seek(-2, io.SEEK_CUR) == 5
        assert blob.seek(-1, io.SEEK_END) == 9
        assert blob.seek(0, io.SEEK_END) == 10
        assert blob.seek(0, io.SEEK_SET) == 0
        assert blob.seek(np.int64(2)) == 2


@pytest.mark.parametrize(
    ("pos", "whence", "expected"),
    [
        (-5, io.SEEK_SET, 0),
        (99, io.SEEK_SET, 10),
        (-99, io.SEEK_CUR, 0),
        (99, io.SEEK_CUR, 10),
        (5, io.SEEK_END, 10),
        (-99, io.SEEK_END, 0),
    ],
)
def test_seek_is_clamped_to_the_blob(path, pos, whence, expected):
    with new_blob(path, rows(10)) as blob:
        blob.seek(4)
        assert blob.seek(pos, whence) == expected
        assert blob.tell() == expected


# -- reading ---------------------------------------------------------------


def test_read_with_size_returns_up_to_size_rows_and_advances(path):
    with new_blob(path, rows(10)) as blob:
        blob.seek(1)
        got = blob.read(6)  # crosses two block boundaries
        assert torch.equal(got, rows(6, start=1))
        assert blob.tell() == 7
        got = blob.read(100)
        assert torch.equal(got, rows(3, start=7))
        assert blob.tell() == 10


@pytest.mark.parametrize("size", [None, -1, -100])
def test_read_without_a_size_returns_the_rest(path, size):
    with new_blob(path, rows(10)) as blob:
        blob.seek(3)
        got = blob.read() if size is None else blob.read(size)
        assert torch.equal(got, rows(7, start=3))
        assert blob.tell() == 10


def test_read_zero_returns_no_rows_and_keeps_the_cursor(path):
    with new_blob(path, rows(10), shape=(3,)) as blob:
        blob.seek(4)
        got = blob.read(0)
        assert got.shape == (0, 3)
        assert got.dtype == torch.float32
        assert blob.tell() == 4


@pytest.mark.parametrize("shape", [(3,), (2, 2), ()])
@pytest.mark.parametrize("n", [5, 8], ids=["mid-block", "block-aligned"])
def test_read_at_the_end_returns_an_empty_batch_of_the_row_shape(path, shape, n):
    with new_blob(path, rows(n, shape), shape=shape, block_size=4) as blob:
        assert blob.tell() == n
        for got in (blob.read(), blob.read(3), blob.read(0), blob.read()):
            assert got.shape == (0, *shape)
            assert got.dtype == torch.float32
        assert blob.tell() == n


def test_read_on_an_empty_blob_returns_an_empty_batch(path):
    with new_blob(path, shape=(2, 2)) as blob:
        assert blob.read().shape == (0, 2, 2)
        assert blob[0:5].shape == (0, 2, 2)
        assert list(blob) == []


def test_iteration_yields_rows_from_the_cursor_and_advances_it(path):
    with new_blob(path, rows(10)) as blob:
        blob.seek(3)
        it = iter(blob)
        first = next(it)
        assert first.shape == (3,)
        assert torch.equal(first, rows(1, start=3)[0])
        assert blob.tell() == 4
        rest = list(it)
        assert torch.equal(torch.stack(rest), rows(6, start=4))
        assert blob.tell() == 10
        assert list(blob) == []


def test_breaking_out_of_iteration_leaves_the_cursor_after_the_last_row_seen(path):
    with new_blob(path, rows(10)) as blob:
        blob.seek(0)
        seen = []
        for row in blob:
            seen.append(row)
            if len(seen) == 6:
                break
        assert blob.tell() == 6
        assert torch.equal(blob.read(1), rows(1, start=6))


def test_len_is_the_row_count(path):
    with new_blob(path) as blob:
        assert len(blob) == 0
        blob.write(rows(7))
        assert len(blob) == 7


# -- indexing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (0, 0),
        (5, 5),
        (10, 10),
        (-1, 10),
        (-11, 0),
        (np.int64(6), 6),
        (np.int32(-2), 9),
        (np.uint8(3), 3),
        (torch.tensor(7), 7),
        (torch.tensor(-3, dtype=torch.int32), 8),
        (np.array(4), 4),  # a 0-d integer ndarray, as a 0-d integer tensor
        (np.array(-2, dtype=np.int16), 9),
    ],
    ids=repr,
)
def test_an_integer_index_returns_one_row_of_the_row_shape(path, key, expected):
    ref = rows(11, (2, 3))
    with new_blob(path, ref, shape=(2, 3)) as blob:
        got = blob[key]
        assert got.shape == (2, 3)
        assert torch.equal(got, ref[expected])
        assert blob.tell() == 11  # indexing does not move the cursor


SLICES = [
    slice(None),
    slice(2, 9),
    slice(3, 4),
    slice(4, 8),
    slice(5, 5),
    slice(9, 2),
    slice(9, 2, 3),
    slice(-5, None),
    slice(-100, 100),
    slice(None, None, 2),
    slice(1, 20, 3),
    slice(None, None, 5),
    slice(None, None, 100),
    slice(None, None, -1),
    slice(None, None, -3),
    slice(-1, 2, -4),
    slice(15, 3, -2),
    slice(2, 15, -1),
    slice(100, -100, -7),
    slice(-2, None, -1),
    slice(None, -100, -1),
]


@pytest.mark.parametrize("key", SLICES, ids=repr)
def test_slices_with_any_step_follow_python_list_semantics(path, key):
    ref = rows(23)
    with new_blob(path, ref, block_size=4) as blob:
        got = blob[key]
        want = list_index(ref, key)
        assert got.shape == want.shape
        assert torch.equal(got, want)


def test_the_readme_negative_step_slice_on_a_large_blob(path):
    n = 100_000
    ref = torch.arange(n * 8, dtype=torch.int32).reshape(n, 8)
    with TensorBlob.open(path, "w+", dtype="int32", shape=8) as blob:
        blob.write(ref)
        got = blob[-1:16384:-12345]
    want = list_index(ref, slice(-1, 16384, -12345))
    assert want.shape == (7, 8)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "key",
    [
        [3, 0, 22, 7, 7, -1, 5, -23],
        (21, 4, 4, 9, -2),
        torch.tensor([0, 12, 12, 3, -1, 19]),
        torch.tensor([5, -5, 5], dtype=torch.int32),
        np.array([22, 1, 1, 16, -8]),
        np.array([2, 3, 2], dtype=np.uint16),
        [],
        [6],
        torch.tensor([9, 10, 11]),  # all inside one block
        [np.int64(3), 0, np.uint8(22), signal.SIGINT],  # not plain ints: checked one by one
    ],
    ids=repr,
)
def test_batch_indexing_keeps_order_repeats_and_negative_entries(path, key):
    ref = rows(23, (2,))
    with new_blob(path, ref, shape=(2,), block_size=4) as blob:
        got = blob[key]
    idx = [int(i) for i in key]
    want = ref[torch.tensor(idx, dtype=torch.int64)].reshape(len(idx), 2)
    assert got.shape == (len(idx), 2)
    assert torch.equal(got, want)


@pytest.mark.parametrize("n", [1, 2, 64, 65, 300])
@pytest.mark.parametrize("blocks", ["one", "many"])
def test_gathers_of_every_size_read_right_with_and_without_out(path, n, blocks):
    """Up to _rows.FEW rows are copied one by one; more in one call: in one block or many."""
    ref = rows(4096, (2,))
    gen = np.random.default_rng(n)
    key = gen.integers(512, 1024, n) if blocks == "one" else gen.integers(-4096, 4096, n)
    with new_blob(path, ref, shape=(2,), block_size=1024) as blob:
        want = ref[torch.from_numpy(key)]
        assert torch.equal(blob[key], want)
        out = torch.full((n + 3, 2), -1.0)
        assert torch.equal(blob.take(key, out=out), want)
        assert torch.equal(out[:n], want)
        assert (out[n:] == -1).all()


def _mapped_blocks(blob_path) -> int:
    with open("/proc/self/maps") as f:
        return sum(f"{blob_path}/blocks/" in line for line in f)


@pytest.mark.parametrize("mode", ["r", "a+"])
@pytest.mark.parametrize("max_cached", [1, 2, 5, 64])
def test_batch_indexing_over_more_blocks_than_the_cache_holds(tmp_path, mode, max_cached):
    # 61 rows in 16 blocks of 4, 2-byte rows: a gather reaches more blocks than
    # a small cache maps, and must take them a group at a time.
    ref = rows(61, (1,), dtype=torch.int16)
    path = str(tmp_path / "g.blob")
    make_blob(path, ref, shape=(1,), dtype=torch.int16)
    gen = np.random.default_rng(7)
    with TensorBlob.open(path, mode, max_cached_blocks=max_cached) as blob:
        for size in (2, 5, 17, 200):
            key = gen.integers(-61, 61, size=size)
            got = blob[key]
            assert torch.equal(got, ref[torch.from_numpy(key)])
            assert _mapped_blocks(path) <= max_cached
        assert torch.equal(blob[np.arange(60, -1, -1)], ref.flip(0))


@pytest.mark.parametrize("mode", ["r", "a+"])
def test_reads_over_more_blocks_than_the_cache_holds_map_nothing_again(tmp_path, monkeypatch, mode):
    """Mapping each block of such a read evicted the ones the next read needs first: every
    read mapped every block again (~150 us each). The blocks not mapped are read instead."""
    ref = rows(61, (1,), dtype=torch.int16)
    path = str(tmp_path / "g.blob")
    make_blob(path, ref, shape=(1,), dtype=torch.int16)
    maps = []
    real = BlockStore._map
    monkeypatch.setattr(BlockStore, "_map", lambda self, bid: maps.append(bid) or real(self, bid))
    key = np.random.default_rng(3).integers(-61, 61, size=200)
    with TensorBlob.open(path, mode, max_cached_blocks=3) as blob:
        blob[0], blob[60]  # two blocks mapped
        for _ in range(2):
            assert torch.equal(blob[:], ref)
            assert torch.equal(blob[5:58], ref[5:58])
            assert torch.equal(blob[key], ref[torch.from_numpy(key)])
            assert torch.equal(blob[key[:20]], ref[torch.from_numpy(key[:20])])  # < _rows.FEW
            out = torch.empty_like(ref)
            assert torch.equal(blob.take(slice(None), out=out), ref)
        assert maps == [0, 15]


@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.uint8, torch.bfloat16, torch.float64, torch.complex64]
)
def test_batch_indexing_across_blocks_returns_the_bytes_of_any_dtype(path, dtype):
    ref = (rows(30, (3,), dtype=torch.float64) % 7 - 2).to(dtype)
    key = [29, 0, 13, 13, -30, 7, 22, 4]
    with new_blob(path, ref, dtype=dtype, block_size=4) as blob:
        got = blob[key]
    assert got.dtype == dtype
    assert got.shape == (8, 3)
    assert torch.equal(got, ref[key])


def test_a_read_only_ndarray_works_as_an_index_without_warnings(path):
    # np.frombuffer and friends give read-only arrays; under -W error a warning is a failure.
    key = np.array([4, 0, 9])
    key.setflags(write=False)
    ref = rows(10)
    with new_blob(path, ref) as blob:
        got = blob[key]
    assert torch.equal(got, ref[[4, 0, 9]])


@pytest.mark.parametrize(
    "get",
    [
        lambda b: b[2],
        lambda b: b[-1],
        lambda b: b[1:3],
        lambda b: b[0:10],
        lambda b: b[::3],
        lambda b: b[[1, 2]],
        lambda b: b[torch.tensor([5, 6])],  # one block: the gather fast path
        lambda b: b.read(),
        lambda b: next(iter(b)),
    ],
    ids=[
        "int",
        "negative",
        "slice-in-block",
        "slice-across",
        "step",
        "list",
        "tensor",
        "read",
        "iter",
    ],
)
def test_returned_tensors_never_alias_the_file(path, get):
    ref = rows(10)
    make_blob(path, ref)
    for mode in ("r", "r+"):
        with TensorBlob.open(path, mode) as blob:
            got = get(blob)
            got.fill_(-1.0)
            assert torch.equal(blob[0:10], ref)
    assert torch.equal(stored(path), ref)


# -- truncate --------------------------------------------------------------


def test_truncate_cuts_the_blob_and_returns_the_new_length(path):
    with new_blob(path, rows(10)) as blob:
        assert blob.truncate(5) == 5
        assert len(blob) == 5
        assert torch.equal(blob[0:5], rows(5))
    assert torch.equal(stored(path), rows(5))


def test_truncate_without_a_size_cuts_at_the_cursor(path):
    with new_blob(path, rows(10)) as blob:
        blob.seek(7)
        assert blob.truncate() == 7
        assert blob.tell() == 7
    assert torch.equal(stored(path), rows(7))


def test_truncate_past_the_end_changes_nothing(path):
    with new_blob(path, rows(10)) as blob:
        blob.seek(3)
        assert blob.truncate(10) == 10
        assert blob.truncate(50) == 10
        assert len(blob) == 10
        assert blob.tell() == 3
    assert torch.equal(stored(path), rows(10))


def test_truncate_moves_a_cursor_past_the_new_end_back_to_the_end(path):
    with new_blob(path, rows(10)) as blob:
        assert blob.tell() == 10
        blob.truncate(3)
        assert blob.tell() == 3


def test_truncate_keeps_a_cursor_before_the_new_end(path):
    with new_blob(path, rows(10)) as blob:
        blob.seek(2)
        blob.truncate(6)
        assert blob.tell() == 2


def test_truncate_to_zero_empties_the_blob(path):
    with new_blob(path, rows(10)) as blob:
        assert blob.truncate(0) == 0
        assert blob.tell() == 0
        assert len(blob) == 0
        assert blob[:].shape == (0, 3)
    assert stored(path).shape == (0, 3)


@pytest.mark.parametrize("cut", [0, 3, 4, 5, 8, 9])
def test_regrowing_after_truncate_never_resurrects_old_rows(path, cut):
    with new_blob(path, rows(10)) as blob:
        blob.truncate(cut)
        blob.seek(0, io.SEEK_END)
        blob.write(rows(1, start=100))
        blob.write(rows(5, start=200))
        want = torch.cat([rows(cut), rows(1, start=100), rows(5, start=200)])
        assert len(blob) == cut + 6
        blob.seek(0)
        assert torch.equal(blob.read(), want)
    assert torch.equal(stored(path), want)


def test_regrowing_after_truncate_in_another_session_never_resurrects_old_rows(path):
    make_blob(path, rows(10))
    with TensorBlob.open(path, "r+") as blob:
        blob.truncate(5)
    with TensorBlob.open(path, "a") as blob:
        blob.write(rows(1, start=100))
    want = torch.cat([rows(5), rows(1, start=100)])
    assert torch.equal(stored(path), want)


# -- overwrite -------------------------------------------------------------


def test_overwriting_in_read_plus_across_block_boundaries_changes_only_those_rows(path):
    make_blob(path, rows(14))
    with TensorBlob.open(path, "r+") as blob:
        blob.seek(3)
        assert blob.write(rows(6, start=100)) == 6  # rows 3..8 span blocks 0, 1 and 2
        assert blob.tell() == 9
        assert len(blob) == 14
    want = rows(14)
    want[3:9] = rows(6, start=100)
    assert torch.equal(stored(path), want)


def test_overwriting_the_same_rows_twice_keeps_the_last_write(path):
    make_blob(path, rows(8))
    with TensorBlob.open(path, "r+") as blob:
        blob.seek(2)
        blob.write(rows(3, start=100))
        blob.seek(2)
        blob.write(rows(3, start=200))
    want = rows(8)
    want[2:5] = rows(3, start=200)
    assert torch.equal(stored(path), want)


# -- extend ----------------------------------------------------------------


@pytest.mark.parametrize(("n_self", "n_other"), [(0, 5), (10, 11), (8, 8), (3, 2), (9, 0)])
def test_extend_in_order_appends_the_other_blobs_rows(tmp_path, n_self, n_other):
    a, b = tmp_path / "a", tmp_path / "b"
    mine, theirs = rows(n_self), rows(n_other, start=1000)
    make_blob(b, theirs)
    with new_blob(a, mine) as blob, TensorBlob.open(b, "r") as other:
        assert blob.extend(other) == n_other
        assert blob.tell() == n_self + n_other
        assert len(blob) == n_self + n_other
        assert len(other) == n_other
    assert torch.equal(stored(a), torch.cat([mine, theirs]))
    assert torch.equal(stored(b), theirs)


@pytest.mark.parametrize(
    ("n_self", "n_other"), [(10, 11), (8, 11), (10, 8), (8, 8), (1, 9), (0, 9), (3, 4)]
)
def test_extend_without_order_copies_whole_blocks_in_the_documented_order(
    tmp_path, n_self, n_other
):
    b_size = 4
    a, b = tmp_path / "a", tmp_path / "b"
    mine, theirs = rows(n_self), rows(n_other, start=1000)
    make_blob(b, theirs, block_size=b_size)
    with new_blob(a, mine, block_size=b_size) as blob, TensorBlob.open(b, "r") as other:
        assert blob.extend(other, maintain_order=False) == n_other
        assert blob.tell() == n_self + n_other
        assert len(blob) == n_self + n_other
    # self's full blocks, other's full blocks, self's partial block, other's partial block
    fs, fo = n_self // b_size * b_size, n_other // b_size * b_size
    want = torch.cat([mine[:fs], theirs[:fo], mine[fs:], theirs[fo:]])
    assert torch.equal(stored(a), want)
    assert torch.equal(stored(b), theirs)


def test_extend_without_order_then_writing_more_keeps_every_row(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_blob(b, rows(9, start=1000))
    with new_blob(a, rows(6)) as blob, TensorBlob.open(b, "r") as other:
        blob.extend(other, maintain_order=False)
        blob.write(rows(3, start=500))
        blob.seek(0)
        got = blob.read()
    want = torch.cat([rows(4), rows(8, start=1000), rows(2, start=4), rows(1, start=1008)])
    want = torch.cat([want, rows(3, start=500)])
    assert torch.equal(got, want)
    assert torch.equal(stored(a), want)


def test_extend_without_order_falls_back_to_order_when_block_sizes_differ(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    mine, theirs = rows(10), rows(13, start=1000)
    make_blob(b, theirs, block_size=3)
    with new_blob(a, mine, block_size=4) as blob, TensorBlob.open(b, "r") as other:
        assert blob.extend(other, maintain_order=False) == 13
    assert torch.equal(stored(a), torch.cat([mine, theirs]))


def test_extend_from_a_writable_handle_of_the_other_blob(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with new_blob(a, rows(5)) as blob, new_blob(b, rows(6, start=1000)) as other:
        assert blob.extend(other) == 6
        other.write(rows(1, start=2000))  # other stays usable and unchanged by extend
    assert torch.equal(stored(a), torch.cat([rows(5), rows(6, start=1000)]))
    assert torch.equal(stored(b), torch.cat([rows(6, start=1000), rows(1, start=2000)]))


def test_extending_a_blob_with_itself_doubles_it(path):
    with new_blob(path, rows(10)) as blob:
        assert blob.extend(blob) == 10
        assert len(blob) == 20
    assert torch.equal(stored(path), torch.cat([rows(10), rows(10)]))


def test_extend_with_an_empty_blob_returns_zero(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_blob(b, rows(0))
    with new_blob(a, rows(5)) as blob, TensorBlob.open(b, "r") as other:
        blob.seek(2)
        assert blob.extend(other) == 0
        assert blob.extend(other, maintain_order=False) == 0
        assert len(blob) == 5
    assert torch.equal(stored(a), rows(5))


def test_extend_in_append_mode_appends(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_blob(a, rows(5))
    make_blob(b, rows(7, start=1000))
    with TensorBlob.open(a, "a") as blob, TensorBlob.open(b, "r") as other:
        assert blob.extend(other) == 7
    assert torch.equal(stored(a), torch.cat([rows(5), rows(7, start=1000)]))


# -- transactions ----------------------------------------------------------


def test_a_transaction_commits_several_calls_at_once(path):
    make_blob(path, rows(10))
    with TensorBlob.open(path, "r+") as blob:
        with blob.transaction() as same:
            assert same is blob
            blob.seek(2)
            blob.write(rows(3, start=100))
            blob.truncate(8)
            blob.seek(0, io.SEEK_END)
            blob.write(rows(4, start=200))
            # Nothing is visible to a new reader until the transaction ends.
            assert torch.equal(stored(path), rows(10))
            assert len(blob) == 12
        assert torch.equal(stored(path)[2:5], rows(3, start=100))
    want = torch.cat([rows(2), rows(3, start=100), rows(3, start=5), rows(4, start=200)])
    assert torch.equal(stored(path), want)


def test_an_exception_in_a_transaction_rolls_back_data_length_and_cursor(path):
    make_blob(path, rows(10))
    with TensorBlob.open(path, "r+") as blob:
        blob.seek(6)
        with pytest.raises(Boom):
            fail_in_transaction(
                blob,
                lambda: blob.seek(1),
                lambda: blob.write(rows(2, start=100)),
                lambda: blob.truncate(5),
                lambda: blob.write(rows(9, start=200)),
                lambda: blob.seek(0),
            )
        assert len(blob) == 10
        assert blob.tell() == 6
        assert torch.equal(blob[0:10], rows(10))
        blob.seek(0)
        assert torch.equal(blob.read(), rows(10))
        # the handle stays usable
        blob.seek(6)
        blob.write(rows(1, start=300))
    want = rows(10)
    want[6] = rows(1, start=300)[0]
    assert torch.equal(stored(path), want)


def test_an_exception_in_a_transaction_on_a_new_blob_leaves_it_empty(path):
    with new_blob(path) as blob:
        with pytest.raises(Boom):
            fail_in_transaction(blob, lambda: blob.write(rows(9)))
        assert len(blob) == 0
    assert stored(path).shape == (0, 3)


def test_an_exception_in_a_transaction_with_extend_rolls_it_back(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_blob(b, rows(9, start=1000))
    with new_blob(a, rows(6)) as blob, TensorBlob.open(b, "r") as other:
        blob.flush()
        files = sorted(os.listdir(a / "blocks"))
        for ordered in (True, False):
            with pytest.raises(Boom):
                fail_in_transaction(blob, lambda o=ordered: blob.extend(other, maintain_order=o))
            assert len(blob) == 6
            assert torch.equal(blob[0:6], rows(6))
            assert sorted(os.listdir(a / "blocks")) == files  # no block file left behind
    assert torch.equal(stored(a), rows(6))


def test_a_nested_transaction_joins_the_outer_one(path):
    make_blob(path, rows(4))
    with TensorBlob.open(path, "a") as blob:

        def inner() -> None:
            with blob.transaction():
                blob.write(rows(2, start=100))
            # the inner block ended, but nothing is committed yet
            assert torch.equal(stored(path), rows(4))

        with pytest.raises(Boom):
            fail_in_transaction(blob, inner)
        assert len(blob) == 4
        with blob.transaction():
            with blob.transaction():
                blob.write(rows(1, start=200))
            blob.write(rows(1, start=300))
    assert torch.equal(stored(path), torch.cat([rows(4), rows(1, start=200), rows(1, start=300)]))


def test_iterating_a_writer_yields_the_row_at_the_cursor_as_the_blob_changes(path):
    """The iterator reads at the cursor each time: a truncate, an overwrite or a seek
    between two rows is seen, and the cursor never passes the end."""
    with new_blob(path, rows(10), block_size=4) as blob:
        blob.seek(1)
        it = iter(blob)
        assert torch.equal(next(it), rows(1, start=1)[0])
        blob.truncate(1)
        assert list(it) == []
        assert (len(blob), blob.tell()) == (1, 1)
        blob.write(rows(1, start=77))  # at the end: no truncated row comes back
        assert torch.equal(blob[:], torch.cat([rows(1), rows(1, start=77)]))
        blob.write(rows(6, start=2))  # rows 2 to 7 hold rows(6, start=2)
        blob.seek(0)
        it = iter(blob)
        next(it)
        blob.seek(1)
        blob.write(rows(2, start=100))  # over rows 1 and 2; the cursor moves to 3
        assert torch.equal(next(it), rows(1, start=3)[0])
        blob.seek(1)
        assert torch.equal(next(it), rows(1, start=100)[0])
        assert blob.tell() == 2
    with TensorBlob.open(path, "r") as reader:  # a reader reads ahead, and follows seeks
        it = iter(reader)
        next(it)
        reader.seek(6)
        assert torch.equal(next(it), rows(1, start=6)[0])
        assert reader.tell() == 7


def test_extending_a_blob_with_itself_copies_what_it_held(path):
    for ordered, want in (
        (True, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]),
        (False, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 4, 5]),  # full blocks, then the partial ones
    ):
        with new_blob(path, rows(6, shape=()), shape=(), block_size=4, mode="w+") as blob:
            assert blob.extend(blob, maintain_order=ordered) == 6
            assert blob[:].tolist() == want
        assert stored(path).tolist() == want


def test_an_exception_leaving_an_inner_block_spoils_the_outer_transaction(path):
    """No savepoints: caught in the outer block or not, it rolls everything back."""
    make_blob(path, rows(3))
    with TensorBlob.open(path, "a") as blob:

        def outer() -> None:
            with blob.transaction():
                blob.write(rows(1, start=10))
                with contextlib.suppress(Boom), blob.transaction():
                    blob.write(rows(1, start=20))
                    raise Boom
                blob.write(rows(1, start=30))

        with pytest.raises(TensorBlobError, match="rolled back"):
            outer()
        assert (len(blob), blob.tell()) == (3, 3)
        blob.write(rows(1, start=40))  # the handle goes on
    assert torch.equal(stored(path), torch.cat([rows(3), rows(1, start=40)]))


def test_closing_inside_a_transaction_rolls_it_back(path):
    make_blob(path, rows(4))
    blob = TensorBlob.open(path, "r+")
    try:
        with blob.transaction():
            blob.write(rows(6, start=100))
            blob.close()
    except TensorBlobError:
        pass  # leaving a transaction whose blob was closed may report it, but only this way
    assert blob.closed
    assert torch.equal(stored(path), rows(4))


def test_transaction_is_refused_on_a_read_only_blob(path):
    make_blob(path, rows(2))
    with TensorBlob.open(path, "r") as blob, pytest.raises(UnsupportedOperationError):
        blob.transaction().__enter__()


# -- readers keep their snapshot --------------------------------------------


@pytest.mark.parametrize("touch_first", [False, True], ids=["lazy", "mapped"])
def test_a_reader_keeps_its_snapshot_while_a_writer_changes_the_blob(path, touch_first):
    ref = rows(10)
    make_blob(path, ref)
    reader = TensorBlob.open(path, "r")
    try:
        if touch_first:
            assert torch.equal(reader[0:10], ref)
        with TensorBlob.open(path, "r+") as writer:
            writer.seek(1)
            writer.write(rows(6, start=100))  # overwrite across blocks
            assert len(reader) == 10
            assert torch.equal(reader[0:10], ref)
            writer.truncate(9)
            writer.seek(0, io.SEEK_END)
            writer.write(rows(1, start=200))  # overwrite the last row of the old partial block
            writer.truncate(3)
            writer.seek(0, io.SEEK_END)
            writer.write(rows(8, start=300))  # regrow past the old end
            writer.flush()
            new = torch.cat([rows(1), rows(2, start=100), rows(8, start=300)])
            assert torch.equal(stored(path), new)  # a new reader sees the new state
            assert len(reader) == 10
            assert torch.equal(reader[0:10], ref)
            assert torch.equal(reader[[9, 0, 4]], ref[[9, 0, 4]])
        # still the old snapshot after the writer closed
        assert len(reader) == 10
        assert torch.equal(reader.read(), ref)
    finally:
        reader.close()
    assert torch.equal(stored(path), new)
    # a later writer may now reclaim the old blocks; the blob stays intact
    with TensorBlob.open(path, "r+"):
        pass
    assert torch.equal(stored(path), new)


def test_a_reader_opened_after_a_commit_sees_it(path):
    make_blob(path, rows(3))
    with TensorBlob.open(path, "a") as writer:
        writer.write(rows(2, start=100))
        with TensorBlob.open(path, "r") as reader:
            assert len(reader) == 5
            assert torch.equal(reader[3:5], rows(2, start=100))


# -- unlink ----------------------------------------------------------------


def test_unlink_removes_the_blob_directory(path):
    make_blob(path, rows(10))
    TensorBlob.unlink(path)
    assert not path.exists()
    assert os.listdir(path.parent) == []
    with pytest.raises(BlobNotFoundError):
        TensorBlob.open(path, "r")


def test_a_blob_can_be_created_again_after_unlink(path):
    make_blob(path, rows(10))
    TensorBlob.unlink(str(path))
    with TensorBlob.open(path, "w+", dtype="int8", shape=2) as blob:
        assert len(blob) == 0
        assert blob.dtype == torch.int8


@pytest.mark.parametrize("where", [".", "blocks"])
def test_unlink_refuses_a_directory_holding_foreign_files(path, where):
    make_blob(path, rows(10))
    (path / where / "mine.txt").write_text("keep me")
    with pytest.raises(NotABlobError, match=r"mine\.txt"):
        TensorBlob.unlink(path)
    assert (path / where / "mine.txt").read_text() == "keep me"
    assert torch.equal(stored(path), rows(10))


def test_unlink_of_a_missing_blob_raises_unless_missing_ok(path):
    with pytest.raises(BlobNotFoundError, match="blob"):
        TensorBlob.unlink(path)
    TensorBlob.unlink(path, missing_ok=True)
    assert not path.exists()


def test_unlink_waits_for_the_writer_lock(path):
    make_blob(path, rows(3))
    with TensorBlob.open(path, "r+"):
        with pytest.raises(LockTimeoutError):
            TensorBlob.unlink(path, timeout=0.1)
        assert path.is_dir()
    assert torch.equal(stored(path), rows(3))


# -- properties, closing, reopening -----------------------------------------


def test_properties_report_the_layout_and_the_open_options(path):
    with TensorBlob.open(
        path, "w+", dtype="bfloat16", shape=(2, 5), block_size=16, sync="full"
    ) as blob:
        assert blob.dtype is torch.bfloat16
        assert blob.shape == (2, 5)
        assert isinstance(blob.shape, tuple)
        assert blob.block_size == 16
        assert blob.mode == "w+"
        assert blob.path == str(path)
        assert blob.sync == "full"
        assert blob.closed is False
    with TensorBlob.open(path, "r") as blob:
        assert (blob.dtype, blob.shape, blob.block_size) == (torch.bfloat16, (2, 5), 16)
        assert blob.mode == "r"
        assert blob.sync == "normal"
    assert blob.closed is True
    assert blob.dtype is torch.bfloat16  # layout stays readable after close


def test_the_context_manager_closes_the_blob_even_on_error(path):
    with pytest.raises(ZeroDivisionError), new_blob(path, rows(2)) as blob:
        1 / 0  # noqa: B018
    assert blob.closed
    # the writer lock was released: another writer gets in at once
    with TensorBlob.open(path, "r+", timeout=0) as again:
        assert len(again) == 2


def test_close_releases_the_writer_lock(path):
    blob = new_blob(path, rows(2))
    blob.close()
    assert blob.closed
    with TensorBlob.open(path, "a", timeout=0) as again:
        again.write(rows(1))


def test_reopening_after_close_sees_the_data(path):
    blob = new_blob(path, rows(7, dtype=torch.float64), dtype=torch.float64)
    blob.close()
    for mode in ("r", "r+", "a+"):
        with TensorBlob.open(path, mode) as again:
            assert len(again) == 7
            again.seek(0)
            assert torch.equal(again[:], rows(7, dtype=torch.float64))


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_both_sync_levels_store_the_same_data(path, sync):
    with TensorBlob.open(path, "w+", dtype="float32", shape=3, block_size=4, sync=sync) as blob:
        blob.write(rows(9))
        blob.flush()
        blob.seek(2)
        blob.write(rows(2, start=50))
        blob.truncate(7)
    want = rows(7)
    want[2:4] = rows(2, start=50)
    assert torch.equal(stored(path), want)


def test_flush_keeps_the_blob_usable(path):
    with new_blob(path, rows(3)) as blob:
        blob.flush()
        blob.flush()
        blob.write(rows(2, start=3))
        blob.flush()
        assert len(blob) == 5
    with TensorBlob.open(path, "r") as blob:
        blob.flush()  # a no-op for a reader
        assert torch.equal(blob.read(), rows(5))


def test_many_commits_survive_reopen(path):
    # enough commits to roll the journal over into a checkpoint at least once
    with new_blob(path, block_size=2) as blob:
        for i in range(1200):
            blob.write(rows(1, start=i))
    assert torch.equal(stored(path), rows(1200))


def test_repr_names_the_path_and_the_row_count(path):
    with new_blob(path, rows(3)) as blob:
        assert str(path) in repr(blob)
        assert "3 rows" in repr(blob)
    assert "closed" in repr(blob)


# -- the package surface ---------------------------------------------------


def test_all_is_sorted_and_every_name_exists():
    names = tensorblob.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(tensorblob, name), name
    assert "TensorBlob" in names


def test_every_error_class_is_exported_from_the_package():
    for name in tb_errors.__all__:
        assert getattr(tensorblob, name) is getattr(tb_errors, name)


def _error_classes() -> list[type[BaseException]]:
    found = [
        obj
        for obj in vars(tb_errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_subclasses_tensorblob_error_and_pickles(cls):
    assert issubclass(cls, TensorBlobError)
    err = cls("blob '/x/y' is broken")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls
    assert str(again) == str(err)
    assert again.args == err.args


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("BlobNotFoundError", FileNotFoundError),
        ("NotABlobError", ValueError),
        ("CorruptBlobError", ValueError),
        ("UnsupportedVersionError", ValueError),
        ("LockTimeoutError", TimeoutError),
        ("BlobClosedError", ValueError),
        ("UnsupportedOperationError", io.UnsupportedOperation),
        ("InvalidArgumentError", ValueError),
        ("BlobTypeError", TypeError),
        ("DTypeMismatchError", TypeError),
        ("ShapeMismatchError", ValueError),
        ("InvalidIndexError", IndexError),
    ],
)
def test_every_error_is_also_the_standard_exception_a_caller_would_catch(name, base):
    assert issubclass(getattr(tb_errors, name), base)


# -- the write fast path ----------------------------------------------------------

# Each makes a tensor whose values are those of rows(1)[0] but whose memory is
# laid out or flagged differently: the fast path must copy the values, or step aside.
ODD_ROWS = {
    "plain": lambda r: r.clone(),
    "non_contiguous": lambda r: torch.stack([r, r], dim=1)[:, 0],
    "storage_offset": lambda r: torch.cat([torch.zeros(5), r])[5:],
    "requires_grad": lambda r: r.clone().requires_grad_(True),
    "negative_bit": lambda r: torch._neg_view(-r),  # contiguous, values held negated
    "parameter": lambda r: torch.nn.Parameter(r.clone()),
}


@pytest.mark.parametrize("make", ODD_ROWS, ids=list(ODD_ROWS))
@pytest.mark.parametrize("in_txn", [False, True], ids=["own_txn", "in_txn"])
def test_single_rows_of_any_layout_are_stored_by_value(path, make, in_txn):
    data = rows(10)
    blob = new_blob(path, data[:2])  # the window exists: later rows may take the fast path
    if make == "negative_bit":  # the case is what it claims to be
        assert ODD_ROWS[make](data[2]).is_neg()
        assert ODD_ROWS[make](data[2]).is_contiguous()
    with blob.transaction() if in_txn else _nothing():
        for i in range(2, 10):
            blob.write(ODD_ROWS[make](data[i]))
    blob.close()
    assert torch.equal(stored(path), data)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_fast_path_writes_follow_the_cursor_and_blocks_in_every_writable_mode(path):
    data = rows(23)
    blob = new_blob(path, data[:5], block_size=4)
    for i in range(5, 23):  # crosses block boundaries: each new block is allocated
        blob.write(data[i])
    blob.seek(1)
    blob.write(data[0])  # an overwrite: copy-on-write, never the fast path's append
    blob.close()
    expected = data.clone()
    expected[1] = data[0]
    assert torch.equal(stored(path), expected)
    with TensorBlob.open(path, "a") as blob:
        blob.write(data[3])
        blob.write(data[4])
    assert torch.equal(stored(path), torch.cat([expected, data[3:5]]))


@pytest.mark.parametrize("in_txn", [False, True], ids=["own_txn", "in_txn"])
def test_rows_written_past_the_prefilled_pages_are_kept(path, in_txn):
    # Single rows zero the block ahead of them (Engine._prefill, once 256 KiB
    # of them went through the fast path); a batch then writes past the
    # zeroed pages, and the single rows after it must not zero the batch.
    # 1 KiB rows and 1 MiB blocks.
    data = rows(2400, shape=(256,))
    blob = new_blob(path, data[:1], mode="w", shape=(256,), block_size=1024)
    with blob.transaction() if in_txn else _nothing():
        for i in range(1, 300):  # zeroing starts after 256 rows
            blob.write(data[i])
        blob.write(data[300:900])  # past the zeroed stretch
        for i in range(900, 1400):  # into the next block, and on
            blob.write(data[i])
        blob.write(data[1400:1410])  # a small batch: a pwrite, not the mapping
        for i in range(1410, 2400):
            blob.write(data[i])
    blob.close()
    assert torch.equal(stored(path), data)


def test_a_large_unaligned_batch_written_in_pieces_is_stored_whole(path):
    # A batch is written by pwrite in pieces that end on 256 KiB boundaries of
    # the block file; here it starts 1 KiB in and spans several of them.
    data = rows(8000, shape=(256,))
    blob = new_blob(path, data[:1], mode="w", shape=(256,), block_size=8192)
    blob.write(data[1:7001])
    blob.write(data[7001:])
    blob.close()
    assert torch.equal(stored(path), data)


def test_single_row_appends_after_a_truncate_keep_an_older_snapshot(path):
    data = rows(700, shape=(256,))
    blob = new_blob(path, data[:500], mode="w", shape=(256,), block_size=1024)
    reader = TensorBlob.open(path, "r")  # its snapshot holds 500 rows
    blob.truncate(100)
    blob.seek(100)
    for i in range(100, 700):
        blob.write(-data[i])  # new values over the rows the reader still sees
    assert torch.equal(reader[:], data[:500])
    blob.close()
    assert torch.equal(reader[:], data[:500])
    reader.close()
    assert torch.equal(stored(path), torch.cat([data[:100], -data[100:700]]))


def test_an_append_record_means_the_commit_it_abbreviates():
    B = 4
    cases = [  # (length, blocks, hwm, next_id, n)
        (0, [], {}, 0, 1),
        (0, [], {}, 3, 9),
        (5, [0, 1], {0: 4, 1: 1}, 2, 6),
        (5, [0, 1], {0: 4, 1: 1}, 2, 13),
        (8, [0, 7], {0: 4, 7: 4}, 9, 9),
    ]
    for length, blocks, hwm, next_id, n in cases:
        a = State(b"u", 1, length, list(blocks), dict(hwm), [], next_id)
        c = State(b"u", 1, length, list(blocks), dict(hwm), [], next_id)
        delta = c.append_delta(n, B)
        assert delta is not None
        wa = a.apply({"t": "a", "q": 7, "n": n}, B, "test")
        wc = c.apply({"t": "c", "q": 7, **delta}, B, "test")
        assert wa == wc
        assert (a.length, a.blocks, a.hwm, a.next_id, a.born, a.seq) == (
            c.length,
            c.blocks,
            c.hwm,
            c.next_id,
            c.born,
            c.seq,
        )
    # An append over rows a snapshot has seen (after a truncate) cannot be abbreviated.
    st = State(b"u", 1, 5, [0, 1], {0: 4, 1: 3}, [], 2)
    assert st.append_delta(6, B) is None
    with pytest.raises(tb_errors.CorruptBlobError, match="does not fit"):
        st.apply({"t": "a", "q": 1, "n": 6}, B, "test")


@given(
    start=st.integers(0, 13),
    steps=st.lists(st.integers(-1, 9), min_size=1, max_size=12),
    seen=st.integers(0, 3),
)
@settings(max_examples=300, deadline=None)
def test_a_run_of_append_records_replays_as_each_record_in_turn(start, steps, seen):
    # Replay applies a collector's run of append records in one pass
    # (State.apply_appends); it must equal applying them one by one: lengths,
    # slots, high-water marks, block births, sequence numbers and errors.
    B = 4
    k = -(-start // B)
    hwm = {b: min(B, start - b * B) for b in range(k)}
    if k:  # a snapshot may have seen rows past the length in the last block
        hwm[k - 1] = min(B, hwm[k - 1] + seen)
    recs, n = [], start
    for i, step in enumerate(steps):
        n = max(n + step, 0)  # a step of 0 or -1 makes a record that does not fit
        recs.append({"t": "a", "q": 3 + i, "n": n})

    def state() -> State:
        return State(b"u", 2, start, list(range(k)), dict(hwm), [], k)

    # The reference: each record expanded to the commit it abbreviates.
    one, run = state(), state()
    written, bad = set(), None
    for rec in recs:
        delta = one.append_delta(rec["n"], B)
        if delta is None:
            bad = rec["q"]
            break
        written.update(one.apply({"t": "c", "q": rec["q"], **delta}, B, "test"))
    if bad is None:
        assert set(run.apply_appends(recs, B, "test")) == written
        got = (run.length, run.blocks, run.hwm, run.next_id, run.born, run.seq)
        assert got == (one.length, one.blocks, one.hwm, one.next_id, one.born, one.seq)
    else:
        with pytest.raises(tb_errors.CorruptBlobError, match=f"append q={bad} to"):
            run.apply_appends(recs, B, "test")


def test_the_fast_append_frame_is_byte_for_byte_the_append_record_frame():
    edges = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]
    for salt in (0, 7, 2**32 - 1):
        _format._salt_crcs.clear()  # the first frame of a salt takes the slow path
        for n in edges:
            for q in edges[1:]:
                want = _format.encode_frame(salt, {"t": "a", "n": n, "q": q})
                assert _format.encode_append_frame(salt, n, q) == want, (salt, n, q)


def test_conjugate_views_are_stored_conjugated(path):
    data = torch.complex(rows(6), -rows(6))
    blob = new_blob(path, dtype=torch.complex64)
    blob.write(data[:3].conj())  # a lazily conjugated batch
    for i in range(3, 6):
        blob.write(data[i].conj())
    blob.close()
    assert torch.equal(stored(path), data.conj().resolve_conj())


def test_a_writer_upgrades_a_version_1_journal_before_appending_to_it(path):
    make_blob(path, rows(5))
    journal = os.path.join(path, "journal")
    with open(journal, "r+b") as f:  # the header CRC covers only the body: still valid
        f.seek(8)
        f.write((1).to_bytes(2, "little"))
    assert torch.equal(stored(path), rows(5))  # version 1 is still read
    with TensorBlob.open(path, "a") as blob:
        assert blob.recovery_actions == ["rewrote the manifest and journal in format version 2"]
        with open(journal, "rb") as f:
            assert f.read(10)[8:] == (2).to_bytes(2, "little")
        blob.write(rows(1, start=5)[0])  # an append record, now in a version 2 journal
    assert torch.equal(stored(path), rows(6))


def test_a_writer_removes_a_checkpoint_temp_file_left_beside_a_clean_journal(path):
    # A power cut during a recovery can drop the journal records that made the
    # blob unclean while keeping the recovery's half-written manifest.tmp.
    make_blob(path, rows(5))
    tmp = os.path.join(path, "manifest.tmp")
    with open(tmp, "wb") as f:
        f.write(b"TBLBMANI half a checkpoint")
    assert torch.equal(stored(path), rows(5))  # a reader ignores it and changes nothing
    assert os.path.exists(tmp)
    with TensorBlob.open(path, "a") as blob:
        assert "removed stray temporary file manifest.tmp" in blob.recovery_actions
    assert not os.path.exists(tmp)
    assert torch.equal(stored(path), rows(5))


def test_creating_a_blob_creates_its_missing_parent_directories_durably(tmp_path: Path) -> None:
    """As the original library does (its README writes "data/images.blob"); each new
    directory is made durable (its parent fsynced) before anything is created in it."""
    steps: list[tuple[str, str]] = []
    old = _durable.set_fault_hook(lambda step, p, _e: steps.append((step, p)))
    try:
        path = tmp_path / "data" / "run1" / "images.blob"
        with TensorBlob.open(path, "w", dtype="float32", shape=(3, 2)) as blob:
            blob.write(torch.ones(4, 3, 2))
    finally:
        _durable.set_fault_hook(old)
    made = [p for s, p in steps if s == "mkdir"][:2]
    assert made == [str(tmp_path / "data"), str(tmp_path / "data" / "run1")]
    for d in made:  # the new directory's own entry is made durable right after it
        i = steps.index(("mkdir", d))
        assert steps[i + 1] == ("fsync_dir", os.path.dirname(d))
    with TensorBlob.open(path, "r") as blob:
        assert torch.equal(blob[:], torch.ones(4, 3, 2))


@pytest.mark.parametrize("kind", ["tensor", "ndarray"])
def test_a_boolean_mask_selects_rows_as_in_torch(tmp_path: Path, kind: str) -> None:
    data = rows(9)
    keep = torch.tensor([i % 3 != 1 for i in range(9)])
    mask = keep if kind == "tensor" else keep.numpy()
    with TensorBlob.open(tmp_path / "b", "w", dtype="float32", shape=3, block_size=4) as blob:
        blob.write(data)
        assert torch.equal(blob[mask], data[keep])
        assert blob[torch.zeros(9, dtype=torch.bool)].shape == (0, 3)


def test_a_reopened_blob_sees_each_change_of_its_files_and_no_shared_state(tmp_path):
    """Metadata decoded once per set of bytes (design.md item 22) never hides a change."""
    path = str(tmp_path / "b")
    with TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4) as w:
        w.write(torch.zeros(5, 2, dtype=torch.int32))
    meta = read_meta(path)
    first = read_manifest(path, meta.uuid, 4)
    first.blocks.append(99)  # the caller's copy: the next read must not see this
    assert 99 not in read_manifest(path, meta.uuid, 4).blocks
    # Each session changes the journal; every few, close() checkpoints a new manifest.
    manifests = set()
    for n in range(6, 60):
        with TensorBlob.open(path, "a") as w:
            w.write(torch.full((1, 2), n, dtype=torch.int32))
        with TensorBlob.open(path, "r") as r:
            assert len(r) == n
            assert r[-1].tolist() == [n, n]
        with open(os.path.join(path, "manifest"), "rb") as f:
            manifests.add(f.read())
    assert len(manifests) > 1
    with open(os.path.join(path, "manifest"), "r+b") as f:  # the same size, one byte off
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(tb_errors.CorruptBlobError):
        read_manifest(path, meta.uuid, 4)


def _agree(path, meta):
    """``load`` with the caches as they are equals the reference; return it."""
    got = _snapshot.load(path, meta)
    want = _fresh(path, meta)
    assert got.journal == want.journal
    assert got.state == want.state
    assert (got.kept, got.discarded, got.dirty) == (want.kept, want.discarded, want.dirty)
    return got


def _fresh(path, meta):
    """``load`` with every decode and replay cache emptied first: the reference."""
    _journal._DECODED._last.clear()
    _snapshot._REPLAYED.clear()
    return _snapshot.load(path, meta)


def test_a_grown_journal_decoded_and_replayed_from_where_it_grew_equals_a_whole_one(tmp_path):
    """The journal decoded from where the last decoding ended, and the replay resumed
    after its last sync record (design.md item 22), give exactly what decoding and
    replaying the whole journal gives, for every way a journal changes."""
    path = str(tmp_path / "b")
    TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4).close()
    meta = read_meta(path)

    def agree():
        return _agree(path, meta)

    seen = set()
    for n in range(1, 120):  # sessions, some of several commits, a flush() or a truncate
        with TensorBlob.open(path, "a") as w:
            w.write(torch.full((1 + n % 3, 2), n, dtype=torch.int32))
            if n % 7 == 0:
                w.flush()
                w.write(torch.full((1, 2), -n, dtype=torch.int32))
            if n % 11 == 0:
                w.truncate(len(w) - 1)
            seen.add(len(agree().journal.records))
        agree()
    assert len(seen) > 10  # the journal grew and was checkpointed many times
    # A writer killed mid-session (its records and no sync record), then reopened.
    w = TensorBlob.open(path, "a")
    w.write(torch.ones(3, 2, dtype=torch.int32))
    w._abandon()
    assert not agree().clean
    with TensorBlob.open(path, "a") as w:
        assert w[-3:].tolist() == [[1, 1]] * 3
    agree()
    # Bytes inside the part decoded before: decoded again, whole.
    for n in range(2):
        with TensorBlob.open(path, "a") as w:
            w.write(torch.full((1, 2), n, dtype=torch.int32))
    jpath = os.path.join(path, "journal")
    before = agree()
    assert len(before.journal.records) > 2
    with open(jpath, "r+b") as f:
        f.seek(before.journal.end - 3)
        last = f.read(1)
        f.seek(before.journal.end - 3)
        f.write(bytes([last[0] ^ 0xFF]))
    after = agree()
    assert len(after.journal.records) == len(before.journal.records) - 1


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_a_replay_resumed_in_mid_session_equals_a_whole_one(tmp_path, sync, monkeypatch):
    """A reader that reloads after every commit of one long session resumes the replay
    where its last one ended, with no sync record in between (design.md item 22), and
    gets exactly what a whole replay gives: appends, overwrites, truncates, flush(),
    logged rows (``sync="full"``), a rotation, and the same journal seen after a reboot."""
    path = str(tmp_path / "b")
    w = TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4, sync=sync)
    meta = read_meta(path)

    def agree():
        return _agree(path, meta)

    resumed = dropped = 0
    for n in range(1, 160):
        if n % 13 == 0:
            w.flush()
        elif n % 17 == 0:
            w.truncate(len(w) - 2)
        elif n % 5 == 0:
            w.seek(max(0, len(w) - 5))
            w.write(torch.full((3, 2), -n, dtype=torch.int32))  # an overwrite across blocks
            w.seek(0, os.SEEK_END)
        else:
            w.write(torch.full((1 + n % 2, 2), n, dtype=torch.int32))
        hit = _snapshot._REPLAYED.get(path)
        got = agree()
        resumed += hit is not None and hit.scan.count < len(got.journal.records)
        if n % 40 == 3:  # the same records, seen by a process that believes the machine rebooted
            with fake_boot("another-boot"):
                seen = agree()  # normal: commits after the last durable point dropped;
                dropped += seen.discarded > 0 or bool(seen.state.logged)  # full: rows redone
            agree()
    assert resumed > 50
    assert dropped
    monkeypatch.setattr(_durability, "CHECKPOINT_RECORDS", 40)  # a rotation or a checkpoint
    for n in range(60):
        w.write(torch.full((1, 2), n, dtype=torch.int32))
        agree()
    w.close()
    agree()


def test_a_session_after_a_reboot_keeps_its_commits_after_the_old_boots_records(tmp_path):
    """F9: the boot rule looks only after the last durable marker. A collector started
    again after a reboot appends to a journal that holds closed sessions of the old boot;
    its commits, not yet durable, are kept by every reader of this boot, and after its
    death too (the page cache holds their rows)."""
    path = str(tmp_path / "b")
    with fake_boot("old-boot"):
        with TensorBlob.open(path, "w", dtype="int32", shape=2, block_size=4) as w:
            w.write(torch.zeros(3, 2, dtype=torch.int32))
        with TensorBlob.open(path, "a") as w:
            w.write(torch.ones(2, 2, dtype=torch.int32))
    meta = read_meta(path)
    w = TensorBlob.open(path, "a")
    for n in range(30):
        w.write(torch.full((1, 2), n, dtype=torch.int32))
        with TensorBlob.open(path, "r") as r:  # resumed from the last load after a few
            assert len(r) == 6 + n
        assert _fresh(path, meta).state.length == 6 + n
    boots = [r.get("b") for r in _snapshot.load(path, meta).journal.records if r["t"] == "o"]
    assert boots[0] == "old-boot"
    assert boots[-1] != "old-boot"
    w._abandon()  # killed
    with TensorBlob.open(path, "r") as r:
        assert len(r) == 35
        assert r[-1].tolist() == [29, 29]


def test_a_journal_replaced_by_another_history_of_the_same_manifest_is_replayed_whole(tmp_path):
    """Two copies of one blob, each with sessions of its own after the same checkpoint:
    the same manifest, journals with the same header and as many records. One journal
    copied over the other (a restore from a backup) is replayed whole, never resumed
    from what was replayed of the other."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with TensorBlob.open(a, "w", dtype="int32", shape=1, block_size=4) as w:
        w.write(torch.zeros(2, 1, dtype=torch.int32))
    shutil.copytree(a, b)
    for path, n in ((a, 1), (b, 3)):
        for _ in range(8):  # 24 records: enough for the replay to be remembered
            with TensorBlob.open(path, "a") as w:
                w.write(torch.full((n, 1), n, dtype=torch.int32))
    meta = read_meta(a)
    assert _snapshot.load(a, meta).state.length == 10
    assert _snapshot.load(b, meta).state.length == 26
    shutil.copyfile(os.path.join(b, "journal"), os.path.join(a, "journal"))
    got = _snapshot.load(a, meta)
    assert got.state.length == 26
    assert got.state == _fresh(a, meta).state


def test_a_transaction_entered_and_dropped_is_over_at_once(path):
    """guide.md: ``blob.transaction().__enter__()`` with the object dropped is rolled back
    when Python closes it, at once; the next write is a transaction of its own."""
    with TensorBlob.open(path, "w", dtype="float32", shape=(2,)) as blob:
        blob.write(torch.zeros(2))
        blob.transaction().__enter__()
        blob.write(torch.ones(3, 2))
        with TensorBlob.open(path, "r") as reader:
            assert len(reader) == 4  # committed already: no transaction was open
        with blob.transaction():  # and a new one starts cleanly
            blob.write(torch.ones(2))
    with TensorBlob.open(path, "r") as reader:
        assert len(reader) == 5
