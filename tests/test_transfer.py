"""export_blob and import_blob: bit-exact round trips, refusals before any write, atomic output.

Exported files are also read back with numpy and the safetensors package themselves,
so a round trip cannot hide a format error that both of our halves share. Original
tensorblob blobs come from tests/data/orig-0.3 (written by tensorblob 0.3.0 itself)
and from files written here by hand after its source.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import tensorblob
from tensorblob import (
    BlobNotFoundError,
    BlobTypeError,
    CorruptInputError,
    DestinationExistsError,
    InvalidArgumentError,
    MissingDependencyError,
    TensorBlob,
    TensorDB,
    UnknownFieldError,
    UnsupportedFormatError,
    WaitTimeoutError,
    _source,
    export_blob,
    import_blob,
    import_db,
)

ORIG = Path(__file__).resolve().parent / "data" / "orig-0.3"
SHAPES = [(), (3,), (2, 3)]
N = 10  # rows: three blocks of 4, the last one partial
NUMPY = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32]
NUMPY += [torch.uint32, torch.int64, torch.uint64, torch.float16, torch.float32, torch.float64]
NUMPY += [torch.complex64, torch.complex128]
ONLY_ST = [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
ALL = NUMPY + ONLY_ST + [torch.complex32]
HOLDS = {"npy": set(NUMPY), "safetensors": set(ALL) - {torch.complex128, torch.complex32}}


def random_rows(
    dtype: torch.dtype, shape: tuple[int, ...], n: int = N, seed: int = 0
) -> torch.Tensor:
    """Random bytes as rows of ``dtype``: NaNs with payloads, subnormals, negative zeros."""
    g = torch.Generator().manual_seed(seed)
    nbytes = n * math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw %= 2
    return raw.view(dtype).reshape(n, *shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def make(path: Path, rows: torch.Tensor, block_size: int = 4) -> str:
    with TensorBlob.open(
        path, "w", dtype=rows.dtype, shape=rows.shape[1:], block_size=block_size
    ) as b:
        b.write(rows)
    return str(path)


def content(path: str | Path) -> torch.Tensor:
    with TensorBlob.open(path, "r") as blob:
        return blob[:]


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_every_dtype_round_trips_bit_for_bit_where_the_format_holds_it_and_is_refused_otherwise(
    tmp_path, dtype
):
    for shape in SHAPES:
        rows = random_rows(dtype, shape, seed=len(shape))
        src = make(tmp_path / f"src{len(shape)}", rows)
        for fmt, ext in (("npy", ".npy"), ("safetensors", ".safetensors")):
            out = tmp_path / f"out{len(shape)}{ext}"
            if dtype not in HOLDS[fmt]:
                before = listing(tmp_path)
                with pytest.raises(UnsupportedFormatError, match=fmt):
                    export_blob(src, out)
                assert listing(tmp_path) == before  # not even a temporary file
                continue
            assert export_blob(src, out) == N
            if fmt == "npy":  # numpy reads it on its own
                arr = np.load(out)
                assert arr.shape == (N, *shape)
                assert same_bits(torch.from_numpy(arr), rows)
            else:  # so does the safetensors package
                assert same_bits(safetensors.torch.load_file(out)["data"], rows)
            back = tmp_path / f"back{len(shape)}{ext}.blob"
            assert import_blob(out, back) == N
            with TensorBlob.open(back) as blob:
                assert (blob.dtype, blob.shape, blob.block_size) == (dtype, shape, 8192)
                assert same_bits(blob[:], rows)


def test_an_empty_blob_exports_and_imports_as_zero_rows(tmp_path):
    src = make(tmp_path / "e.blob", torch.empty(0, 2, 3))
    for ext in (".npy", ".safetensors"):
        export_blob(src, tmp_path / f"e{ext}")
        assert import_blob(tmp_path / f"e{ext}", tmp_path / f"e{ext}.blob") == 0
        with TensorBlob.open(tmp_path / f"e{ext}.blob") as blob:
            assert (len(blob), blob.shape) == (0, (2, 3))


def test_rows_move_in_bounded_pieces_and_come_out_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(_source, "CHUNK_BYTES", 100)  # 4 rows of 24 bytes a piece
    rows = random_rows(torch.float32, (2, 3), n=37)
    src = make(tmp_path / "s.blob", rows, block_size=5)
    seen: list[tuple[int, int]] = []
    export_blob(src, tmp_path / "s.npy", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(min(i + 4, 37), 37) for i in range(0, 37, 4)]
    seen.clear()
    import_blob(tmp_path / "s.npy", tmp_path / "t.blob", progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 10
    assert seen[-1] == (37, 37)
    assert same_bits(content(tmp_path / "t.blob"), rows)


def test_npy_files_written_by_numpy_import_fortran_ordered_and_big_endian_alike(tmp_path):
    a = np.arange(24, dtype=np.float64).reshape(4, 2, 3) / 7
    np.save(tmp_path / "c.npy", a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.save(tmp_path / "b.npy", a.astype(">f8"))
    for name in ("c", "f", "b"):
        import_blob(tmp_path / f"{name}.npy", tmp_path / f"{name}.blob")
        assert torch.equal(content(tmp_path / f"{name}.blob"), torch.from_numpy(a))


def test_a_safetensors_tensor_is_picked_by_name_or_as_the_only_one(tmp_path):
    x, y = torch.arange(12).reshape(4, 3), torch.ones(2, dtype=torch.bfloat16)
    safetensors.torch.save_file({"x": x, "y": y}, tmp_path / "two.safetensors")
    safetensors.torch.save_file({"x": x}, tmp_path / "one.safetensors")
    with pytest.raises(InvalidArgumentError, match="'x', 'y'"):
        import_blob(tmp_path / "two.safetensors", tmp_path / "a.blob")
    assert not (tmp_path / "a.blob").exists()
    import_blob(tmp_path / "two.safetensors", tmp_path / "y.blob", name="y")
    assert same_bits(content(tmp_path / "y.blob"), y)
    import_blob(tmp_path / "one.safetensors", tmp_path / "x.blob")
    assert same_bits(content(tmp_path / "x.blob"), x)
    export_blob(tmp_path / "x.blob", tmp_path / "named.safetensors", name="embeddings")
    assert list(safetensors.torch.load_file(tmp_path / "named.safetensors")) == ["embeddings"]


# -- the original tensorblob ----------------------------------------------------------


def _expected_orig() -> dict[str, torch.Tensor]:
    return {
        "f32.blob": (torch.arange(60, dtype=torch.float32) / 7).reshape(10, 2, 3),
        "bf16.blob": (torch.arange(7, dtype=torch.float32) * 0.37 - 1).to(torch.bfloat16),
        "i64-truncated.blob": torch.arange(15, dtype=torch.int64).reshape(5, 3) - 7,
        "empty.blob": torch.empty(0, 4, dtype=torch.uint8),
    }


@pytest.mark.parametrize("name", list(_expected_orig()))
def test_blobs_written_by_the_original_tensorblob_import_with_their_rows_and_block_size(
    tmp_path, name
):
    want = _expected_orig()[name]
    dst = tmp_path / "new.blob"
    assert import_blob(ORIG / name, dst) == len(want)
    conf = json.loads((ORIG / name / ".conf").read_text())
    with TensorBlob.open(dst) as blob:
        assert blob.block_size == conf["block_size"]
        assert same_bits(blob[:], want)


def write_orig(path: Path, rows: torch.Tensor, block_size: int, extra_blocks: int = 0) -> None:
    """An original blob, byte for byte as tensorblob 0.3 lays it out (see _fmt_orig)."""
    path.mkdir()
    names = []
    raw = rows.contiguous().view(torch.uint8).numpy().tobytes()
    row_bytes = rows.dtype.itemsize * math.prod(rows.shape[1:])
    for start in range(0, len(rows), block_size):
        part = raw[start * row_bytes : (start + block_size) * row_bytes]
        names.append(str(uuid.uuid4()))  # the rest of the last block: zeros, as the original's
        (path / names[-1]).write_bytes(part.ljust(block_size * row_bytes, b"\0"))
    for _ in range(extra_blocks):  # listed in .stat, but past len: never read
        names.append(str(uuid.uuid4()))
        (path / names[-1]).write_bytes(b"")
    dtype = str(rows.dtype).removeprefix("torch.")
    conf = {"__notes__": {"class_name": "TensorBlob"}, "block_size": block_size, "dtype": dtype}
    (path / ".conf").write_text(json.dumps({**conf, "shape": list(rows.shape[1:])}))
    (path / ".stat").write_text(json.dumps({"len": len(rows), "bds": names}))


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_original_blobs_of_every_dtype_and_row_shape_import_bit_for_bit(tmp_path, dtype):
    for shape in SHAPES:
        rows = random_rows(dtype, shape, seed=7)
        write_orig(tmp_path / f"o{len(shape)}", rows, block_size=3, extra_blocks=len(shape) % 2)
        import_blob(tmp_path / f"o{len(shape)}", tmp_path / f"n{len(shape)}")
        assert same_bits(content(tmp_path / f"n{len(shape)}"), rows)


def _damage_orig(case: str, path: Path) -> None:
    names = json.loads((path / ".stat").read_text())["bds"]
    if case == "missing-block":
        (path / names[1]).unlink()
    elif case == "short-block":
        os.truncate(path / names[2], 5)
    elif case == "few-blocks":
        (path / ".stat").write_text(json.dumps({"len": 10, "bds": names[:2]}))
    elif case == "bad-json":
        (path / ".conf").write_text("{not json")
    elif case == "bad-dtype":
        (path / ".conf").write_text(json.dumps({"dtype": "float33", "shape": [2], "block_size": 4}))
    elif case == "escaping-name":
        (path / ".stat").write_text(json.dumps({"len": 10, "bds": ["../x", *names[1:]]}))
    elif case == "null-dtype":
        (path / ".conf").write_text(json.dumps({"dtype": None, "shape": [2], "block_size": 4}))
    elif case == "missing-stat":
        (path / ".stat").unlink()
    elif case == "missing-conf":
        (path / ".conf").unlink()


DAMAGED_ORIG = {
    "missing-block": "is missing",
    "short-block": "",
    "few-blocks": "",
    "bad-json": "not valid JSON",
    "bad-dtype": "float33",
    "escaping-name": "bad block name",
    "null-dtype": "dtype None",
    "missing-stat": ".stat' is missing: the original tensorblob",
    "missing-conf": ".conf' is missing: the original tensorblob",
}


@pytest.mark.parametrize("case", DAMAGED_ORIG)
def test_a_damaged_original_blob_is_refused_before_anything_is_written(tmp_path, case):
    write_orig(tmp_path / "o", random_rows(torch.float32, (2,)), block_size=4)
    _damage_orig(case, tmp_path / "o")
    said = DAMAGED_ORIG[case]
    with pytest.raises(CorruptInputError, match=re.escape(said) if said else None):
        import_blob(tmp_path / "o", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_an_original_tensordb_is_told_by_its_class_name_too(tmp_path):
    """Without its schema, a database's .conf still names its class, as the original's
    config mixin writes it (bare or qualified): it is a damaged TensorDB, not a blob."""
    for name in ("TensorDB", "tensorblob._db.TensorDB"):
        src = tmp_path / name
        shutil.copytree(ORIG / "db", src)
        conf = json.loads((src / ".conf").read_text())
        del conf["schema"]
        conf["__notes__"]["class_name"] = name
        (src / ".conf").write_text(json.dumps(conf))
        with pytest.raises(UnsupportedFormatError, match="import_db"):
            import_blob(src, tmp_path / "dst")
        with pytest.raises(CorruptInputError, match="the schema is missing"):
            tensorblob.import_db(src, tmp_path / "dst")
        assert not (tmp_path / "dst").exists()


def test_import_blob_sends_an_original_tensordb_to_import_db(tmp_path):
    with pytest.raises(UnsupportedFormatError, match=r"TensorDB.*done, obs.*import_db"):
        import_blob(ORIG / "db", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    import_blob(ORIG / "db" / "obs", tmp_path / "obs")  # a field is an original blob
    assert torch.equal(content(tmp_path / "obs"), torch.ones(6, 3))


# -- refusals ------------------------------------------------------------------------


def _npy(tmp_path: Path, case: str) -> Path:
    p = tmp_path / f"{case}.npy"
    if case == "objects":
        np.save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True)
    elif case == "strings":
        np.save(p, np.array(["abc", "de"]))
    elif case == "zero-d":
        np.save(p, np.float32(1.5))
    elif case == "zero-dim":
        np.save(p, np.zeros((5, 0), dtype=np.float32))
    elif case == "records":
        np.save(p, np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]))
    elif case == "cut-short":
        np.save(p, np.zeros((100, 3), dtype=np.float32))
        os.truncate(p, os.path.getsize(p) - 4)
    elif case == "garbage":
        p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'garbage")
    return p


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("objects", UnsupportedFormatError),
        ("strings", UnsupportedFormatError),
        ("zero-d", UnsupportedFormatError),
        ("zero-dim", UnsupportedFormatError),
        ("records", UnsupportedFormatError),
        ("cut-short", CorruptInputError),
        ("garbage", CorruptInputError),
    ],
)
def test_an_npy_no_blob_can_hold_is_refused_before_the_destination_exists(tmp_path, case, error):
    src = _npy(tmp_path, case)
    with pytest.raises(error, match=str(src)):
        import_blob(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("case", ["short-header", "bad-json", "past-the-end", "bad-dtype"])
def test_a_damaged_or_foreign_safetensors_is_refused_before_the_destination_exists(tmp_path, case):
    p = tmp_path / "x.safetensors"
    safetensors.torch.save_file({"data": torch.zeros(4, 3)}, p)
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    if case == "short-header":
        p.write_bytes(raw[:5])
    elif case == "bad-json":
        p.write_bytes(raw[:9] + b"!" + raw[10:])
    else:
        if case == "past-the-end":
            header["data"]["data_offsets"] = [0, 10_000]
        else:
            header["data"]["dtype"] = "STR"
        text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        p.write_bytes(raw[:8] + text + raw[8 + n :])
    error = UnsupportedFormatError if case == "bad-dtype" else CorruptInputError
    with pytest.raises(error):
        import_blob(p, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_a_missing_safetensors_package_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    safetensors.torch.save_file({"data": torch.zeros(4, 3)}, tmp_path / "x.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now fails
    with pytest.raises(MissingDependencyError, match=r"tensorblob\[safetensors\]"):
        import_blob(tmp_path / "x.safetensors", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_inputs_of_no_known_format_and_missing_inputs_are_refused(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"hello, world")
    with pytest.raises(UnsupportedFormatError, match="cannot tell"):
        import_blob(tmp_path / "data.bin", tmp_path / "dst")
    make(tmp_path / "new.blob", torch.zeros(2, 3))
    with pytest.raises(UnsupportedFormatError, match="extend"):
        import_blob(tmp_path / "new.blob", tmp_path / "dst")
    with pytest.raises(BlobNotFoundError):
        import_blob(tmp_path / "nothing.npy", tmp_path / "dst")
    with pytest.raises(InvalidArgumentError, match=r"only to \.safetensors"):
        import_blob(tmp_path / "new.blob", tmp_path / "dst", format="npy", name="x")
    assert not (tmp_path / "dst").exists()


def test_export_refuses_an_existing_file_a_missing_directory_and_an_unknown_suffix(tmp_path):
    src = make(tmp_path / "s.blob", torch.zeros(3, 2))
    (tmp_path / "old.npy").write_bytes(b"keep me")
    with pytest.raises(DestinationExistsError, match="replace"):
        export_blob(src, tmp_path / "old.npy")
    assert (tmp_path / "old.npy").read_bytes() == b"keep me"
    with pytest.raises(BlobNotFoundError, match="does not exist"):
        export_blob(src, tmp_path / "no" / "x.npy")
    with pytest.raises(UnsupportedFormatError, match="format="):
        export_blob(src, tmp_path / "x.pt")
    with pytest.raises(InvalidArgumentError, match="if_exists"):
        export_blob(src, tmp_path / "x.npy", if_exists="append")
    export_blob(src, tmp_path / "old.npy", if_exists="replace")
    assert np.load(tmp_path / "old.npy").shape == (3, 2)
    export_blob(src, tmp_path / "x.pt", format="safetensors")
    assert safetensors.torch.load_file(tmp_path / "x.pt")["data"].shape == (3, 2)


# -- TensorDB export ---------------------------------------------------------------

DB_SCHEMA = {
    "obs": (torch.uint8, (3, 4)),
    "action": (torch.int64, ()),
    "reward": (torch.bfloat16, ()),
    "done": (torch.bool, ()),
}


def make_db(path: Path, n: int = N) -> tuple[str, dict[str, torch.Tensor]]:
    """A TensorDB of ``n`` random records over several blocks of 4; its fields by name."""
    data = {k: random_rows(dt, sh, n, seed=i) for i, (k, (dt, sh)) in enumerate(DB_SCHEMA.items())}
    with TensorDB.open(path, "w", schema=DB_SCHEMA, block_size=4) as db:
        db.write(data)
    return str(path), data


def test_a_tensordb_exports_each_field_as_a_tensor_or_one_field_alone(tmp_path):
    src, data = make_db(tmp_path / "s.db")
    assert export_blob(src, tmp_path / "all.safetensors") == N
    got = safetensors.torch.load_file(tmp_path / "all.safetensors")
    assert set(got) == set(DB_SCHEMA)
    assert all(same_bits(got[k], data[k]) for k in DB_SCHEMA)
    with open(tmp_path / "all.safetensors", "rb") as f:  # stored in the schema's order
        table = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    starts = {k: v["data_offsets"][0] for k, v in table.items() if k != "__metadata__"}
    assert sorted(starts, key=starts.get) == list(DB_SCHEMA)
    export_blob(src, tmp_path / "action.npy", field="action")
    assert np.array_equal(np.load(tmp_path / "action.npy"), data["action"].numpy())
    export_blob(src, tmp_path / "obs.safetensors", field="obs")
    got = safetensors.torch.load_file(tmp_path / "obs.safetensors")
    assert list(got) == ["obs"]
    assert same_bits(got["obs"], data["obs"])
    assert not [e for e in listing(tmp_path) if e.startswith(".")]  # no temporary left


def test_a_tensordb_export_reads_one_snapshot_while_a_writer_appends(tmp_path):
    src, data = make_db(tmp_path / "s.db", n=40)
    more = {k: v[:5] for k, v in data.items()}
    with TensorDB.open(src, "a") as writer:
        calls = []

        def progress(done: int, total: int) -> None:
            calls.append((done, total))
            writer.write(more)  # commits while the export reads

        monkey = pytest.MonkeyPatch()
        monkey.setattr(_source, "CHUNK_BYTES", 64)  # several pieces a field
        try:
            assert export_blob(src, tmp_path / "s.safetensors", progress=progress) == 40
        finally:
            monkey.undo()
        assert len(writer) > 40
    got = safetensors.torch.load_file(tmp_path / "s.safetensors")
    assert all(same_bits(got[k], data[k]) for k in DB_SCHEMA)
    assert calls[-1] == (40, 40)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("npy-without-field", UnsupportedFormatError),
        ("bfloat16-field-to-npy", UnsupportedFormatError),
        ("unknown-field", UnknownFieldError),
        ("field-not-a-str", BlobTypeError),
        ("name-for-a-db", InvalidArgumentError),
        ("field-for-a-blob", InvalidArgumentError),
    ],
)
def test_a_bad_tensordb_export_is_refused_and_writes_nothing(tmp_path, case, error):
    src, _ = make_db(tmp_path / "s.db")
    out, kw = tmp_path / "x.safetensors", {}
    if case == "npy-without-field":
        out = tmp_path / "x.npy"
    elif case == "bfloat16-field-to-npy":
        out, kw = tmp_path / "x.npy", {"field": "reward"}
    elif case == "unknown-field":
        kw = {"field": "rewards"}
    elif case == "field-not-a-str":
        kw = {"field": 3}
    elif case == "name-for-a-db":
        kw = {"name": "emb"}
    else:
        src = make(tmp_path / "b.blob", torch.zeros(3, 2))
        kw = {"field": "obs"}
    before = listing(tmp_path)
    with pytest.raises(error):
        export_blob(src, out, **kw)
    assert listing(tmp_path) == before


def test_a_tensordb_export_imports_back_into_a_tensordb_record_for_record(tmp_path):
    src, data = make_db(tmp_path / "s.db")
    export_blob(src, tmp_path / "s.safetensors")
    assert import_db(tmp_path / "s.safetensors", tmp_path / "d.db", block_size=3) == N
    with TensorDB.open(tmp_path / "d.db") as db:
        assert db.schema == {
            k: (str(dt).removeprefix("torch."), sh) for k, (dt, sh) in DB_SCHEMA.items()
        }
        assert db.block_size == 3
        assert all(same_bits(db.column(k)[:], data[k]) for k in DB_SCHEMA)
    assert import_db(tmp_path / "s.safetensors", tmp_path / "d.db", if_exists="append") == N
    with TensorDB.open(tmp_path / "d.db") as db:
        assert same_bits(db.column("obs")[N:], data["obs"])


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("different-lengths", UnsupportedFormatError),
        ("not-a-field-name", InvalidArgumentError),
        ("npy", UnsupportedFormatError),
    ],
)
def test_import_db_refuses_a_file_that_is_not_records_and_creates_nothing(tmp_path, case, error):
    src = tmp_path / "in.safetensors"
    if case == "different-lengths":
        safetensors.torch.save_file({"a": torch.zeros(3), "b": torch.zeros(4)}, src)
    elif case == "not-a-field-name":
        safetensors.torch.save_file({".a": torch.zeros(3), "b": torch.zeros(3)}, src)
    else:
        src = tmp_path / "in.npy"
        np.save(src, np.zeros(3))
    with pytest.raises(error):
        import_db(src, tmp_path / "d.db")
    assert not (tmp_path / "d.db").exists()


def test_import_into_a_blob_with_rows_needs_replace_or_append(tmp_path):
    np.save(tmp_path / "in.npy", np.arange(6, dtype=np.int64).reshape(3, 2))
    dst = make(tmp_path / "dst", torch.full((2, 2), -1, dtype=torch.int64))
    with pytest.raises(DestinationExistsError, match="2 rows"):
        import_blob(tmp_path / "in.npy", dst)
    assert content(dst).tolist() == [[-1, -1]] * 2
    import_blob(tmp_path / "in.npy", dst, if_exists="append")
    assert content(dst)[:, 0].tolist() == [-1, -1, 0, 2, 4]
    import_blob(tmp_path / "in.npy", dst, if_exists="replace")
    assert content(dst)[:, 0].tolist() == [0, 2, 4]
    np.save(tmp_path / "f.npy", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        import_blob(tmp_path / "f.npy", dst, if_exists="replace")
    assert content(dst)[:, 0].tolist() == [0, 2, 4]
    empty = make(tmp_path / "empty", torch.empty(0, 2, dtype=torch.int64))
    import_blob(tmp_path / "in.npy", empty)  # an empty blob is taken as it is
    assert len(content(empty)) == 3


def test_new_error_classes_are_the_stdlib_errors_a_caller_would_catch():
    assert issubclass(UnsupportedFormatError, ValueError)
    assert issubclass(CorruptInputError, ValueError)
    assert issubclass(DestinationExistsError, FileExistsError)
    assert issubclass(WaitTimeoutError, TimeoutError)
    assert issubclass(MissingDependencyError, ImportError)
