"""Contract G5: every bad input raises a clear tensorblob error and changes no file.

Each case checks three things: the exception is the specific class from
``tensorblob.errors`` *and* the standard-library type a caller would catch;
its message names the blob path or the argument at fault; and every file
under ``tmp_path`` (the blob, its neighbours) is byte-for-byte and
mtime-for-mtime what it was before, with no file or directory added or
removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from tensorblob import (
    BlobClosedError,
    BlobNotFoundError,
    BlobTypeError,
    CorruptBlobError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    LockTimeoutError,
    NotABlobError,
    ShapeMismatchError,
    TensorBlob,
    TensorBlobError,
    TensorDB,
    UnsupportedOperationError,
    UnsupportedVersionError,
)

N_ROWS = 10
BLOCK = 4
SHAPE = (3,)
MODES = ["r", "w", "a", "r+", "w+", "a+"]
WRITABLE = ["r+", "w", "w+", "a", "a+"]


# -- helpers ---------------------------------------------------------------


def rows(n: int, start: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.arange(start * 3, (start + n) * 3, dtype=torch.int64).reshape(n, 3).to(dtype)


def snapshot(root: Path) -> dict[str, object]:
    """Every directory's entries, and every file's bytes and mtime, under ``root``."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[f"{rel}/"] = sorted(dirnames + filenames)
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                data = f.read()
            out[os.path.join(rel, name)] = (data, os.stat(full).st_mtime_ns)
    return out


@contextlib.contextmanager
def unchanged(root: Path) -> Iterator[None]:
    """Assert that nothing under ``root`` changes inside the block."""
    before = snapshot(root)
    yield
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"files changed: {changed}"


def expect(
    root: Path,
    exc: type[TensorBlobError],
    std: type[BaseException],
    fragment: str,
    fn: Callable[[], object],
) -> TensorBlobError:
    """Run ``fn``: it must raise ``exc`` (also a ``std``) naming ``fragment``, changing no file."""
    assert issubclass(exc, TensorBlobError)
    with unchanged(root), pytest.raises(exc) as info:
        fn()
    err = info.value
    assert isinstance(err, std), f"{type(err).__name__} is not a {std.__name__}"
    assert fragment in str(err), f"{fragment!r} not in message {str(err)!r}"
    return err


def make_blob(path: Path, n: int = N_ROWS) -> None:
    with TensorBlob.open(path, "w", dtype="float32", shape=SHAPE, block_size=BLOCK) as blob:
        blob.write(rows(n))


def contents(path: Path) -> torch.Tensor:
    with TensorBlob.open(path, "r") as blob:
        return blob[:]


@pytest.fixture
def blob_path(tmp_path: Path) -> Path:
    """A closed blob of 10 float32 rows of shape (3,), block size 4 (three blocks)."""
    path = tmp_path / "blob"
    with TensorBlob.open(path, "w", dtype="float32", shape=SHAPE, block_size=BLOCK) as blob:
        blob.write(rows(N_ROWS))
    return path


@pytest.fixture
def writer(blob_path: Path) -> Iterator[TensorBlob]:
    """The blob open in r+ with the cursor at row 2."""
    with TensorBlob.open(blob_path, "r+") as blob:
        blob.seek(2)
        yield blob


@pytest.fixture
def reader(blob_path: Path) -> Iterator[TensorBlob]:
    """The blob open in r with the cursor at row 2."""
    with TensorBlob.open(blob_path, "r") as blob:
        blob.seek(2)
        yield blob


def assert_intact(blob: TensorBlob, pos: int = 2) -> None:
    """The open handle still shows the original rows and cursor."""
    assert len(blob) == N_ROWS
    assert blob.tell() == pos
    assert torch.equal(blob[:], rows(N_ROWS))


# -- open(): bad arguments -------------------------------------------------

BAD_OPEN_ARGS = [
    ("mode", "x"),
    ("mode", "rw"),
    ("mode", "r++"),
    ("mode", ""),
    ("mode", "rb"),
    ("mode", "W"),
    ("mode", None),
    ("mode", 5),
    ("sync", "always"),
    ("sync", None),
    ("sync", True),
    ("dtype", "float33"),
    ("dtype", "Tensor"),
    ("dtype", ""),
    ("dtype", "qint8"),  # quantized: a row's bytes lose its scale (reads crashed)
    ("dtype", torch.quint8),
    ("dtype", torch.qint32),
    ("dtype", "bits8"),
    ("dtype", torch.uint4),  # sub-byte
    ("dtype", "float4_e2m1fn_x2"),
    ("shape", 0),
    ("shape", -3),
    ("shape", (3, 0)),
    ("shape", (2, -1)),
    ("shape", 2.5),
    ("shape", "3"),
    ("shape", (2.0,)),
    ("shape", True),
    ("shape", (True, 2)),
    ("block_size", 0),
    ("block_size", -1),
    ("block_size", True),
    ("block_size", "8"),
    ("block_size", 8.0),
    ("max_cached_blocks", 0),
    ("max_cached_blocks", -2),
    ("max_cached_blocks", 1.5),
    ("max_cached_blocks", True),
    ("timeout", -1),
    ("timeout", -0.001),
    ("timeout", "1"),
    ("timeout", float("nan")),
    ("timeout", True),
    ("block_size", 2**61),  # 2**63 bytes a block: past what a block may have
]


@pytest.mark.parametrize("value", [5, np.float32, None.__class__], ids=repr)
def test_a_dtype_of_the_wrong_type_is_a_type_error(tmp_path, blob_path, value):
    expect(
        tmp_path,
        BlobTypeError,
        TypeError,
        "dtype must be str or torch.dtype",
        lambda: TensorBlob.open(tmp_path / "new", "w", dtype=value, shape=3),
    )
    assert not (tmp_path / "new").exists()
    expect(
        tmp_path,
        BlobTypeError,
        TypeError,
        "dtype",
        lambda: TensorBlob.open(blob_path, "w", dtype=value),
    )
    assert torch.equal(contents(blob_path), rows(N_ROWS))


@pytest.mark.parametrize(("arg", "value"), BAD_OPEN_ARGS, ids=repr)
def test_a_bad_open_argument_is_refused_before_creating_anything(tmp_path, arg, value):
    path = tmp_path / "new"
    kw = {"mode": "w", "dtype": "float32", "shape": 3, "block_size": 4, arg: value}
    mode = kw.pop("mode")
    expect(
        tmp_path, InvalidArgumentError, ValueError, arg, lambda: TensorBlob.open(path, mode, **kw)
    )
    assert not path.exists()


@pytest.mark.parametrize(("arg", "value"), BAD_OPEN_ARGS, ids=repr)
def test_a_bad_open_argument_leaves_an_existing_blob_alone(blob_path, arg, value):
    kw = {"mode": "w", arg: value}
    mode = kw.pop("mode")
    expect(
        blob_path.parent,
        InvalidArgumentError,
        ValueError,
        arg,
        lambda: TensorBlob.open(blob_path, mode, **kw),
    )
    assert torch.equal(contents(blob_path), rows(N_ROWS))


@pytest.mark.parametrize("bad", [None, 123, 1.5, ["a"]], ids=repr)
def test_a_path_of_the_wrong_type_is_refused(tmp_path, bad):
    expect(tmp_path, BlobTypeError, TypeError, "path", lambda: TensorBlob.open(bad, "r"))
    expect(
        tmp_path,
        BlobTypeError,
        TypeError,
        "path",
        lambda: TensorBlob.open(bad, "w", dtype="float32", shape=3),
    )
    expect(tmp_path, BlobTypeError, TypeError, "path", lambda: TensorBlob.unlink(bad))


# -- open(): the path is missing, a file, or not a blob ----------------------


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_read_modes_on_a_missing_path_raise_blob_not_found(tmp_path, mode):
    path = tmp_path / "missing"
    expect(
        tmp_path,
        BlobNotFoundError,
        FileNotFoundError,
        str(path),
        lambda: TensorBlob.open(path, mode, dtype="float32", shape=3),
    )
    assert not path.exists()


@pytest.mark.parametrize("cls", [TensorBlob, TensorDB])
@pytest.mark.parametrize("mode", ["r", "r+", "a"])
def test_an_empty_directory_is_no_blob_in_every_mode_that_cannot_create(tmp_path, cls, mode):
    """As for "a" without a layout: where a blob may be created, not a foreign directory
    (r and r+ said NotABlobError)."""
    (tmp_path / "empty").mkdir()
    expect(
        tmp_path,
        BlobNotFoundError,
        FileNotFoundError,
        str(tmp_path / "empty"),
        lambda: cls.open(tmp_path / "empty", mode),
    )
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.parametrize("mode", ["w", "w+", "a", "a+"])
@pytest.mark.parametrize("missing", ["dtype", "shape"])
def test_creating_without_dtype_or_shape_is_refused(tmp_path, mode, missing):
    path = tmp_path / "new"
    kw = {"dtype": "float32", "shape": 3}
    del kw[missing]
    # "w" needs a layout; "a" without one is taken for a wrong path to an existing blob
    exc, std = (InvalidArgumentError, ValueError)
    if mode[0] == "a":
        exc, std = BlobNotFoundError, FileNotFoundError
    expect(tmp_path, exc, std, missing, lambda: TensorBlob.open(path, mode, **kw))
    assert not path.exists()


def test_creating_under_a_file_is_refused_and_changes_nothing(tmp_path):
    (tmp_path / "file").write_bytes(b"precious")
    path = tmp_path / "file" / "sub" / "blob"
    expect(
        tmp_path,
        NotABlobError,
        ValueError,
        str(tmp_path / "file"),
        lambda: TensorBlob.open(path, "w", dtype="float32", shape=3),
    )


def test_reading_under_a_missing_directory_raises_blob_not_found(tmp_path):
    path = tmp_path / "no" / "such" / "blob"
    expect(
        tmp_path,
        BlobNotFoundError,
        FileNotFoundError,
        str(path),
        lambda: TensorBlob.open(path, "r"),
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_regular_file_is_not_a_blob(tmp_path, mode):
    path = tmp_path / "file.bin"
    path.write_bytes(b"precious data")
    expect(
        tmp_path,
        NotABlobError,
        ValueError,
        str(path),
        lambda: TensorBlob.open(path, mode, dtype="float32", shape=3),
    )
    expect(tmp_path, NotABlobError, ValueError, str(path), lambda: TensorBlob.unlink(path))
    assert path.read_bytes() == b"precious data"


FOREIGN_DIRS: dict[str, dict[str, bytes | None]] = {
    "a-text-file": {"notes.txt": b"keep me"},
    "a-subdirectory": {"sub": None},
    "a-garbage-meta": {"meta": b"hello, this is not a tensorblob meta file at all"},
    "a-short-meta": {"meta": b"hey"},
    "a-meta-directory": {"meta": None},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", FOREIGN_DIRS, ids=str)
def test_a_foreign_directory_is_refused_and_never_wiped(tmp_path, mode, layout):
    path = tmp_path / "mine"
    path.mkdir()
    for name, data in FOREIGN_DIRS[layout].items():
        if data is None:
            (path / name).mkdir()
        else:
            (path / name).write_bytes(data)
    expect(
        tmp_path,
        NotABlobError,
        ValueError,
        str(path),
        lambda: TensorBlob.open(path, mode, dtype="float32", shape=3, block_size=4),
    )
    expect(tmp_path, NotABlobError, ValueError, str(path), lambda: TensorBlob.unlink(path))


@pytest.mark.parametrize("where", [".", "blocks"])
def test_unlink_refuses_a_blob_holding_foreign_files(blob_path, where):
    (blob_path / where / "notes.txt").write_text("keep me")
    expect(
        blob_path.parent,
        NotABlobError,
        ValueError,
        "notes.txt",
        lambda: TensorBlob.unlink(blob_path),
    )


def test_unlink_of_a_missing_path_raises_blob_not_found(tmp_path):
    path = tmp_path / "missing"
    expect(
        tmp_path, BlobNotFoundError, FileNotFoundError, str(path), lambda: TensorBlob.unlink(path)
    )


CONFLICTS = [
    ("dtype", "float64"),
    ("dtype", torch.int32),
    ("shape", 4),
    ("shape", (3, 1)),
    ("shape", ()),
    ("block_size", 8),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("arg", "value"), CONFLICTS, ids=repr)
def test_a_layout_conflicting_with_the_existing_blob_is_refused(blob_path, mode, arg, value):
    err = expect(
        blob_path.parent,
        InvalidArgumentError,
        ValueError,
        arg,
        lambda: TensorBlob.open(blob_path, mode, **{arg: value}),
    )
    assert str(blob_path) in str(err)
    assert torch.equal(contents(blob_path), rows(N_ROWS))


# -- write -----------------------------------------------------------------


@pytest.mark.parametrize(
    "t",
    [
        rows(2, dtype=torch.float64),
        rows(2, dtype=torch.float16),
        rows(2, dtype=torch.int64),
        torch.zeros(3, dtype=torch.int32),
        torch.zeros(3, dtype=torch.bool),
        torch.zeros(3, dtype=torch.complex64),
    ],
    ids=lambda t: str(t.dtype),
)
def test_write_with_the_wrong_dtype_is_refused_and_never_cast(blob_path, writer, t):
    expect(blob_path.parent, DTypeMismatchError, TypeError, "dtype", lambda: writer.write(t))
    assert_intact(writer)
    assert writer.write(rows(1, start=500)) == 1  # the handle stays usable


@pytest.mark.parametrize(
    "t",
    [
        torch.zeros(2, 5),
        torch.zeros(7),
        torch.zeros(4),
        torch.zeros(()),
        torch.zeros(2, 3, 1),
        torch.zeros(3, 1),
        torch.zeros(1, 1, 3),
        torch.zeros(0, 5),
    ],
    ids=lambda t: str(tuple(t.shape)),
)
def test_write_with_the_wrong_shape_is_refused(blob_path, writer, t):
    expect(blob_path.parent, ShapeMismatchError, ValueError, "shape", lambda: writer.write(t))
    assert_intact(writer)


@pytest.mark.parametrize(
    "t",
    [[1.0, 2.0, 3.0], np.zeros(3, dtype=np.float32), None, 1.0, "abc", (1.0, 2.0, 3.0)],
    ids=lambda t: type(t).__name__,
)
def test_write_of_something_that_is_not_a_tensor_is_refused(blob_path, writer, t):
    expect(blob_path.parent, BlobTypeError, TypeError, "Tensor", lambda: writer.write(t))
    assert_intact(writer)


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: torch.zeros(2, 3, device="meta"), "meta device"),
        (lambda: torch.zeros(2, 3).to_sparse(), "sparse_coo"),
        (lambda: torch.zeros(2, 3).to_sparse_csr(), "sparse_csr"),
    ],
    ids=["meta", "sparse_coo", "sparse_csr"],
)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_write_of_a_tensor_without_dense_data_is_refused(blob_path, writer, make, said):
    t = make()
    err = expect(blob_path.parent, BlobTypeError, TypeError, said, lambda: writer.write(t))
    assert "dense" in str(err)
    assert_intact(writer)


@pytest.mark.parametrize("timeout", [-1, float("nan"), True, "1"], ids=repr)
def test_unlink_with_a_bad_timeout_is_refused(blob_path, timeout):
    expect(
        blob_path.parent,
        InvalidArgumentError,
        ValueError,
        "timeout",
        lambda: TensorBlob.unlink(blob_path, timeout=timeout),
    )


@pytest.mark.parametrize("inside", ["blocks/new", "new", "blocks/a/b"])
def test_creating_a_blob_inside_another_blob_is_refused(blob_path, inside):
    """A blob's directory holds only its own files: another blob, a database or a copy
    made in it would be a foreign file to it (check warns, unlink refuses)."""
    from tensorblob import TensorDB, copy_blob  # noqa: PLC0415 - this test only

    new = blob_path / inside
    for make in (
        lambda: TensorBlob.open(new, "w", dtype="float32", shape=3),
        lambda: TensorBlob.open(new, "a", dtype="float32", shape=3),
        lambda: TensorDB.open(new, "w", schema={"x": ("float32", 3)}),
        lambda: copy_blob(blob_path, new),
    ):
        err = expect(blob_path.parent, InvalidArgumentError, ValueError, str(blob_path), make)
        assert "inside the blob" in str(err)
    assert torch.equal(contents(blob_path), rows(N_ROWS))


# -- mode permissions ------------------------------------------------------


def _other(blob_path: Path) -> TensorBlob:
    other_path = blob_path.parent / "other"
    make_blob(other_path, 5)
    return TensorBlob.open(other_path, "r")


def _enter_transaction(blob: TensorBlob) -> None:
    with blob.transaction():
        pass


@pytest.mark.parametrize(
    "call",
    [
        lambda b, o: b.write(rows(1)),
        lambda b, o: b.write(torch.empty(0, 3)),
        lambda b, o: b.truncate(),
        lambda b, o: b.truncate(0),
        lambda b, o: b.truncate(100),
        lambda b, o: b.extend(o),
        lambda b, o: b.extend(o, maintain_order=False),
        lambda b, o: _enter_transaction(b),
    ],
    ids=[
        "write",
        "write-empty",
        "truncate",
        "truncate-0",
        "truncate-past-end",
        "extend",
        "extend-unordered",
        "transaction",
    ],
)
def test_changing_a_blob_opened_read_only_is_unsupported(blob_path, reader, call):
    with _other(blob_path) as other:
        expect(
            blob_path.parent,
            UnsupportedOperationError,
            io.UnsupportedOperation,
            str(blob_path),
            lambda: call(reader, other),
        )
    assert_intact(reader)


@pytest.mark.parametrize("mode", ["w", "a"])
@pytest.mark.parametrize(
    "call",
    [lambda b: b.read(), lambda b: b.read(1), lambda b: b.read(0), list],
    ids=["read", "read-1", "read-0", "iterate"],
)
def test_reading_a_blob_opened_write_only_is_unsupported(blob_path, mode, call):
    with TensorBlob.open(blob_path, mode) as blob:
        pos = blob.tell()
        expect(
            blob_path.parent,
            UnsupportedOperationError,
            io.UnsupportedOperation,
            str(blob_path),
            lambda: call(blob),
        )
        assert blob.tell() == pos


# -- indexing --------------------------------------------------------------

OUT_OF_RANGE = [
    (10, "10"),
    (-11, "-11"),
    (10**6, "1000000"),
    (np.int64(10), "10"),
    (torch.tensor(10), "10"),
    (torch.tensor(-11), "-11"),
    ([0, 10], "10"),
    ([-11], "-11"),
    ((3, 10, 1), "10"),
    (torch.tensor([1, 10]), "10"),
    (torch.tensor([-11, 0]), "-11"),
    (np.array([10]), "10"),
    (np.array([-11, 2]), "-11"),
    (np.array([2**64 - 1], dtype=np.uint64), "18446744073709551615"),  # not wrapped to -1
    (np.array([0, 2**63], dtype=np.uint64), "9223372036854775808"),
    (torch.from_numpy(np.array([2**64 - 7], dtype=np.uint64)), "18446744073709551609"),
    ([2**64 - 1], "18446744073709551615"),  # past int64
    ([0, -(2**70)], str(-(2**70))),
]


@pytest.mark.parametrize(("key", "shown"), OUT_OF_RANGE, ids=repr)
def test_an_out_of_range_index_raises_invalid_index(blob_path, reader, key, shown):
    err = expect(
        blob_path.parent, InvalidIndexError, IndexError, str(blob_path), lambda: reader[key]
    )
    assert shown in str(err)
    assert_intact(reader)


def test_any_index_on_an_empty_blob_is_out_of_range(tmp_path):
    path = tmp_path / "empty"
    make_blob(path, 0)
    with TensorBlob.open(path, "r") as blob:
        for key in (0, -1, [0], torch.tensor([0])):
            expect(tmp_path, InvalidIndexError, IndexError, str(path), lambda k=key: blob[k])


BAD_INDEX_TYPES = [
    1.5,
    np.float64(1.0),
    "0",
    True,
    False,
    np.True_,
    None,
    Ellipsis,
    {0},
    [0, 1.5],
    [True],
    ["a"],
    [[0, 1]],
    torch.tensor([0.0, 1.0]),
    torch.tensor(1.0),
    torch.tensor(True),
    torch.tensor([1 + 0j]),
    np.array([0.5]),
    np.array(1.0),
    np.array(True),
    torch.tensor([1], device="meta"),  # no data to read positions from
    torch.tensor(1, device="meta"),
    torch.tensor([1, 0]).to_sparse(),
]


@pytest.mark.parametrize("key", BAD_INDEX_TYPES, ids=repr)
def test_an_index_of_an_unsupported_type_raises_a_type_error(blob_path, reader, key):
    expect(blob_path.parent, BlobTypeError, TypeError, "ndex", lambda: reader[key])
    assert_intact(reader)


@pytest.mark.parametrize("key", [torch.tensor([[0, 1]]), np.array([[0, 1]])], ids=repr)
def test_an_index_of_more_than_one_dimension_is_refused(blob_path, reader, key):
    expect(blob_path.parent, InvalidArgumentError, ValueError, "1-dimensional", lambda: reader[key])
    assert_intact(reader)


@pytest.mark.parametrize(
    "key",
    [
        slice(0.5, 2),
        slice("a", None),
        slice(None, None, 1.0),
        slice(None, None, True),  # a bool is not an int here either
        slice(True, None),
    ],
    ids=repr,
)
def test_a_slice_with_non_integer_bounds_raises_a_blob_type_error(blob_path, reader, key):
    expect(blob_path.parent, BlobTypeError, TypeError, "slice", lambda: reader[key])
    assert_intact(reader)


def test_a_slice_with_step_zero_raises_a_blob_value_error(blob_path, reader):
    expect(blob_path.parent, TensorBlobError, ValueError, "step", lambda: reader[::0])
    assert_intact(reader)


# -- seek, read, truncate arguments ------------------------------------------


@pytest.mark.parametrize("whence", [3, -1, 10, None, "0", True, np.True_, 0.0], ids=repr)
def test_seek_with_a_bad_whence_is_refused(blob_path, reader, whence):
    expect(
        blob_path.parent, InvalidArgumentError, ValueError, "whence", lambda: reader.seek(0, whence)
    )
    assert_intact(reader)


NOT_INTS = [1.5, "1", None, True, np.True_, torch.tensor(1.0), [1]]
NOT_INTS += [torch.tensor(True), torch.tensor([3])]  # torch takes them as ints


@pytest.mark.parametrize("pos", NOT_INTS, ids=repr)
def test_seek_to_a_non_integer_position_is_refused(blob_path, reader, pos):
    expect(blob_path.parent, BlobTypeError, TypeError, "seek(pos)", lambda: reader.seek(pos))
    assert_intact(reader)


@pytest.mark.parametrize("whence", [np.int64(0), np.int32(1), np.uint8(2)], ids=repr)
def test_seek_takes_a_numpy_integer_whence(reader, whence):
    assert reader.seek(1, whence) == [1, 3, N_ROWS][int(whence)]


@pytest.mark.parametrize("size", [1.5, "2", True, [1]], ids=repr)
def test_read_of_a_non_integer_size_is_refused(blob_path, reader, size):
    expect(blob_path.parent, BlobTypeError, TypeError, "read(size)", lambda: reader.read(size))
    assert_intact(reader)


@pytest.mark.parametrize("pos", [-1, -100], ids=repr)
def test_truncate_to_a_negative_size_is_refused(blob_path, writer, pos):
    expect(
        blob_path.parent, InvalidArgumentError, ValueError, "truncate", lambda: writer.truncate(pos)
    )
    assert_intact(writer)


@pytest.mark.parametrize("pos", [1.5, "3", True, torch.tensor(True), torch.tensor([4])], ids=repr)
def test_truncate_to_a_non_integer_size_is_refused(blob_path, writer, pos):
    expect(blob_path.parent, BlobTypeError, TypeError, "truncate", lambda: writer.truncate(pos))
    assert_intact(writer)


# -- extend ----------------------------------------------------------------


@pytest.mark.parametrize("other", [rows(3), [rows(3)], None, "other"], ids=repr)
@pytest.mark.parametrize("ordered", [True, False])
def test_extend_with_something_that_is_not_a_blob_is_refused(blob_path, writer, other, ordered):
    expect(
        blob_path.parent,
        BlobTypeError,
        TypeError,
        "TensorBlob",
        lambda: writer.extend(other, maintain_order=ordered),
    )
    assert_intact(writer)


@pytest.mark.parametrize("dtype", ["float64", "int32", "bfloat16"])
@pytest.mark.parametrize("ordered", [True, False])
def test_extend_with_a_blob_of_another_dtype_is_refused(blob_path, writer, dtype, ordered):
    other_path = blob_path.parent / "other"
    with TensorBlob.open(other_path, "w", dtype=dtype, shape=SHAPE, block_size=BLOCK) as o:
        o.write(torch.zeros(9, 3, dtype=o.dtype))
    with TensorBlob.open(other_path, "r") as other:
        expect(
            blob_path.parent,
            DTypeMismatchError,
            TypeError,
            "dtype",
            lambda: writer.extend(other, maintain_order=ordered),
        )
    assert_intact(writer)


@pytest.mark.parametrize("shape", [(4,), (3, 1), (), (1, 3)], ids=repr)
@pytest.mark.parametrize("ordered", [True, False])
def test_extend_with_a_blob_of_another_row_shape_is_refused(blob_path, writer, shape, ordered):
    other_path = blob_path.parent / "other"
    with TensorBlob.open(other_path, "w", dtype="float32", shape=shape, block_size=BLOCK) as o:
        o.write(torch.zeros(9, *shape))
    with TensorBlob.open(other_path, "r") as other:
        expect(
            blob_path.parent,
            ShapeMismatchError,
            ValueError,
            "shape",
            lambda: writer.extend(other, maintain_order=ordered),
        )
    assert_intact(writer)


def test_extend_with_a_closed_blob_is_refused(blob_path, writer):
    other = _other(blob_path)
    other.close()
    expect(
        blob_path.parent,
        BlobClosedError,
        ValueError,
        str(blob_path.parent / "other"),
        lambda: writer.extend(other),
    )
    assert_intact(writer)


@pytest.mark.parametrize("ordered", [True, False])
def test_extend_from_a_handle_inside_a_transaction_is_refused(blob_path, writer, ordered):
    """Its rows are not committed: copied, they would stay after it rolls back."""
    make_blob(blob_path.parent / "other", 5)
    with TensorBlob.open(blob_path.parent / "other", "a") as other:

        def refused_then_rolled_back() -> None:
            with other.transaction():
                other.write(rows(6, 5))
                expect(
                    blob_path.parent,
                    InvalidArgumentError,
                    ValueError,
                    "transaction",
                    lambda: writer.extend(other, maintain_order=ordered),
                )
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            refused_then_rolled_back()
        assert_intact(writer)
        assert writer.extend(other, maintain_order=ordered) == 5  # committed: copied
    assert len(contents(blob_path)) == N_ROWS + 5


# -- a closed blob ---------------------------------------------------------

CLOSED_CALLS: dict[str, Callable[[TensorBlob, TensorBlob], object]] = {
    "len": lambda b, o: len(b),
    "read": lambda b, o: b.read(),
    "read-1": lambda b, o: b.read(1),
    "write": lambda b, o: b.write(rows(1)),
    "seek": lambda b, o: b.seek(0),
    "tell": lambda b, o: b.tell(),
    "getitem-int": lambda b, o: b[0],
    "getitem-slice": lambda b, o: b[0:2],
    "getitem-list": lambda b, o: b[[0, 1]],
    "truncate": lambda b, o: b.truncate(0),
    "truncate-at-cursor": lambda b, o: b.truncate(),
    "extend": lambda b, o: b.extend(o),
    "flush": lambda b, o: b.flush(),
    "iterate": lambda b, o: next(iter(b)),
    "for-loop": lambda b, o: [r for r in b],  # noqa: C416
    "transaction": lambda b, o: _enter_transaction(b),
    "with": lambda b, o: b.__enter__(),  # as an io file's
}


@pytest.mark.parametrize("mode", ["r", "r+", "a+"])
@pytest.mark.parametrize("name", CLOSED_CALLS)
def test_every_call_on_a_closed_blob_raises_blob_closed(blob_path, mode, name):
    blob = TensorBlob.open(blob_path, mode)
    blob.close()
    with _other(blob_path) as other:
        expect(
            blob_path.parent,
            BlobClosedError,
            ValueError,
            str(blob_path),
            lambda: CLOSED_CALLS[name](blob, other),
        )
    assert torch.equal(contents(blob_path), rows(N_ROWS))


def test_iter_on_a_closed_blob_raises_at_once_like_a_closed_file(blob_path):
    # io: iter() of a closed file raises ValueError immediately, not at the first next().
    blob = TensorBlob.open(blob_path, "r")
    blob.close()
    expect(blob_path.parent, BlobClosedError, ValueError, str(blob_path), lambda: iter(blob))


@pytest.mark.parametrize("mode", MODES)
def test_closing_twice_is_allowed(blob_path, mode):
    blob = TensorBlob.open(blob_path, mode)
    blob.close()
    with unchanged(blob_path.parent):
        blob.close()
        blob.close()
    assert blob.closed


# -- the writer lock -------------------------------------------------------


@pytest.mark.parametrize("mode", WRITABLE)
def test_a_second_writer_times_out_and_changes_nothing(blob_path, writer, mode):
    err = expect(
        blob_path.parent,
        LockTimeoutError,
        TimeoutError,
        str(blob_path),
        lambda: TensorBlob.open(blob_path, mode, timeout=0.2),
    )
    assert "0.2" in str(err)
    assert_intact(writer)
    # the first writer keeps working, and a reader is never blocked
    writer.seek(0, io.SEEK_END)
    writer.write(rows(1, start=500))
    with TensorBlob.open(blob_path, "r", timeout=0) as r:
        assert len(r) == N_ROWS + 1


def test_unlink_times_out_while_a_writer_is_open(blob_path, writer):
    expect(
        blob_path.parent,
        LockTimeoutError,
        TimeoutError,
        str(blob_path),
        lambda: TensorBlob.unlink(blob_path, timeout=0.2),
    )
    assert_intact(writer)


# -- damaged files ---------------------------------------------------------

HEADER = struct.Struct("<8sHHII")


def _edit(path: Path, fn: Callable[[bytearray], bytes | bytearray | None]) -> None:
    data = bytearray(path.read_bytes())
    out = fn(data)
    path.write_bytes(bytes(data if out is None else out))


def _flip_middle(data: bytearray) -> None:
    data[len(data) // 2] ^= 0xFF


def _set_version(version: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        struct.pack_into("<H", data, 8, version)

    return edit


def _rebody(fn: Callable[[object], object] | None = None, raw: bytes | None = None):
    """Replace the msgpack body, keeping the header's CRC and length valid."""

    def edit(data: bytearray) -> bytes:
        magic, version, reserved, length, _crc = HEADER.unpack_from(data)
        rest = bytes(data[HEADER.size + length :])
        if raw is not None:
            body = raw
        else:
            assert fn is not None
            obj = msgpack.unpackb(bytes(data[HEADER.size : HEADER.size + length]), raw=False)
            body = msgpack.packb(fn(obj), use_bin_type=True)
        return HEADER.pack(magic, version, reserved, len(body), zlib.crc32(body)) + body + rest

    return edit


def _xor(data: bytearray, at: int) -> bytearray:
    data[at] ^= 0x5A
    return data


def _with(**changes):
    def change(obj):
        obj = dict(obj)
        obj.update(changes)
        return obj

    return change


CORRUPTIONS: dict[str, tuple[str, Callable | None, type[TensorBlobError]]] = {
    # file, edit (None: delete the file), expected error
    "manifest-byte-flipped": ("manifest", _flip_middle, CorruptBlobError),
    "manifest-truncated-half": ("manifest", lambda d: d[: len(d) // 2], CorruptBlobError),
    "manifest-truncated-header": ("manifest", lambda d: d[:10], CorruptBlobError),
    "manifest-empty": ("manifest", lambda d: b"", CorruptBlobError),
    "manifest-missing": ("manifest", None, CorruptBlobError),
    "manifest-bad-magic": ("manifest", lambda d: b"NOTMAGIC" + d[8:], CorruptBlobError),
    "manifest-trailing-bytes": ("manifest", lambda d: d + b"\x00junk", CorruptBlobError),
    "manifest-body-not-msgpack": ("manifest", _rebody(raw=b"\xc1\xc1\xc1"), CorruptBlobError),
    "manifest-body-not-a-map": ("manifest", _rebody(raw=msgpack.packb([1, 2])), CorruptBlobError),
    "manifest-length-too-big": ("manifest", _rebody(_with(length=100)), CorruptBlobError),
    "manifest-length-wrong-type": ("manifest", _rebody(_with(length="ten")), CorruptBlobError),
    "manifest-blocks-repeated": ("manifest", _rebody(_with(blocks=[0, 0, 0])), CorruptBlobError),
    "manifest-hwm-short": ("manifest", _rebody(_with(hwm=[4])), CorruptBlobError),
    "manifest-uuid-foreign": ("manifest", _rebody(_with(uuid=b"\x01" * 16)), CorruptBlobError),
    "manifest-version-99": ("manifest", _set_version(99), UnsupportedVersionError),
    "journal-header-garbage": ("journal", lambda d: b"\xde\xad" * 10 + d[20:], CorruptBlobError),
    "journal-header-body-flipped": ("journal", lambda d: _xor(d, 24), CorruptBlobError),
    "journal-truncated-header": ("journal", lambda d: d[:12], CorruptBlobError),
    "journal-empty": ("journal", lambda d: b"", CorruptBlobError),
    "journal-missing": ("journal", None, CorruptBlobError),
    "journal-salt-wrong-type": ("journal", _rebody(_with(salt="x")), CorruptBlobError),
    "journal-uuid-foreign": ("journal", _rebody(_with(uuid=b"\x01" * 16)), CorruptBlobError),
    "journal-version-99": ("journal", _set_version(99), UnsupportedVersionError),
    "meta-byte-flipped": ("meta", _flip_middle, CorruptBlobError),
    "meta-truncated": ("meta", lambda d: d[:30], CorruptBlobError),
    "meta-truncated-header": ("meta", lambda d: d[:12], CorruptBlobError),
    "meta-trailing-bytes": ("meta", lambda d: d + b"\x00", CorruptBlobError),
    "meta-body-not-msgpack": ("meta", _rebody(raw=b"\xc1"), CorruptBlobError),
    "meta-bad-dtype": ("meta", _rebody(_with(dtype="float33")), CorruptBlobError),
    "meta-dtype-not-a-dtype": ("meta", _rebody(_with(dtype="Tensor")), CorruptBlobError),
    "meta-zero-shape": ("meta", _rebody(_with(shape=[0])), CorruptBlobError),
    "meta-bad-block-size": ("meta", _rebody(_with(block_size=0)), CorruptBlobError),
    "meta-version-99": ("meta", _set_version(99), UnsupportedVersionError),
    "meta-version-0": ("meta", _set_version(0), CorruptBlobError),
}


@pytest.mark.parametrize("mode", ["r", "r+", "a", "w"])
@pytest.mark.parametrize("case", CORRUPTIONS, ids=str)
def test_a_damaged_file_raises_a_clear_error_and_is_left_as_it_is(blob_path, mode, case):
    name, edit, exc = CORRUPTIONS[case]
    target = blob_path / name
    if edit is None:
        target.unlink()
    else:
        _edit(target, edit)
    err = expect(
        blob_path.parent, exc, ValueError, str(blob_path), lambda: TensorBlob.open(blob_path, mode)
    )
    assert isinstance(err, TensorBlobError)


def test_the_meta_version_field_is_bytes_8_and_9_little_endian(blob_path):
    # Guards the corruption cases above: they edit the header where the format puts it.
    data = (blob_path / "meta").read_bytes()
    magic, version, reserved, length, crc = HEADER.unpack_from(data)
    assert magic == b"TBLBMETA"
    assert (version, reserved) == (2, 0)
    assert len(data) == HEADER.size + length
    assert crc == zlib.crc32(data[HEADER.size :])


def _block_files(blob_path: Path) -> list[Path]:
    files = sorted((blob_path / "blocks").iterdir())
    assert len(files) == 3  # 10 rows in blocks of 4, written in one go: ids 0, 1, 2
    return files


BLOCK_DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": lambda p: p.unlink(),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:20]),
    "empty": lambda p: p.write_bytes(b""),
    "too-long": lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 12),
}

BLOCK_READS: dict[str, Callable[[TensorBlob], object]] = {
    "int": lambda b: b[5],
    "negative-int": lambda b: b[-6],
    "slice": lambda b: b[4:6],
    "slice-across": lambda b: b[2:9],
    "step": lambda b: b[::3],
    "list": lambda b: b[[9, 5]],
    "read": lambda b: b.read(),
    "iterate": list,
}


@pytest.mark.parametrize("mode", ["r", "r+"])
@pytest.mark.parametrize("read", BLOCK_READS)
@pytest.mark.parametrize("damage", BLOCK_DAMAGE)
def test_a_damaged_block_file_raises_corrupt_blob_when_its_rows_are_read(
    blob_path, mode, read, damage
):
    bad = _block_files(blob_path)[1]  # rows 4..7
    BLOCK_DAMAGE[damage](bad)
    with TensorBlob.open(blob_path, mode) as blob:
        assert torch.equal(blob[0:4], rows(4))  # other blocks still read
        assert torch.equal(blob[8:10], rows(2, start=8))
        expect(
            blob_path.parent,
            CorruptBlobError,
            ValueError,
            str(bad),
            lambda: BLOCK_READS[read](blob),
        )


@pytest.mark.parametrize("damage", BLOCK_DAMAGE)
def test_overwriting_rows_of_a_damaged_block_raises_corrupt_blob(blob_path, damage):
    bad = _block_files(blob_path)[1]
    BLOCK_DAMAGE[damage](bad)
    with TensorBlob.open(blob_path, "r+") as blob:
        blob.seek(5)
        expect(
            blob_path.parent,
            CorruptBlobError,
            ValueError,
            str(bad),
            lambda: blob.write(rows(1, start=100)),
        )
        assert len(blob) == N_ROWS
        assert blob.tell() == 5


def test_the_unchanged_guard_notices_a_touched_file_and_a_new_file(blob_path):
    # The guard is what makes every test above able to fail: check that it can.
    with pytest.raises(AssertionError, match="manifest"), unchanged(blob_path.parent):
        os.utime(blob_path / "manifest", ns=(1, 1))
    with pytest.raises(AssertionError, match="stray"), unchanged(blob_path.parent):
        (blob_path / "blocks" / "stray").write_bytes(b"")


@pytest.mark.parametrize("mask", [torch.tensor([True, False]), np.array([True])])
def test_a_boolean_mask_of_another_length_raises_an_index_error(tmp_path, mask):
    path = tmp_path / "blob"
    with TensorBlob.open(path, "w", dtype="float32", shape=3) as blob:
        blob.write(torch.ones(10, 3))
    with TensorBlob.open(path, "r") as blob:
        got = expect(
            tmp_path, InvalidIndexError, IndexError, "one entry per row", lambda: blob[mask]
        )
    assert "(10)" in str(got)
