"""export_blob and import_blob under failures: all or nothing, and nothing left behind.

An export killed at any disk step (through the ``_durable`` seam, in a forked child)
leaves the old file or the complete new one; an injected I/O error at any step
leaves neither the file nor a temporary; an import that fails commits nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorblob import DiskFullError, TensorBlob, _durable, _source, export_blob, import_blob


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


def _export_dying_at(src: str, out: Path, k: int) -> int:
    """Export in a forked child that dies at its k-th disk step; return its exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        steps = [0]

        def hook(step: str, path: str, extent: object) -> None:
            steps[0] += 1
            if steps[0] == k:
                os._exit(9)

        _durable.set_fault_hook(hook)
        try:
            export_blob(src, out, if_exists="replace")
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_an_export_killed_at_any_step_leaves_the_old_file_or_the_whole_new_one(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(_source, "CHUNK_BYTES", 64)  # 4 rows a piece: several appends
    src = make(tmp_path / "s.blob", torch.arange(40.0).reshape(10, 4))
    export_blob(src, tmp_path / "reference.npy")
    new = (tmp_path / "reference.npy").read_bytes()
    out = tmp_path / "x.npy"
    out.write_bytes(b"the old file")
    k = 1
    while (code := _export_dying_at(src, out, k)) == 9:
        assert out.read_bytes() in (b"the old file", new), f"died at step {k}"
        k += 1
    assert code == 0
    assert out.read_bytes() == new
    assert k > 7  # create, 4 appends, fdatasync, rename, fsync_dir: every one was a crash point
    export_blob(src, out, if_exists="replace")  # sweeps the temporaries of the dead exports
    assert listing(tmp_path) == ["reference.npy", "s.blob", "x.npy"]


class Boom(OSError):
    pass


def _fail_at(step: str, nth: int = 1):
    seen = {"n": 0}

    def hook(name: str, path: str, extent: object) -> None:
        if name == step:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Boom(28, f"injected at {step}")

    return hook


@pytest.mark.parametrize("step", ["create", "append", "fdatasync", "rename"])
def test_an_export_that_fails_at_any_step_leaves_neither_the_file_nor_a_temporary(tmp_path, step):
    src = make(tmp_path / "s.blob", torch.arange(40.0).reshape(10, 4))
    old = _durable.set_fault_hook(_fail_at(step, nth=2 if step == "append" else 1))
    try:
        with pytest.raises(DiskFullError, match="Nothing was written"):
            export_blob(src, tmp_path / "x.npy")
    finally:
        _durable.set_fault_hook(old)
    assert listing(tmp_path) == ["s.blob"]


def test_a_temporary_left_by_a_killed_export_is_removed_by_the_next_export(tmp_path):
    src = make(tmp_path / "s.blob", torch.arange(40.0).reshape(10, 4))
    pid = os.fork()
    if pid == 0:  # the child dies after writing the temporary file, before the rename
        _durable.set_fault_hook(lambda s, p, e: os._exit(9) if s == "rename" else None)
        export_blob(src, tmp_path / "x.npy")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    left = [n for n in listing(tmp_path) if n.startswith(".x.npy.export-")]
    assert len(left) == 1
    assert not (tmp_path / "x.npy").exists()
    export_blob(src, tmp_path / "x.npy")
    assert listing(tmp_path) == ["s.blob", "x.npy"]
    assert np.load(tmp_path / "x.npy").tolist() == content(src).tolist()


def test_an_import_that_fails_midway_commits_nothing_and_removes_a_blob_it_created(tmp_path):
    np.save(tmp_path / "in.npy", np.arange(400, dtype=np.float32).reshape(100, 4))
    old = _durable.set_fault_hook(_fail_at("write_rows", nth=3))
    try:
        with pytest.raises(DiskFullError, match="Nothing of this call was committed"):
            import_blob(tmp_path / "in.npy", tmp_path / "new", block_size=8)
        assert not (tmp_path / "new").exists()
        dst = make(tmp_path / "dst", torch.ones(2, 4))
        _durable.set_fault_hook(_fail_at("write_rows", nth=3))
        with pytest.raises(DiskFullError, match="Nothing of this call was committed"):
            import_blob(tmp_path / "in.npy", dst, if_exists="replace")
    finally:
        _durable.set_fault_hook(old)
    assert content(dst).tolist() == [[1.0] * 4] * 2  # the old rows, untouched
