"""``tensorblob export`` and ``tensorblob import``: exit codes, --json, and what the text says.

Run in-process through ``tensorblob._cli.main``, as tests/test_cli.py runs the other
commands. Every failure must leave no output file and an unchanged blob.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tensorblob import TensorBlob, TensorDB
from tensorblob._cli import main

FIELDS = {"command", "path", "ok", "exit_code", "verdict", "problems", "actions", "file"}
FIELDS |= {"format", "rows", "dtype", "shape", "fields", "bytes", "seconds"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out = run(capsys, *argv, "--json")
    doc = json.loads(out)
    assert set(doc) == FIELDS
    assert doc["exit_code"] == code
    assert doc["ok"] == (code == 0)
    return doc


def make(path: Path, rows: torch.Tensor) -> str:
    with TensorBlob.open(path, "w", dtype=rows.dtype, shape=rows.shape[1:], block_size=4) as b:
        b.write(rows)
    return str(path)


def test_export_then_import_through_the_command_line_round_trips(tmp_path, capsys):
    rows = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    src = make(tmp_path / "s.blob", rows)
    code, out = run(capsys, "export", src, str(tmp_path / "s.npy"))
    assert code == 0
    assert f"export {src} -> {tmp_path / 's.npy'}" in out
    assert "10 row(s) of float32 (3,)" in " ".join(out.split())  # the text is wrapped
    assert "result: exported" in out
    doc = run_json(capsys, "import", str(tmp_path / "s.npy"), str(tmp_path / "d.blob"))
    assert doc["command"] == "import"
    assert doc["verdict"] == "imported"
    assert doc["path"] == str(tmp_path / "d.blob")
    assert doc["file"] == str(tmp_path / "s.npy")
    assert (doc["format"], doc["rows"], doc["dtype"], doc["shape"]) == ("npy", 10, "float32", [3])
    assert doc["bytes"] == 120
    assert doc["problems"] == []
    assert len(doc["actions"]) == 1
    with TensorBlob.open(tmp_path / "d.blob") as blob:
        assert torch.equal(blob[:], rows)


def test_export_json_reports_the_file_format_and_bytes(tmp_path, capsys):
    src = make(tmp_path / "s.blob", torch.ones(5, 2, dtype=torch.bfloat16))
    out = tmp_path / "s.safetensors"
    doc = run_json(capsys, "export", src, str(out), "--name", "emb")
    assert (doc["verdict"], doc["format"], doc["rows"]) == ("exported", "safetensors", 5)
    assert doc["shape"] == [2]
    assert doc["bytes"] == out.stat().st_size
    assert doc["path"] == src


def test_a_tensordb_exports_with_its_fields_imports_back_and_an_unknown_field_fails(
    tmp_path, capsys
):
    with TensorDB.open(tmp_path / "s.db", "w", schema={"x": ("int32", 2), "y": ("bool", ())}) as db:
        db.write(
            {
                "x": torch.arange(6, dtype=torch.int32).reshape(3, 2),
                "y": torch.ones(3, dtype=torch.bool),
            }
        )
    src = str(tmp_path / "s.db")
    doc = run_json(capsys, "export", src, str(tmp_path / "s.safetensors"))
    assert (doc["verdict"], doc["rows"], doc["fields"], doc["dtype"]) == (
        "exported",
        3,
        ["x", "y"],
        None,
    )
    code, out = run(capsys, "export", src, str(tmp_path / "x.npy"), "--field", "x")
    assert code == 0
    assert "3 record(s) of fields x" in " ".join(out.split())
    assert np.load(tmp_path / "x.npy").tolist() == [[0, 1], [2, 3], [4, 5]]
    doc = run_json(capsys, "import", str(tmp_path / "s.safetensors"), str(tmp_path / "d.db"))
    assert (doc["verdict"], doc["rows"], doc["fields"]) == ("imported", 3, ["x", "y"])
    with TensorDB.open(tmp_path / "d.db") as db:
        assert db.column("x")[:].tolist() == [[0, 1], [2, 3], [4, 5]]
    for extra, verdict in (([], "unsupported-format"), (["--field", "z"], "usage")):
        doc = run_json(capsys, "export", src, str(tmp_path / "y.npy"), *extra)
        assert (doc["exit_code"], doc["verdict"]) == (2, verdict)
        assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize(
    ("case", "code", "verdict"),
    [
        ("bfloat16-to-npy", 2, "unsupported-format"),
        ("exists", 2, "exists"),
        ("missing-blob", 2, "not-found"),
        ("not-a-blob", 2, "not-a-blob"),
        ("damaged-blob", 1, "damaged"),
        ("unknown-suffix", 2, "unsupported-format"),
    ],
)
def test_a_refused_or_failed_export_exits_with_its_code_and_writes_nothing(
    tmp_path, capsys, case, code, verdict
):
    dtype = torch.bfloat16 if case == "bfloat16-to-npy" else torch.float32
    src = make(tmp_path / "s.blob", torch.zeros(3, 2, dtype=dtype))
    out = tmp_path / ("x.bin" if case == "unknown-suffix" else "x.npy")
    if case == "exists":
        out.write_bytes(b"old")
    elif case == "missing-blob":
        src = str(tmp_path / "missing.blob")
    elif case == "not-a-blob":
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "f").write_text("x")
        src = str(tmp_path / "dir")
    elif case == "damaged-blob":
        Path(src, "manifest").write_bytes(b"garbage")
    doc = run_json(capsys, "export", src, str(out))
    assert (doc["exit_code"], doc["verdict"]) == (code, verdict)
    assert [p["code"] for p in doc["problems"]] == [verdict]
    assert doc["actions"] == []
    assert doc["rows"] is None
    assert out.read_bytes() == b"old" if case == "exists" else not out.exists()
    text_code, text = run(capsys, "export", src, str(out))
    assert text_code == code
    assert f"[{verdict}]" in text
    assert "no file was written" in text


def test_import_refuses_a_blob_with_rows_unless_told_to_replace_or_append(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.arange(6, dtype=np.int64).reshape(3, 2))
    dst = make(tmp_path / "d.blob", torch.full((1, 2), -1, dtype=torch.int64))
    doc = run_json(capsys, "import", str(tmp_path / "in.npy"), dst)
    assert (doc["exit_code"], doc["verdict"]) == (2, "exists")
    assert "--replace" in doc["problems"][0]["fix"]
    assert run(capsys, "import", str(tmp_path / "in.npy"), dst, "--append")[0] == 0
    with TensorBlob.open(dst) as blob:
        assert blob[:][:, 0].tolist() == [-1, 0, 2, 4]
    assert run(capsys, "import", str(tmp_path / "in.npy"), dst, "--replace")[0] == 0
    with TensorBlob.open(dst) as blob:
        assert blob[:][:, 0].tolist() == [0, 2, 4]
    code, _ = run(capsys, "import", str(tmp_path / "in.npy"), dst, "--replace", "--append")
    assert code == 2  # a usage error: one or the other


def test_import_of_a_damaged_input_exits_1_and_creates_nothing(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((100, 3), dtype=np.float32))
    with open(tmp_path / "in.npy", "r+b") as f:
        f.truncate(200)
    doc = run_json(capsys, "import", str(tmp_path / "in.npy"), str(tmp_path / "d.blob"))
    assert (doc["exit_code"], doc["verdict"]) == (1, "damaged-input")
    assert "cut short" in doc["problems"][0]["message"]
    assert not (tmp_path / "d.blob").exists()


def test_import_exits_3_while_another_writer_holds_the_destination(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((4, 3), dtype=np.float32))
    with TensorBlob.open(tmp_path / "d.blob", "a", dtype="float32", shape=3):
        doc = run_json(
            capsys, "import", str(tmp_path / "in.npy"), str(tmp_path / "d.blob"), "--timeout", "0"
        )
    assert (doc["exit_code"], doc["verdict"]) == (3, "busy")
    with TensorBlob.open(tmp_path / "d.blob") as blob:
        assert len(blob) == 0


def test_import_takes_the_original_format_and_a_block_size(tmp_path, capsys):
    orig = Path(__file__).resolve().parent / "data" / "orig-0.3" / "f32.blob"
    doc = run_json(capsys, "import", str(orig), str(tmp_path / "d.blob"), "--block-size", "3")
    assert (doc["verdict"], doc["format"], doc["rows"]) == ("imported", "tensorblob-0.3", 10)
    with TensorBlob.open(tmp_path / "d.blob") as blob:
        assert blob.block_size == 3
    # An original TensorDB becomes a TensorDB, its committed records whole.
    doc = run_json(capsys, "import", str(orig.parent / "db"), str(tmp_path / "db"))
    assert (doc["verdict"], doc["rows"], doc["fields"]) == ("imported", 6, ["done", "obs"])
    with TensorDB.open(tmp_path / "db") as db:
        assert torch.equal(db.column("obs")[:], torch.ones(6, 3))
