"""A hypothesis state machine: the whole API against a plain in-memory tensor.

Every rule does the same thing to a real blob and to the model (a tensor, a
cursor, a mode), across all six modes, both sync levels, reopens,
transactions that commit and transactions that roll back. After every step
the blob must equal the model: length, cursor, and every row.

Profiles: HYPOTHESIS_PROFILE=ci (default, about 20 s) or nightly (long).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tensorblob import TensorBlob, UnsupportedOperationError

settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=2000,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHAPE = (2,)
B = 3
MODES = ["r", "w", "a", "r+", "w+", "a+"]


def make_rows(n: int, seed: int) -> torch.Tensor:
    return torch.arange(n * 2, dtype=torch.int64).reshape(n, 2) + seed * 100


class BlobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tb-model-")
        self.path = os.path.join(self.dir, "blob")
        self.other_path = os.path.join(self.dir, "other")
        self.other = make_rows(7, 9)
        with TensorBlob.open(self.other_path, "w", dtype="int64", shape=2, block_size=B) as o:
            o.write(self.other)
        self.blob: TensorBlob | None = None
        self.model = torch.empty((0, 2), dtype=torch.int64)
        self.pos = 0
        self.mode = ""
        self.txn: contextlib.AbstractContextManager[Any] | None = None
        self.saved: tuple[torch.Tensor, int] | None = None

    def teardown(self) -> None:
        if self.blob is not None:
            self.blob.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self.mode != "r"

    @property
    def readable(self) -> bool:
        return self.mode[0] == "r" or "+" in self.mode

    def _open(self, mode: str, sync: str) -> None:
        assert self.blob is not None or mode[0] in "wa"
        self.blob = TensorBlob.open(
            self.path, mode, dtype="int64", shape=SHAPE, block_size=B, sync=sync
        )
        self.mode = mode
        if mode[0] == "w":
            self.model = self.model[:0]
        self.pos = len(self.model) if mode[0] == "a" else 0

    # -- rules ----------------------------------------------------------------

    @initialize(sync=st.sampled_from(["normal", "full"]))
    def create(self, sync: str) -> None:
        self._open("w+", sync)

    @precondition(lambda self: self.txn is None)
    @rule(mode=st.sampled_from(MODES), sync=st.sampled_from(["normal", "full"]))
    def reopen(self, mode: str, sync: str) -> None:
        assert self.blob is not None
        self.blob.close()
        self._open(mode, sync)

    @precondition(lambda self: self.writable)
    @rule(
        n=st.integers(1, 8), seed=st.integers(0, 50), form=st.sampled_from(["batch", "flat", "row"])
    )
    def write(self, n: int, seed: int, form: str) -> None:
        new = make_rows(n, seed)
        if form == "flat":
            arg = new.reshape(-1)
        elif form == "row":
            new = new[:1]
            arg = new[0]
        else:
            arg = new
        assert self.blob.write(arg) == len(new)
        at = len(self.model) if self.mode[0] == "a" else self.pos
        self.model = torch.cat([self.model[:at], new, self.model[at + len(new) :]])
        self.pos = at + len(new)

    @rule(pos=st.integers(-12, 30), whence=st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END]))
    def seek(self, pos: int, whence: int) -> None:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.model)}[whence]
        self.pos = max(0, min(len(self.model), base + pos))
        assert self.blob.seek(pos, whence) == self.pos

    @rule(size=st.one_of(st.none(), st.integers(-1, 10)))
    def read(self, size: int | None) -> None:
        if not self.readable:
            try:
                self.blob.read(size)
            except UnsupportedOperationError:
                return
            raise AssertionError(f"read() allowed in mode {self.mode!r}")
        got = self.blob.read(size)
        end = len(self.model) if size is None or size < 0 else min(len(self.model), self.pos + size)
        assert torch.equal(got, self.model[self.pos : max(end, self.pos)])
        self.pos = max(end, self.pos)

    @precondition(lambda self: self.writable)
    @rule(pos=st.one_of(st.none(), st.integers(0, 30)))
    def truncate(self, pos: int | None) -> None:
        cut = self.pos if pos is None else pos
        assert self.blob.truncate(pos) == min(cut, len(self.model))
        if cut < len(self.model):
            self.model = self.model[:cut]
            self.pos = min(self.pos, cut)

    @precondition(lambda self: self.writable)
    @rule(ordered=st.booleans())
    def extend(self, ordered: bool) -> None:
        with TensorBlob.open(self.other_path, "r") as other:
            assert self.blob.extend(other, maintain_order=ordered) == len(self.other)
        if ordered:
            self.model = torch.cat([self.model, self.other])
        else:
            sf, of = len(self.model) // B * B, len(self.other) // B * B
            self.model = torch.cat(
                [self.model[:sf], self.other[:of], self.model[sf:], self.other[of:]]
            )
        self.pos = len(self.model)

    @precondition(lambda self: self.writable and self.txn is None)
    @rule()
    def begin(self) -> None:
        self.txn = self.blob.transaction()
        self.txn.__enter__()
        self.saved = (self.model.clone(), self.pos)

    @precondition(lambda self: self.txn is not None)
    @rule()
    def commit(self) -> None:
        self.txn.__exit__(None, None, None)
        self.txn = None

    @precondition(lambda self: self.txn is not None)
    @rule()
    def rollback(self) -> None:
        exc = RuntimeError("rollback")
        assert self.txn.__exit__(RuntimeError, exc, None) is False
        self.txn = None
        self.model, self.pos = self.saved

    @precondition(lambda self: self.txn is None)
    @rule()
    def flush(self) -> None:
        self.blob.flush()

    @rule(data=st.data())
    def index(self, data: st.DataObject) -> None:
        n = len(self.model)
        if n == 0:
            return
        kind = data.draw(st.sampled_from(["int", "slice", "list", "tensor"]))
        if kind == "int":
            i = data.draw(st.integers(-n, n - 1))
            assert torch.equal(self.blob[i], self.model[i])
        elif kind == "slice":
            a = data.draw(st.one_of(st.none(), st.integers(-n - 2, n + 2)))
            b = data.draw(st.one_of(st.none(), st.integers(-n - 2, n + 2)))
            c = data.draw(st.one_of(st.none(), st.integers(-5, 5).filter(bool)))
            want = self.model[list(range(n))[a:b:c]] if n else self.model
            assert torch.equal(self.blob[a:b:c], want)
        else:
            idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=10))
            arg = idx if kind == "list" else torch.tensor(idx, dtype=torch.int64)
            assert torch.equal(self.blob[arg], self.model[idx].reshape(-1, 2))

    # -- invariants ---------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        if self.blob is None:
            return
        assert len(self.blob) == len(self.model)
        assert self.blob.tell() == self.pos
        assert torch.equal(self.blob[:], self.model)

    @invariant()
    def a_reader_sees_the_last_commit(self) -> None:
        if self.blob is None or self.txn is not None:
            return
        with TensorBlob.open(self.path, "r") as r:
            assert torch.equal(r[:], self.model)


BlobMachine.TestCase.settings = settings()
test_blob_matches_in_memory_model = BlobMachine.TestCase
