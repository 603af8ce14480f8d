"""The ``manifest`` (last checkpoint) and ``State``, the committed shape of a blob (F3, F6).

A State is what a snapshot is: the row count, the block id in each slot, each
block's high-water mark (the most rows any committed snapshot has exposed from
it; rows below it are never overwritten in place), the blocks freed but not yet
deleted, and the next unused block id. The manifest stores one State; journal
commit records are deltas applied to it in order.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any

from . import _durable, _format
from ._locking import snapshot_seq
from .errors import CorruptBlobError

MANIFEST = "manifest"


@dataclass
class State:
    uuid: bytes
    gen: int = 1
    length: int = 0
    blocks: list[int] = field(default_factory=list)
    hwm: dict[int, int] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)
    next_id: int = 0
    # In memory only: the snapshot's sequence number; for blocks first
    # referenced after the manifest, the sequence of that commit; for each
    # freed block, the sequence of the commit that freed it (an upper bound
    # for blocks freed before the manifest). Only snapshots in [born, freed)
    # can use a block; see _locking for how leases use this.
    seq: int = 0
    freed_at: dict[int, int] = field(default_factory=dict)
    born: dict[int, int] = field(default_factory=dict)
    # Checksums (F3, F6): block id -> (rows, crc32 of the block's first
    # ``rows`` rows). Rows below a block's high-water mark never change, so a
    # checksum stays valid for the block's whole life; it is extended as the
    # block grows, each time its new rows become durable.
    sums: dict[int, tuple[int, int]] = field(default_factory=dict)

    def append_delta(self, n: int, block_size: int) -> dict[str, Any] | None:
        """The commit delta an append record growing this state to ``n`` rows stands for."""
        return append_delta(self.blocks, self.hwm, self.length, self.next_id, n, block_size)

    def _apply_append(self, n: int, q: int, block_size: int, what: str) -> list[int]:
        """Apply an append record: the same as applying ``append_delta(n)``, in O(new slots)."""
        return self.apply_appends([{"t": _format.REC_APPEND, "n": n, "q": q}], block_size, what)

    def apply_appends(self, recs: list[dict[str, Any]], block_size: int, what: str) -> list[int]:
        """Apply a run of append records, in one pass: the same as ``apply`` on each in turn.

        Each record grows the blob to its ``n`` rows, so the run must grow
        strictly; its rows land past the high-water mark of the last block.
        A block is born at the record whose rows first reach it, unless that
        record was carried over by a rotation (``p``, F6): the block was born
        in an older journal, so it gets no birth, which protects it from
        every older snapshot. Returns the blocks the run wrote.
        """
        B, blocks, hwm = block_size, self.blocks, self.hwm
        first, off = divmod(self.length, B)
        ns = [r["n"] for r in recs]
        prev = self.length
        if off and hwm.get(blocks[first], B) > off:  # a snapshot saw rows past the length
            prev = ns[0]  # so the first record does not fit: raised below
        for i, n in enumerate(ns):
            if n <= prev:
                raise CorruptBlobError(f"{what}: append q={recs[i]['q']} to {n} rows does not fit")
            prev = n
        n = ns[-1]
        k = -(-n // B)
        while len(blocks) < k:
            bid = self.next_id
            self.next_id += 1
            rec = recs[bisect.bisect_right(ns, len(blocks) * B)]
            blocks.append(bid)
            if not rec.get("p"):  # a carried record's blocks may be older: born unknown (0)
                self.born.setdefault(bid, snapshot_seq(self.gen, rec["q"]))
        for slot in range(first, k):
            hwm[blocks[slot]] = min(B, n - slot * B)
        self.seq = snapshot_seq(self.gen, recs[-1]["q"])
        self.length = n
        return blocks[first:k]

    def apply(self, rec: dict[str, Any], block_size: int, what: str) -> list[int]:
        """Apply one commit or append record (F6); return the blocks it wrote.

        Raises CorruptBlobError if the record does not fit this state.
        """
        if rec["t"] == _format.REC_APPEND:
            return self._apply_append(rec["n"], rec["q"], block_size, what)
        k = rec["k"]
        new_from = self.next_id  # ids below this existed before the record
        del self.blocks[k:]
        self.blocks.extend([-1] * (k - len(self.blocks)))
        seq = snapshot_seq(self.gen, rec["q"])
        for slot, bid in rec["s"]:
            _format.require(slot < k, what, f"commit q={rec['q']} sets slot {slot} >= {k}")
            self.blocks[slot] = bid
            if bid >= new_from:  # a moved block keeps its birth
                self.born.setdefault(bid, seq)
        for bid, h in rec["h"]:
            self.hwm[bid] = h
        for bid in rec["f"]:
            self.hwm.pop(bid, None)
            self.sums.pop(bid, None)
            self.free.append(bid)
            self.freed_at[bid] = seq
        self.seq = seq
        self.length = rec["n"]
        self.next_id = rec["x"]
        return rec["w"]

    def apply_sums(self, sums: list[list[int]], what: str) -> None:
        """Record the checksums ``[[bid, rows, crc], ...]`` of a durable marker (F6)."""
        hwm, mine = self.hwm, self.sums
        for bid, rows, crc in sums:  # check_sums has checked the types and ranges
            if rows > hwm.get(bid, -1):
                raise CorruptBlobError(
                    f"{what}: checksum of block {bid} over {rows} rows does not fit the state"
                )
            mine[bid] = (rows, crc)

    def validate(self, block_size: int, what: str) -> None:
        need = -(-self.length // block_size)
        _format.require(
            len(self.blocks) == need,
            what,
            f"{len(self.blocks)} blocks for {self.length} rows of block_size {block_size}",
        )
        for bid in self.blocks:
            _format.require(bid in self.hwm and bid < self.next_id, what, f"bad block id {bid}")
        _format.require(len(set(self.blocks)) == len(self.blocks), what, "block listed twice")
        _format.require(all(h <= block_size for h in self.hwm.values()), what, "hwm > block_size")
        _format.require(not set(self.free) & set(self.blocks), what, "a live block is listed free")
        _format.require(all(b < self.next_id for b in self.free), what, "bad free block id")

    def encode(self, block_size: int, gen: int | None = None) -> bytes:
        """The manifest of this state (F3), as generation ``gen`` (default: its own)."""
        full: list[int | None] = []
        part: list[list[int] | None] = []
        for b in self.blocks:
            rows, crc = self.sums.get(b, (0, None))
            full.append(crc if rows == block_size else None)
            part.append([rows, crc] if crc is not None and rows < block_size else None)
        body = {
            "uuid": self.uuid,
            "gen": self.gen if gen is None else gen,
            "length": self.length,
            "blocks": self.blocks,
            "hwm": [self.hwm[b] for b in self.blocks],
            "free": self.free,
            "next_id": self.next_id,
            "crc": full,
            "psum": part,
        }
        return _format.encode_file(_format.MAGIC_MANIFEST, body)


def append_delta(  # noqa: PLR0917 - the parts of a State it reads
    blocks: list[int], hwm: dict[int, int], length: int, next_id: int, n: int, block_size: int
) -> dict[str, Any] | None:
    """The commit delta (F6) of appending rows ``length..n`` in place, or None if impossible.

    An append record is the short form of a transaction that only wrote rows
    ``length..n``: into the last block from its high-water mark on, then into
    new blocks appended to the slot list with the next unused ids, in order.
    It is impossible if ``n <= length`` or if the last block has exposed rows
    past ``length`` (only a copy-on-write may write there).
    """
    B = block_size
    if n <= length:
        return None
    first, off = divmod(length, B)
    if off and hwm.get(blocks[first], B) > off:
        return None
    have, k = len(blocks), -(-n // B)
    new = range(next_id, next_id + k - have)
    final = blocks[first:] + list(new)
    return {
        "n": n,
        "k": k,
        "s": [[have + i, bid] for i, bid in enumerate(new)],
        "h": [[bid, min(B, n - (first + i) * B)] for i, bid in enumerate(final)],
        "f": [],
        "w": final,
        "x": next_id + len(new),
    }


def read_manifest(root: str, uuid: bytes, block_size: int) -> State:
    path = os.path.join(root, MANIFEST)
    what = f"manifest {path!r}"
    try:
        data = _format.read_file(path)
    except FileNotFoundError:
        raise CorruptBlobError(f"{what} is missing; run `tensorblob check`") from None
    body = _format.decode_file(_format.MAGIC_MANIFEST, data, what)
    _format.check_manifest(body, what)
    if body["uuid"] != uuid:
        raise CorruptBlobError(f"{what} belongs to another blob (uuid mismatch)")
    seq = snapshot_seq(body["gen"], 0)
    st = State(
        uuid,
        body["gen"],
        body["length"],
        body["blocks"],
        dict(zip(body["blocks"], body["hwm"], strict=True)),
        body["free"],
        body["next_id"],
        seq,
        dict.fromkeys(body["free"], seq),
    )
    for b, c in zip(body["blocks"], body.get("crc", []), strict=False):
        if c is not None:
            st.sums[b] = (block_size, c)
    for b, p in zip(body["blocks"], body.get("psum", []), strict=False):
        if p is not None:
            st.sums[b] = (p[0], p[1])
    st.validate(block_size, what)
    for b, p in zip(body["blocks"], body.get("psum", []), strict=False):
        if p is not None and p[0] > st.hwm[b]:
            raise CorruptBlobError(f"{what}: checksum of block {b} covers unwritten rows")
    return st


def stage_manifest(root: str, state: State, block_size: int, gen: int) -> None:
    """Write ``state`` as the manifest of generation ``gen`` to ``manifest.tmp``, fsynced.

    ``_durable.install`` puts it in place.
    """
    _durable.stage(os.path.join(root, MANIFEST), state.encode(block_size, gen))
