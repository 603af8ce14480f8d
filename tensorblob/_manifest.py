"""The ``manifest``: the last checkpoint, one State as a file (F3).

Replaced as a whole (staged, then renamed into place), never edited. Pure
Python.
"""

from __future__ import annotations

import os

from . import _durable, _format, _records
from ._locking import snapshot_seq
from ._state import State
from .errors import CorruptBlobError

MANIFEST = "manifest"


def encode_manifest(
    state: State,
    block_size: int,
    gen: int | None = None,
    sums: list[list[int]] | None = None,
) -> bytes:
    """The manifest of ``state`` (F3), as generation ``gen`` (default: its own), with
    the checksums ``sums`` (``[[bid, rows, crc, ...], ...]``) in place of the state's."""
    have = state.sums
    if sums:
        have = {**have, **{e[0]: (e[1], tuple(e[2:])) for e in sums}}
    seq = snapshot_seq(state.gen if gen is None else gen, 0)  # freed before this manifest
    full: list[int | list[int] | None] = []
    part: list[list[int] | None] = []
    for b in state.blocks:
        rows, crcs = have.get(b, (0, None))
        full.append(_records.pack_crcs(crcs) if crcs is not None and rows == block_size else None)
        part.append([rows, *crcs] if crcs is not None and rows < block_size else None)
    body = {
        "uuid": state.uuid,
        "gen": state.gen if gen is None else gen,
        "length": state.length,
        "blocks": state.blocks,
        "hwm": [state.hwm[b] for b in state.blocks],
        "free": state.free,
        "next_id": state.next_id,
        "crc": full,
        "psum": part,
        "born": state.floors(),
        "freed": [state.freed_at.get(b, seq) for b in state.free],
    }
    return _format.encode_file(_format.MAGIC_MANIFEST, body)


_DECODED = _format.Decoded()  # readers reopen the same blob again and again


def read_manifest(root: str, uuid: bytes, block_size: int, arity: int = 1) -> State:
    """The manifest's State; ``arity``: the blob's number of fields (crcs per checksum)."""
    path = os.path.join(root, MANIFEST)
    what = f"manifest {path!r}"
    try:
        data = _format.read_file(path)
    except FileNotFoundError:
        raise CorruptBlobError(
            f"{what} is missing; run `tensorblob check`", path=path, reason="missing"
        ) from None
    args = (uuid, block_size, arity)
    hit = _DECODED.get(path, data, args)
    if hit is not None:
        return hit.copy()
    st = _decode_manifest(data, uuid, block_size, arity, what, path)
    _DECODED.put(path, data, st.copy(), args)
    return st


def _decode_manifest(  # noqa: PLR0917 - the file and what it must match
    data: bytes, uuid: bytes, block_size: int, arity: int, what: str, path: str
) -> State:
    body = _format.decode_file(_format.MAGIC_MANIFEST, data, what)
    _records.check_manifest(body, what)
    if body["uuid"] != uuid:
        raise CorruptBlobError(
            f"{what} belongs to another blob (uuid mismatch)", path=path, reason="foreign"
        )
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
        dict(zip(body["free"], body.get("freed") or [seq] * len(body["free"]), strict=True)),
        arity=arity,
    )
    for b, c in zip(body["blocks"], body.get("crc", []), strict=False):
        if c is not None:
            st.sums[b] = (block_size, _records.unpack_crcs(c))
    for b, p in zip(body["blocks"], body.get("psum", []), strict=False):
        if p is not None:
            st.sums[b] = (p[0], tuple(p[1:]))
    for lo, seq in body.get("born", []):
        st.floor_ids.append(lo)
        st.floor_seqs.append(seq)
    st.at_manifest()
    if any(len(crcs) != arity for _, crcs in st.sums.values()):
        _records.corrupt(what, f"a checksum has not {arity} crc(s), one per field", "schema")
    st.validate(block_size, what)
    for b, p in zip(body["blocks"], body.get("psum", []), strict=False):
        if p is not None and p[0] > st.hwm[b]:
            _records.corrupt(what, f"checksum of block {b} covers unwritten rows", "schema")
    return st


def stage_manifest(
    root: str, state: State, block_size: int, gen: int, sums: list[list[int]] | None = None
) -> None:
    """Write ``state`` as the manifest of generation ``gen`` (with the checksums ``sums``)
    to ``manifest.tmp``, fsynced. ``_durable.install`` puts it in place."""
    _durable.stage(os.path.join(root, MANIFEST), encode_manifest(state, block_size, gen, sums))
