"""TensorDB: records of several row-aligned fields, committed as one, on the blob engine.

Crash safety of records is proven with the blob's: the crash catalogue
(tests/harness.py, ``records_*``), the fuzz campaign and the power-loss
model run records workloads; tests/test_concurrency.py runs readers against
a records writer. Here: the API, its refusals, snapshots across fields,
pickling into DataLoader workers, checksums per field, conversion of the
original tensorblob's TensorDB, and golden files.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
import pytest
import torch
from torch.utils.data import DataLoader

import tensorblob
from tensorblob import (
    BlobNotFoundError,
    BlobTypeError,
    CorruptBlobError,
    DestinationExistsError,
    DTypeMismatchError,
    InvalidArgumentError,
    InvalidIndexError,
    NotABlobError,
    ShapeMismatchError,
    TensorBlob,
    TensorDB,
    UnsupportedOperationError,
)
from tensorblob._journal import scan_journal
from tensorblob._meta import read_meta
from tensorblob.data import collate

SCHEMA = {
    "obs": (torch.uint8, (3, 4, 4)),
    "action": ("int64", ()),
    "reward": ("float32", ()),
    "done": (torch.bool, ()),
}
NORMAL = {
    "obs": ("uint8", (3, 4, 4)),
    "action": ("int64", ()),
    "reward": ("float32", ()),
    "done": ("bool", ()),
}
B = 4
DATA = Path(__file__).resolve().parent / "data"


def recs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    i = torch.arange(n) + seed * 1000
    return {
        "obs": ((i.reshape(n, 1, 1, 1) + torch.arange(48).reshape(1, 3, 4, 4)) % 256).to(
            torch.uint8
        ),
        "action": i * 2,
        "reward": i.to(torch.float32) / 2,
        "done": i % 5 == 0,
    }


def cat(*parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def sel(d: dict[str, torch.Tensor], idx: Any) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in d.items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def make(path: Path, n: int = 10, seed: int = 0, **kw: Any) -> dict[str, torch.Tensor]:
    data = recs(n, seed)
    with TensorDB.open(path, "w", schema=SCHEMA, block_size=B, **kw) as db:
        db.write(data)
    return data


def files(root: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in harness.snapshot_files(str(root)).items()}


# -- writing and reading ------------------------------------------------------------


def test_records_round_trip_through_every_kind_of_read(tmp_path):
    path = tmp_path / "db"
    want = recs(11)
    with TensorDB.open(path, "w", schema=SCHEMA, block_size=B) as db:
        for i in range(5):  # one record at a time (the fast path)
            assert db.write(sel(want, i)) == 1
        assert db.write(sel(want, slice(5, 11))) == 6  # a batch across blocks
        assert len(db) == db.tell() == 11
    with TensorDB.open(path, "r") as db:
        assert db.schema == NORMAL
        assert db.fields == tuple(NORMAL)
        assert same(db[:], want)
        assert same(db[3], sel(want, 3))
        assert same(db[-1], sel(want, 10))
        assert same(db[9:1:-3], sel(want, [9, 6, 3]))
        assert same(db[[10, 0, 4, 4]], sel(want, [10, 0, 4, 4]))
        assert same(db[torch.tensor([2, 7])], sel(want, [2, 7]))
        mask = want["done"]
        assert same(db[mask], sel(want, mask))
        assert same(db.read(4), sel(want, slice(0, 4)))
        assert db.tell() == 4
        rows = list(db)
        assert len(rows) == 7
        assert all(same(r, sel(want, 4 + i)) for i, r in enumerate(rows))
        assert same(db.read(), sel(want, slice(11, 11)))  # at the end: empty, every field
        assert db.read()["obs"].shape == (0, 3, 4, 4)


def test_a_column_reads_one_field_with_the_whole_indexing_of_a_blob(tmp_path):
    want = make(tmp_path / "db", 13)
    with TensorDB.open(tmp_path / "db") as db:
        col = db.column("reward")
        assert (col.name, col.dtype, col.shape, len(col)) == ("reward", torch.float32, (), 13)
        assert torch.equal(col[:], want["reward"])
        assert torch.equal(col[5], want["reward"][5])
        assert torch.equal(col[::-2], want["reward"].flip(0)[::2])
        assert torch.equal(col[[12, 0]], want["reward"][[12, 0]])
        assert torch.equal(torch.stack(list(col)), want["reward"])
        assert torch.equal(db._cols["obs"][:], want["obs"])
        with pytest.raises(tensorblob.UnknownFieldError, match="no field 'nope'"):
            db.column("nope")
        with pytest.raises(InvalidIndexError, match="out of bounds"):
            col[13]
    with pytest.raises(ValueError, match="closed"):
        col[0]


def test_a_column_is_a_dataloader_dataset(tmp_path):
    """DataLoader batches of one field, gathered in one call (``__getitems__``)."""
    want = make(tmp_path / "db", 13)["reward"]
    with TensorDB.open(tmp_path / "db") as db:
        col = db.column("reward")
        got = col.__getitems__([12, 0, 5])
        assert torch.equal(torch.stack(got), want[[12, 0, 5]])
        assert torch.equal(got.collated, want[[12, 0, 5]])
        for collate_fn in (None, collate):
            loader = DataLoader(col, batch_size=4, collate_fn=collate_fn)
            assert torch.equal(torch.cat(list(loader)), want)
        with pytest.raises(tensorblob.BlobTypeError, match="sequence of indices"):
            col.__getitems__(3)
        with pytest.raises(InvalidIndexError, match="out of bounds"):
            col.__getitems__([13])
    with pytest.raises(tensorblob.BlobClosedError):
        col.__getitems__([0])


def test_iterating_and_self_extending_a_database_read_what_it_holds_now(tmp_path):
    path = tmp_path / "db"
    want = make(path, 10)
    with TensorDB.open(path, "r+") as db:
        db.seek(1)
        it = iter(db)
        assert same(next(it), sel(want, 1))
        db.truncate(2)  # rows 2 and 3 were read ahead: they are gone now
        assert list(it) == []
        assert (len(db), db.tell()) == (2, 2)
    with TensorDB.open(path, "w+", schema=SCHEMA, block_size=B) as db:
        db.write(sel(want, slice(0, 6)))
        assert db.extend(db, maintain_order=False) == 6
        # full blocks first (this one's, then the other's), then the partial ones
        assert same(db[:], sel(want, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 4, 5]))


def test_a_string_index_is_refused_as_in_the_original(tmp_path):
    make(tmp_path / "db", 3)
    with TensorDB.open(tmp_path / "db") as db, pytest.raises(TypeError, match="Index must be"):
        db["reward"]


def test_overwrites_in_r_plus_across_blocks_change_every_field_and_spare_old_snapshots(
    tmp_path,
):
    path = tmp_path / "db"
    old = make(path, 10)
    reader = TensorDB.open(path, "r")
    with TensorDB.open(path, "r+") as db:
        db.seek(2)
        db.write(recs(7, 5))  # blocks 0 to 2: copy-on-write of every field
        db.truncate(8)
    want = cat(sel(old, slice(0, 2)), sel(recs(7, 5), slice(0, 6)))
    assert same(reader[:], old), "a reader's snapshot changed"
    assert reader.refresh() == 8
    assert same(reader[:], want)
    reader.close()


def test_a_transaction_commits_every_field_together_or_none(tmp_path):
    path = tmp_path / "db"
    old = make(path, 6)
    with TensorDB.open(path, "r+") as db:

        def doomed() -> None:
            with db.transaction():
                db.seek(0, 2)
                db.write(recs(3, 1))
                db.truncate(2)
                raise RuntimeError("inside")

        with pytest.raises(RuntimeError):
            doomed()
        assert same(db[:], old)
        assert db.tell() == 0  # where the transaction began
        db.seek(0, 2)
        with db.transaction():
            db.write(recs(3, 1))
            db.seek(1)
            db.write(recs(1, 2))
    with TensorDB.open(path) as db:
        assert same(db[:], cat(sel(old, [0]), recs(1, 2), sel(old, slice(2, 6)), recs(3, 1)))


@pytest.mark.parametrize("ordered", [True, False])
def test_extend_appends_another_databases_records(tmp_path, ordered):
    mine = make(tmp_path / "a", 6)
    theirs = make(tmp_path / "b", 9, seed=3)
    with TensorDB.open(tmp_path / "a", "a") as a, TensorDB.open(tmp_path / "b") as b:
        assert a.extend(b, maintain_order=ordered) == 9
    with TensorDB.open(tmp_path / "a") as a:
        if ordered:
            want = cat(mine, theirs)
        else:  # full blocks first (copied as files), then the two partial blocks
            parts = [sel(mine, slice(0, 4)), sel(theirs, slice(0, 8))]
            want = cat(*parts, sel(mine, slice(4, 6)), sel(theirs, slice(8, 9)))
        assert same(a[:], want)


@pytest.mark.parametrize("ordered", [True, False])
def test_extend_from_a_database_inside_a_transaction_is_refused(tmp_path, ordered):
    mine = make(tmp_path / "a", 6)
    make(tmp_path / "b", 9, seed=3)
    with TensorDB.open(tmp_path / "a", "a") as a, TensorDB.open(tmp_path / "b", "a") as b:

        def refused_then_rolled_back() -> None:
            with b.transaction():
                b.write(recs(8, 4))
                with pytest.raises(InvalidArgumentError, match=r"database .* transaction"):
                    a.extend(b, maintain_order=ordered)
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            refused_then_rolled_back()
        assert same(a[:], mine)


def test_extend_matches_fields_by_name_whatever_their_order(tmp_path):
    mine = make(tmp_path / "a", 3)
    other = dict(reversed(list(SCHEMA.items())))
    theirs = recs(5, 2)
    with TensorDB.open(tmp_path / "b", "w", schema=other, block_size=B) as b:
        b.write(theirs)
    with TensorDB.open(tmp_path / "a", "a") as a, TensorDB.open(tmp_path / "b") as b:
        a.extend(b, maintain_order=False)  # layouts differ: copied in order
    with TensorDB.open(tmp_path / "a") as a:
        assert same(a[:], cat(mine, theirs))


def test_mode_w_empties_and_a_appends_and_flags_follow_the_mode(tmp_path):
    path = tmp_path / "db"
    make(path, 5)
    with TensorDB.open(path, "a") as db:
        assert (db._m_rd, db._m_wr, db._m_ap) == (False, True, True)
        db.seek(0)
        db.write(recs(1, 9))  # append mode: at the end
        assert len(db) == 6
    with TensorDB.open(path, "w") as db:
        assert len(db) == 0
        assert db.max_cached_blocks > 0
        assert db.filename == str(path)


def test_follow_yields_records_as_a_writer_commits_them(tmp_path):
    path = tmp_path / "db"
    want = make(path, 3)
    with TensorDB.open(path) as db:
        got = list(db.follow(timeout=0.2))
    assert len(got) == 3
    assert all(same(g, sel(want, i)) for i, g in enumerate(got))


# -- refusals: a clear error, nothing changed on disk -----------------------------------


BAD_SCHEMAS = [
    (None, InvalidArgumentError, "schema"),
    ({}, InvalidArgumentError, "non-empty dict"),
    ([("a", ("float32", 1))], InvalidArgumentError, "non-empty dict"),
    ({"": ("float32", 1)}, InvalidArgumentError, "Invalid field name"),
    ({".hidden": ("float32", 1)}, InvalidArgumentError, "Invalid field name"),
    ({"a/b": ("float32", 1)}, InvalidArgumentError, "Invalid field name"),
    ({"a\\b": ("float32", 1)}, InvalidArgumentError, "Invalid field name"),
    ({"a\nb": ("float32", 1)}, InvalidArgumentError, "Invalid field name"),
    ({"x" * 256: ("float32", 1)}, InvalidArgumentError, "Invalid field name"),
    ({1: ("float32", 1)}, BlobTypeError, "field name must be a str"),
    ({"a": "float32"}, InvalidArgumentError, "(dtype, shape) pair"),
    ({"a": ("float32",)}, InvalidArgumentError, "(dtype, shape) pair"),
    ({"a": (123, 3)}, BlobTypeError, "dtype must be str or torch.dtype"),
    ({"a": ("float33", 3)}, InvalidArgumentError, "float33"),
    ({"a": ("float32", 1), "q": (torch.qint8, 2)}, InvalidArgumentError, "qint8 cannot be stored"),
    ({"a": ("float32", 0)}, InvalidArgumentError, "positive"),
    ({"a": ("float32", "3")}, InvalidArgumentError, "shape"),
]


@pytest.mark.parametrize(("schema", "exc", "said"), BAD_SCHEMAS, ids=repr)
def test_a_bad_schema_is_refused_before_anything_is_created(tmp_path, schema, exc, said):
    with pytest.raises(exc, match=said.replace("(", r"\(").replace(")", r"\)")):
        TensorDB.open(tmp_path / "db", "w", schema=schema)
    assert os.listdir(tmp_path) == []


def test_opening_needs_an_existing_database_or_a_schema(tmp_path):
    for mode in ("r", "r+", "a", "a+"):
        with pytest.raises(BlobNotFoundError, match="Database not found"):
            TensorDB.open(tmp_path / "missing", mode)
    assert os.listdir(tmp_path) == []


def test_a_conflicting_schema_or_the_wrong_kind_is_refused_and_changes_nothing(tmp_path):
    path = tmp_path / "db"
    make(path, 4)
    TensorBlob.open(tmp_path / "blob", "w", dtype="float32", shape=3).close()
    before = files(tmp_path)
    other = {**SCHEMA, "reward": ("float64", ())}
    with pytest.raises(InvalidArgumentError, match=r"schema=.*conflicts"):
        TensorDB.open(path, "a", schema=other)
    with pytest.raises(InvalidArgumentError, match="block_size=5 conflicts"):
        TensorDB.open(path, "a", block_size=5)
    with pytest.raises(NotABlobError, match="is a TensorDB, not a TensorBlob"):
        TensorBlob.open(path, "r")
    with pytest.raises(NotABlobError, match="is a TensorBlob, not a TensorDB"):
        TensorDB.open(tmp_path / "blob", "r")
    with pytest.raises(NotABlobError, match="it is a TensorDB"):
        TensorBlob.unlink(path)
    with pytest.raises(NotABlobError, match="it is a TensorBlob"):
        TensorDB.unlink(tmp_path / "blob")
    assert files(tmp_path) == before


def _bad_writes() -> list[tuple[Any, type[Exception], str]]:
    one = recs(2)
    return [
        (torch.zeros(2, 3), BlobTypeError, "takes a dict"),
        ({k: v for k, v in one.items() if k != "done"}, InvalidArgumentError, "missing"),
        ({**one, "extra": torch.zeros(2)}, InvalidArgumentError, "unexpected"),
        ({**one, "done": torch.zeros(3, dtype=torch.bool)}, ShapeMismatchError, "same row count"),
        ({**one, "reward": one["reward"].double()}, DTypeMismatchError, "field 'reward'"),
        ({**one, "obs": torch.zeros(2, 3, 4, dtype=torch.uint8)}, ShapeMismatchError, "'obs'"),
        ({**one, "action": [1, 2]}, BlobTypeError, "field 'action'"),
        ({**one, "reward": one["reward"].to_sparse()}, BlobTypeError, "'reward': takes a dense"),
        (
            {**one, "action": torch.zeros(2, dtype=torch.int64, device="meta")},
            BlobTypeError,
            "meta",
        ),
    ]


@pytest.mark.parametrize(("rows", "exc", "said"), _bad_writes(), ids=lambda x: repr(x)[:30])
@pytest.mark.parametrize("mode", ["a", "r+"])
def test_a_bad_record_is_refused_before_any_field_is_written(tmp_path, rows, exc, said, mode):
    path = tmp_path / "db"
    old = make(path, 5)
    with TensorDB.open(path, mode) as db:
        before = files(path)
        with pytest.raises(exc, match=said):
            db.write(rows)
        assert files(path) == before, "a refused write changed a file"
        assert len(db) == 5
        db.seek(0, 2)
        db.write(recs(1, 7))  # the handle still works
    with TensorDB.open(path) as db:
        assert same(db[:], cat(old, recs(1, 7)))


def test_writing_a_reader_and_extending_with_a_mismatch_are_refused(tmp_path):
    make(tmp_path / "a", 3)
    with TensorDB.open(tmp_path / "b", "w", schema={"x": ("float32", 2)}) as b:
        b.write({"x": torch.ones(2, 2)})
    with TensorDB.open(tmp_path / "c", "w", schema={**SCHEMA, "action": ("int32", ())}) as c:
        pass
    with TensorDB.open(tmp_path / "a") as a, pytest.raises(UnsupportedOperationError):
        a.write(recs(1))
    with TensorDB.open(tmp_path / "a", "a") as a:
        before = files(tmp_path / "a")
        with TensorDB.open(tmp_path / "b") as b, pytest.raises(ValueError, match="fields must"):
            a.extend(b)
        with TensorDB.open(tmp_path / "c") as c, pytest.raises(ValueError, match="data types"):
            a.extend(c)
        with (
            TensorBlob.open(tmp_path / "blob", "w", dtype="int64", shape=()) as blob,
            pytest.raises(BlobTypeError, match="takes a TensorDB"),
        ):
            a.extend(blob)
        assert files(tmp_path / "a") == before


# -- snapshots, pickling, DataLoader ------------------------------------------------


def test_a_reader_pickles_as_its_snapshot(tmp_path):
    path = tmp_path / "db"
    old = make(path, 6)
    reader = TensorDB.open(path)
    reader.seek(2)
    with TensorDB.open(path, "a") as w:
        w.write(recs(3, 1))
    copy = pickle.loads(pickle.dumps(reader))
    assert (len(copy), copy.tell()) == (6, 2)
    assert same(copy[:], old)
    assert copy.refresh() == 9
    copy.close()
    reader.close()


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_dataloader_spawn_workers_gather_whole_records(tmp_path):
    path = tmp_path / "db"
    want = make(path, 50)
    with TensorDB.open(path) as db:
        loader = DataLoader(
            db,
            batch_size=8,
            shuffle=False,
            num_workers=2,
            multiprocessing_context="spawn",
            collate_fn=collate,
        )
        batches = list(loader)
        default = list(DataLoader(db, batch_size=8, shuffle=False))  # default_collate stacks
    assert same(cat(*batches), want)
    assert same(cat(*default), want)


# -- checksums per field, the command line ------------------------------------------


def _cli(*args: str) -> tuple[int, dict[str, Any]]:
    p = subprocess.run(
        [sys.executable, "-m", "tensorblob", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return p.returncode, json.loads(p.stdout)


def test_info_and_check_report_every_field_and_a_damaged_one_by_name(tmp_path):
    path = tmp_path / "db"
    make(path, 6)
    code, doc = _cli("info", str(path))
    assert code == 0
    info = doc["info"]
    assert info["kind"] == "TensorDB"
    assert [f["name"] for f in info["fields"]] == list(SCHEMA)
    assert [f["row_bytes"] for f in info["fields"]] == [48, 8, 4, 1]
    assert all(f["offset"] % 64 == 0 for f in info["fields"])
    assert info["row_bytes"] == 61
    # Flip one byte of the "reward" field of block 0: verify and check --deep name it.
    with TensorDB.open(path) as db:
        offset = db._meta.fields[2].offset
        block = db._blocks.path(db._state.blocks[0])
    with open(block, "r+b") as f:
        f.seek(offset + 4)
        byte = f.read(1)
        f.seek(offset + 4)
        f.write(bytes([byte[0] ^ 1]))
    code, doc = _cli("check", "--deep", str(path))
    assert code == 1
    assert any("field(s) 'reward'" in p["message"] for p in doc["problems"]), doc["problems"]
    with TensorDB.open(path, verify=True) as db:
        assert torch.equal(db.column("action")[4:], recs(6)["action"][4:])  # block 1 is fine
        with pytest.raises(CorruptBlobError, match="field\\(s\\) 'reward' of block"):
            db.column("action")[0]  # mapping block 0 verifies all its fields


def _same_prefix(path: Path, want: dict[str, torch.Tensor], n: int) -> None:
    with TensorDB.open(path) as db:
        assert len(db) == n
        got = db[:]
        for name in SCHEMA:  # every field the same length, each row one committed version
            assert torch.equal(got[name], want[name][:n]), name


def test_recover_salvages_a_database_with_a_missing_block_to_the_rows_before_it(tmp_path):
    path = tmp_path / "db"
    data = make(path, 10)  # blocks of B rows: 0-3, 4-7, 8-9
    with TensorDB.open(path) as db:
        os.unlink(db._blocks.path(db._state.blocks[1]))
    code, doc = _cli("check", str(path))
    assert code == 1
    assert "block-missing" in {p["code"] for p in doc["problems"]}
    code, doc = _cli("recover", str(path))  # refuses: repairing drops committed rows
    assert code == 1
    code, doc = _cli("recover", "--salvage", str(path))
    assert code == 0, doc
    assert doc["verdict"] == "salvaged"
    assert doc["dropped"]["rows"] == 6
    _same_prefix(path, data, 4)
    code, doc = _cli("check", "--deep", str(path))
    assert code == 0, doc["problems"]


def test_recover_salvages_a_database_whose_journal_is_damaged_in_the_middle(tmp_path):
    path = tmp_path / "db"
    data = recs(12)
    with TensorDB.open(path, "w", schema=SCHEMA, block_size=B) as db:
        for i in range(0, 12, 3):  # four transactions, after the creation's close marker
            db.write({k: v[i : i + 3] for k, v in data.items()})
        db.flush()
    j = scan_journal(str(path), read_meta(str(path)).uuid)
    third = [i for i, r in enumerate(j.records) if r["t"] in ("a", "c")][2]
    raw = bytearray((path / "journal").read_bytes())
    raw[j.offsets[third] + 12] ^= 0xFF  # a flipped bit in the third transaction
    (path / "journal").write_bytes(bytes(raw))
    with pytest.raises(tensorblob.CorruptBlobError, match="intact record"):
        TensorDB.open(path, "r")  # readers refuse it rather than drop committed records
    code, doc = _cli("recover", "--salvage", str(path))
    assert code == 0, doc
    assert doc["verdict"] == "salvaged"
    _same_prefix(path, data, 6)


# -- conversion of the original tensorblob's TensorDB ------------------------------------


def _expected_rl() -> dict[str, torch.Tensor]:
    """The records tests/data/orig-0.3/make.py wrote (``expected_db`` there)."""
    i = torch.arange(10)
    return {
        "obs": (i.reshape(10, 1, 1) * 3 + torch.arange(6).reshape(1, 2, 3)).to(torch.uint8),
        "action": i * 10 - 3,
        "reward": i.to(torch.float32) / 8,
        "done": i % 4 == 3,
    }


def test_import_db_converts_an_original_database_to_its_committed_records(tmp_path):
    want = _expected_rl()
    assert tensorblob.import_db(DATA / "orig-0.3" / "rl.db", tmp_path / "rl") == 10
    with TensorDB.open(tmp_path / "rl") as db:
        # the .conf lists the fields sorted; "reward" held 2 uncommitted rows
        assert db.fields == ("action", "done", "obs", "reward")
        assert db.block_size == 4
        assert same({k: db[:][k] for k in want}, want)
    with pytest.raises(DestinationExistsError):
        tensorblob.import_db(DATA / "orig-0.3" / "rl.db", tmp_path / "rl")
    assert tensorblob.import_db(DATA / "orig-0.3" / "rl.db", tmp_path / "rl", if_exists="append")
    with TensorDB.open(tmp_path / "rl") as db:
        assert len(db) == 20


def test_import_db_refuses_a_damaged_original_and_writes_nothing(tmp_path):
    import shutil  # noqa: PLC0415

    src = tmp_path / "rl.db"
    shutil.copytree(DATA / "orig-0.3" / "rl.db", src)
    stat = json.loads((src / "obs" / ".stat").read_text())
    os.unlink(src / "obs" / stat["bds"][1])
    with pytest.raises(tensorblob.CorruptInputError, match="missing"):
        tensorblob.import_db(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(tensorblob.UnsupportedFormatError, match="not a TensorDB"):
        tensorblob.import_db(DATA / "orig-0.3" / "f32.blob", tmp_path / "new")


# -- golden files: what this version wrote keeps opening --------------------------------


def test_golden_files_of_format_versions_2_and_4_keep_opening(tmp_path):
    import shutil  # noqa: PLC0415

    for name in ("blob-v2", "db-v4"):
        shutil.copytree(DATA / "golden" / name, tmp_path / name)
    with TensorBlob.open(tmp_path / "blob-v2") as blob:
        assert torch.equal(blob[:], torch.arange(21, dtype=torch.float32).reshape(7, 3))
    with TensorDB.open(tmp_path / "db-v4") as db:
        assert same(db[:], recs(7))
    for name in ("blob-v2", "db-v4"):
        code, doc = _cli("check", "--deep", str(tmp_path / name))
        assert code == 0, doc["problems"]
    with TensorDB.open(tmp_path / "db-v4", "a") as db:  # and keep taking records
        db.write(recs(2, 1))
    with TensorDB.open(tmp_path / "db-v4") as db:
        assert same(db[:], cat(recs(7), recs(2, 1)))


def _allocated_past(path: str, offset: int) -> int:
    """Bytes of disk space from ``offset`` on before the next hole of the file ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, offset, os.SEEK_HOLE) - offset
    finally:
        os.close(fd)


def test_sessions_take_disk_space_ahead_and_leave_every_field_and_snapshot_intact(tmp_path):
    """Each close() writes zeros past the last rows of each field (design.md item 23):
    never over a row of any field, nor over rows an older snapshot still shows."""
    schema = {"x": ("float32", (5,)), "y": ("int64", ()), "z": ("uint8", (3,))}
    path = str(tmp_path / "d")
    B = 8192
    want: dict[str, list[torch.Tensor]] = {k: [] for k in schema}
    readers = []
    for s in range(12):
        n = 1 + s % 5
        rec = {
            "x": torch.randn(n, 5),
            "y": torch.arange(n) + 100 * s,
            "z": torch.full((n, 3), s, dtype=torch.uint8),
        }
        mode = "w" if s == 0 else "a"
        with TensorDB.open(path, mode, schema=schema, block_size=B) as db:
            db.write(rec)
            if s == 7:  # rows a reader still sees, then cut: never zeroed
                db.flush()
                readers.append(
                    (
                        TensorDB.open(path, "r"),
                        {k: torch.cat([*v, rec[k]]) for k, v in want.items()},
                    )
                )
                db.truncate(len(db) - 2)
                rec = {k: v[:-2] for k, v in rec.items()}
        for k in schema:
            want[k].append(rec[k])
        with TensorDB.open(path, "r") as db:
            got = db[:]
            for k in schema:
                assert torch.equal(got[k], torch.cat(want[k])), (s, k)
        for r, snap in readers:
            got = r[:]
            for k in schema:
                assert torch.equal(got[k], snap[k]), (s, k)
    n = sum(len(v) for v in want["y"])
    assert n < B  # all in block 0: its fields' space past their rows was taken
    blk = os.path.join(path, "blocks", "0" * 16)
    meta = tensorblob._meta.read_meta(path)
    for fld in meta.fields:  # each field's space is taken to its end (less than 1 MiB)
        rows_end = fld.offset + n * fld.row_bytes
        assert _allocated_past(blk, rows_end) >= fld.offset + B * fld.row_bytes - rows_end
    for r, _ in readers:
        r.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.clone(),
        # values held negated (bool has no negation): copied by value, or refused
        lambda t: t.clone() if t.dtype == torch.bool else torch._neg_view(-t),
        lambda t: torch.stack([t, t], dim=-1)[..., 0] if t.dim() else t.clone(),
        lambda t: torch.cat([t.reshape(-1), t.reshape(-1)])[t.numel() :].view(t.shape),
    ],
    ids=["plain", "negative_bit", "non_contiguous", "storage_offset"],
)
def test_single_records_of_any_layout_are_stored_by_value(tmp_path, make):
    """Each field of a record (0-d scalars among them) as any tensor whose values are
    right: the fast path copies the values, or steps aside for the general path."""
    schema = {"x": ("float32", (3,)), "i": ("int64", ()), "f": ("float32", ()), "b": ("bool", ())}
    n = 10
    data = {
        "x": torch.randn(n, 3),
        "i": torch.arange(n) * 7 - 20,
        "f": torch.randn(n),
        "b": torch.arange(n) % 3 == 0,
    }
    path = tmp_path / "d"
    with TensorDB.open(path, "w", schema=schema) as db:
        db.write({k: v[:2] for k, v in data.items()})  # the window exists
        for i in range(2, n):
            db.write({k: make(v[i]) for k, v in data.items()})
    with TensorDB.open(path, "r") as db:
        got = db[:]
    for k, v in data.items():
        assert torch.equal(got[k], v), k
