"""``tensorblob check --deep``: read every committed row, verify the data checksums.

``deep_read`` reads block files with plain ``read`` calls, not through a
mapping, so that a failing disk gives an ``OSError`` (reported) rather than
a ``SIGBUS``. ``BlockVerifier`` is the one place where block bytes are
compared with a stored checksum. Nothing here changes a file.
"""

from __future__ import annotations

import errno
import os
import zlib
from typing import Any

from ._blockfiles import BLOCKS, block_name, sum_mismatch
from ._findings import Scan
from ._meta import Meta
from ._state import State

_CHUNK = 8 << 20  # deep reads go in chunks of this many bytes


class BlockVerifier:
    """The one place where block data is checked against a stored checksum.

    A block's checksum (F3, F6) is a CRC-32 of each field's first ``rows``
    rows, recorded when they became durable (in the manifest, or in the
    journal record of a durable point) and extended as the block grows.
    ``deep_read`` asks ``span`` how many rows of a block to read (its
    committed rows, or more if the checksum covers more: rows a truncate
    hid), streams each field's through ``update`` and asks ``finish`` for a
    verdict. Rows that are not durable yet have no checksum: they are only read.
    """

    def __init__(self, meta: Meta, state: State) -> None:
        self.meta = meta
        self.sums: dict[int, tuple[int, tuple[int, ...]]] = dict(state.sums)
        self.verified = 0
        self.unchecked = 0
        self.rows_unchecked = 0  # committed rows past their block's checksum: only read
        self.mismatched = 0
        self._want: tuple[int, tuple[int, ...]] | None = None
        self._left = [0] * len(meta.fields)  # bytes of each field still to feed to its crc
        self._crcs = [0] * len(meta.fields)

    def span(self, bid: int, committed: int) -> int:
        """Start on block ``bid`` of ``committed`` rows; return how many rows to read."""
        self._want = self.sums.get(bid)
        rows = self._want[0] if self._want is not None else 0
        self.rows_unchecked += max(0, committed - rows)
        self._left = [rows * f.row_bytes for f in self.meta.fields]
        self._crcs = [0] * len(self.meta.fields)
        return max(committed, rows)

    def update(self, f: int, chunk: memoryview) -> None:
        """Feed the next bytes of field ``f`` of the block, in order."""
        if self._left[f]:
            n = min(self._left[f], len(chunk))
            self._crcs[f] = zlib.crc32(chunk[:n], self._crcs[f])
            self._left[f] -= n

    def finish(self, bid: int, first_row: int) -> str | None:
        """Return what is wrong if the block's bytes do not match its checksum.

        ``first_row`` is the blob row of the block's row 0, for the message.
        """
        if self._want is None:
            self.unchecked += 1
            return None
        self.verified += 1
        rows, want = self._want
        wrong = sum_mismatch(self.meta, bid, first_row, rows, tuple(self._crcs), want)
        if wrong:
            self.mismatched += 1
            return wrong + ", and readers return them as they are"
        return None

    def summary(self) -> dict[str, int]:
        return {
            "verified": self.verified,
            "mismatched": self.mismatched,
            "without_checksum": self.unchecked,
            "rows_without_checksum": self.rows_unchecked,
        }

    def status(self) -> str:
        if not self.verified:
            return (
                "none recorded for these blocks yet (a block's checksum is recorded when its "
                "rows become durable: at flush(), close() or a checkpoint)"
            )
        return (
            f"{self.verified} block(s) verified against their crc32 ({self.mismatched} "
            f"mismatched) over their durable rows; {self.unchecked} block(s) without one; "
            f"{self.rows_unchecked} committed row(s) not durable yet, so not covered (only read)"
        )


def deep_read(sc: Scan, progress: Any = None) -> BlockVerifier | None:
    """Read every committed row of every referenced block: I/O errors, data checksums."""
    meta, state = sc.meta, sc.state
    if meta is None or state is None:
        return None
    B, rb = meta.block_size, meta.row_bytes
    bad = {p.file for p in sc.problems if p.code in ("block-missing", "block-size")}
    verifier = BlockVerifier(meta, state)
    work = [
        (slot, bid, min(B, state.length - slot * B))
        for slot, bid in enumerate(state.blocks)
        if f"{BLOCKS}/{block_name(bid)}" not in bad
    ]
    total = sum(max(n, verifier.sums.get(bid, (0, ()))[0]) * rb for _, bid, n in work)
    done = 0
    buf = bytearray(min(_CHUNK, max(total, 1)))
    view = memoryview(buf)
    for slot, bid, nrows in work:
        name = f"{BLOCKS}/{block_name(bid)}"
        rows = verifier.span(bid, nrows)
        try:
            fd = os.open(os.path.join(sc.root, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                for i, fld in enumerate(meta.fields):  # each field's rows: one stretch
                    got, want = 0, rows * fld.row_bytes
                    while got < want:
                        n = os.preadv(fd, [view[: min(len(buf), want - got)]], fld.offset + got)
                        if not n:
                            end = fld.offset + got
                            raise OSError(errno.EIO, f"file ends at byte {end}, before its rows")
                        verifier.update(i, view[:n])
                        got += n
                        done += n
                        if progress is not None:
                            progress(done, total)
            finally:
                os.close(fd)
        except OSError as exc:
            sc.add(
                "error",
                "io-error",
                f"reading block {block_name(bid)} (slot {slot}, rows {slot * B} to "
                f"{slot * B + nrows - 1}) failed: {exc.strerror or exc}",
                "the disk or filesystem returned an error: copy the readable rows out with a "
                "reader, check the disk (dmesg, smartctl), restore the block from a backup",
                name,
            )
            continue
        mismatch = verifier.finish(bid, slot * B)
        if mismatch:
            sc.add(
                "error",
                "checksum",
                mismatch,
                f"restore blocks/{block_name(bid)} from a backup; recover does not read rows, "
                "so it neither finds nor repairs this",
                name,
            )
        sc.blocks_read += 1
        sc.rows_read += nrows
    return verifier
