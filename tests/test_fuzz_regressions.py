"""Minimal reproducers of engine bugs found by the fuzz campaign (fuzz/, docs/fuzzing.md).

Each test fails until the engine is fixed; the docstring names the campaign
part that found it and the diagnosis.
"""

from __future__ import annotations

from typing import Any

import torch

from tensorblob import TensorBlob, _locking


def test_reader_open_is_not_refused_while_the_writer_deletes_freed_blocks(tmp_path: Any) -> None:
    """Found by the kill -9 soak (fuzz/soak.py, reader processes): G3/G4.

    While the writer deletes freed blocks (``_recovery.reap``) it holds a
    write lock on ``REAP_BYTE`` of ``readers`` (``ReaderProbe.guard``). A
    reader opening then calls ``ReaderLease.hold_everything``, a
    non-blocking ``F_OFD_SETLK`` read lock on ``[0, EOF)``, which includes
    ``REAP_BYTE``: it fails with a raw ``BlockingIOError`` (EAGAIN), so
    ``TensorBlob.open(path, "r")`` raises instead of opening a snapshot
    (tensorblob/_locking.py, ``hold_everything``). In the soak about one
    reader open in ten fails this way while writers commit and flush.
    """
    path = str(tmp_path / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=3, block_size=4) as b:
        b.write(torch.zeros(8, 3))
    probe = _locking.ReaderProbe(path)
    assert probe.guard()  # what the writer holds while _recovery.reap deletes blocks
    try:
        with TensorBlob.open(path, "r") as r:
            assert len(r) == 8
    finally:
        probe.unguard()
        probe.close()
