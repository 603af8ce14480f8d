"""``State``, the committed shape of a blob, and the one transition that changes it (F6).

A State is what a snapshot is: the row count, the block id in each slot, each
block's high-water mark (the most rows any committed snapshot has exposed from
it; rows below it are never overwritten in place), the blocks freed but not yet
deleted, the next unused block id, and each block's checksum. The manifest
stores one State (``_manifest``); journal records are deltas applied to it in
order, by ``State.apply`` and nothing else.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from . import _records
from ._locking import snapshot_seq


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
    # Checksums (F3, F6): block id -> (rows, the crc32 of each field's first
    # ``rows`` rows in the block). Rows below a block's high-water mark never
    # change, so a checksum stays valid for the block's whole life; it is
    # extended as the block grows, each time its new rows become durable.
    sums: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    arity: int = 1  # crcs per checksum: the number of fields
    # In memory only: rows that records logged (F6 ``r``) and the block files
    # may lack after a power cut, until a writer's recovery rewrites them
    # there: (block id, byte offset, bytes). Readers lay them over their
    # private mappings (_blocks.BlockStore.logged). Almost always empty.
    logged: list[tuple[int, int, bytes]] = field(default_factory=list)
    # Lower bounds of births, for blocks ``born`` has no entry for (F3
    # ``born``): a block with id >= floor_ids[i] was first put in a slot at a
    # sequence >= floor_seqs[i]. Ids increase. Block ids only grow, so each
    # manifest adds one: its next_id, at its generation's first sequence.
    floor_ids: list[int] = field(default_factory=list)
    floor_seqs: list[int] = field(default_factory=list)

    def copy(self) -> State:
        """A copy that shares nothing mutable with this one (``logged`` is not copied)."""
        return State(
            self.uuid,
            self.gen,
            self.length,
            list(self.blocks),
            dict(self.hwm),
            list(self.free),
            self.next_id,
            self.seq,
            dict(self.freed_at),
            dict(self.born),
            dict(self.sums),
            self.arity,
            floor_ids=list(self.floor_ids),
            floor_seqs=list(self.floor_seqs),
        )

    def birth(self, bid: int) -> int:
        """The sequence at which block ``bid`` was first put in a slot, or a lower bound."""
        b = self.born.get(bid)
        if b is not None:
            return b
        i = bisect.bisect_right(self.floor_ids, bid) - 1
        return self.floor_seqs[i] if i >= 0 else 0

    def at_manifest(self) -> None:
        """This state is (now) a manifest's: blocks from ``next_id`` on are born after
        its generation began."""
        seq = snapshot_seq(self.gen, 0)
        if self.floor_ids and self.floor_ids[-1] >= self.next_id:  # no block since
            self.floor_seqs[-1] = max(self.floor_seqs[-1], seq)
        else:
            self.floor_ids.append(self.next_id)
            self.floor_seqs.append(seq)

    def floors(self) -> list[list[int]]:
        """The lower bounds of births a manifest of this state keeps (F3 ``born``): those
        whose range of ids holds a block in a slot or in the free list, and the last."""
        ids = sorted({*self.blocks, *self.free})
        kept = []
        last = len(self.floor_ids) - 1
        for i, (lo, seq) in enumerate(zip(self.floor_ids, self.floor_seqs, strict=True)):
            j = bisect.bisect_left(ids, lo)
            if i == last or (j < len(ids) and ids[j] < self.floor_ids[i + 1]):
                kept.append([lo, seq])
        return kept

    def append_delta(self, n: int, block_size: int) -> dict[str, Any] | None:
        """The commit delta an append record growing this state to ``n`` rows stands for."""
        return append_delta(self.blocks, self.hwm, self.length, self.next_id, n, block_size)

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
                _records.corrupt(
                    what, f"append q={recs[i]['q']} to {n} rows does not fit", "does-not-fit"
                )
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
        for r in recs:  # sync="full" appends carry checksums
            cs = r.get("cs")
            if cs:
                self.apply_sums(cs, what)
        return blocks[first:k]

    def apply(
        self, rec: dict[str, Any], block_size: int, what: str, *, fresh_from: int | None = None
    ) -> list[int]:
        """Apply one journal record of any type (F6): the one state transition.

        Replay, the live commit (after resetting its working state to the
        transaction's start), the fast append and salvage all change a State
        through this. ``fresh_from``: block ids at or above it are new (born
        by this record); by default, those at or above ``next_id``. Returns
        the blocks the record wrote. Raises CorruptBlobError if the record
        does not fit this state.
        """
        t = rec["t"]
        if t == _records.REC_APPEND:
            written = self.apply_append(rec["n"], rec["q"], block_size, what, rec.get("p", False))
        elif t == _records.REC_COMMIT:
            written = self._apply_commit(rec, what, fresh_from)
        else:  # open and sync records change no rows
            written = []
        cs = rec.get("cs")
        if cs:
            self.apply_sums(cs, what)
        return written

    def apply_append(
        self, n: int, q: int, block_size: int, what: str, carried: bool = False
    ) -> list[int]:
        """Apply the append record ``{"t": "a", "n": n, "q": q}`` (``p``: ``carried``).

        The common case, rows that stay in the last block (a collector's
        commit), costs a few assignments; anything else is ``apply_appends``.
        """
        length, B, blocks = self.length, block_size, self.blocks
        if length < n <= len(blocks) * B and length // B == (n - 1) // B:
            slot = length // B
            bid, base = blocks[slot], slot * B
            if length == base or self.hwm.get(bid, B) <= length - base:
                self.hwm[bid] = n - base
                self.length = n
                self.seq = snapshot_seq(self.gen, q)
                return [bid]
        rec = {**_records.append_record(n, carried=carried), "q": q}
        return self.apply_appends([rec], B, what)

    def _apply_commit(self, rec: dict[str, Any], what: str, fresh_from: int | None) -> list[int]:
        k = rec["k"]
        new_from = self.next_id if fresh_from is None else fresh_from
        del self.blocks[k:]
        self.blocks.extend([-1] * (k - len(self.blocks)))
        seq = snapshot_seq(self.gen, rec["q"])
        for slot, bid in rec["s"]:
            _records.require(slot < k, what, f"commit q={rec['q']} sets slot {slot} >= {k}")
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
        """Record the checksums ``[[bid, rows, crc, ...], ...]`` of a durable marker (F6):
        one crc per field."""
        hwm, mine, width = self.hwm, self.sums, 2 + self.arity
        for e in sums:  # check_sums has checked the types and ranges
            bid, rows = e[0], e[1]
            if rows > hwm.get(bid, -1):
                _records.corrupt(
                    what, f"checksum of block {bid} over {rows} rows does not fit", "does-not-fit"
                )
            _records.require(len(e) == width, what, f"checksum of block {bid}: not {width} ints")
            mine[bid] = (rows, tuple(e[2:]))

    def validate(self, block_size: int, what: str) -> None:
        need = -(-self.length // block_size)
        _records.require(
            len(self.blocks) == need,
            what,
            f"{len(self.blocks)} blocks for {self.length} rows of block_size {block_size}",
        )
        for bid in self.blocks:
            _records.require(bid in self.hwm and bid < self.next_id, what, f"bad block id {bid}")
        _records.require(len(set(self.blocks)) == len(self.blocks), what, "block listed twice")
        _records.require(all(h <= block_size for h in self.hwm.values()), what, "hwm > block_size")
        _records.require(not set(self.free) & set(self.blocks), what, "a live block is listed free")
        _records.require(all(b < self.next_id for b in self.free), what, "bad free block id")


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
