"""Read-only inspection of a blob: what ``tensorblob info`` and ``check`` report (G4, G5).

``scan`` reads ``meta``, ``manifest``, ``journal`` and the directory listing,
and builds a ``Scan``: the committed state exactly as ``_snapshot.load`` gives
it, every problem found (each with what to do about it), and, where damage
stops the normal recovery, the state ``recover --salvage`` would keep and what
it would drop. ``_diagnose`` does the manifest, journal and block-file part
of the analysis, ``_deep`` reads the rows (``check --deep``), ``_findings``
holds the results, ``_repair`` plans and runs recovery from a Scan.

Nothing here changes a file or takes the writer lock. Whether a writer holds
the lock is tested with a non-blocking ``flock`` on a fresh read-only
descriptor, released at once. While it reads, a scan holds a reader lease
like any reader, so a live writer does not delete the blocks being checked.
It works without write permission.
"""

from __future__ import annotations

import os
import struct

from . import _diagnose, _format, _recovery, _snapshot
from ._blockfiles import BLOCKS, block_name, parse_block_name
from ._findings import Problem, Scan, ids_text
from ._journal import JOURNAL
from ._locking import LOCK, READERS, ReaderCensus, ReaderLease, holder_text, probe_lock
from ._manifest import MANIFEST
from ._meta import META, Meta, read_meta
from .errors import CorruptBlobError, NotABlobError, UnsupportedVersionError


def scan(path: str, *, lease: bool = True, own_lock: bool = False) -> Scan:
    """Inspect the blob at ``path`` without changing anything; see the module docstring.

    ``lease``: hold a reader lease while scanning (and until ``Scan.close``).
    ``own_lock``: the caller holds the writer lock (recover); skip the lock test.
    """
    root = os.path.abspath(os.path.expanduser(path))
    sc = Scan(root, own_lock=own_lock)
    if not _classify(sc):
        return sc
    meta = sc.meta
    assert meta is not None
    if not own_lock:
        sc.lock = probe_lock(root)
    sc.readers_file = os.path.isfile(os.path.join(root, READERS))
    if lease and sc.readers_file:
        try:
            sc.lease = ReaderLease(root)
            sc.lease.hold_everything()
        except OSError:  # no lease: a live writer may then delete freed blocks meanwhile
            sc.close()
    try:
        try:
            _diagnose.read_state(sc, meta)
        except UnsupportedVersionError as exc:
            _list(sc)
            sc.kind = "unsupported"
            sc.problems.append(
                Problem(
                    "error",
                    "unsupported-version",
                    f"{str(exc).replace(root + os.sep, '')}. Nothing was changed",
                    "use a tensorblob release that reads this format version",
                )
            )
            return sc
        # Listed after the state is read, under the lease: each block that state
        # uses was created before its commit and is not deleted while the lease
        # holds every snapshot. Blocks a live writer adds meanwhile are newer.
        _list(sc)
        _diagnose.check_blocks(sc, meta)
        _check_leftovers(sc)
        if sc.lease is not None and sc.state is not None:
            sc.lease.hold(sc.state.seq)
        _check_frees(sc)
        if sc.loaded is not None and not sc.writer_active and not sc.count("error"):
            _cross_check(sc, meta)
    except BaseException:
        sc.close()
        raise
    return sc


def _classify(sc: Scan) -> bool:
    """Is ``sc.root`` a blob this version can read? Fill ``kind``/``meta``; True to go on."""
    root = sc.root
    if not os.path.lexists(root):
        sc.kind = "missing"
        sc.problems.append(
            Problem("error", "not-found", f"{root}: no such file or directory", "check the path")
        )
        return False
    if not os.path.isdir(root):
        sc.kind = "not-a-blob"
        sc.problems.append(
            Problem(
                "error",
                "not-a-blob",
                f"{root} is not a tensorblob: it is a file, and a blob is a directory",
                "give the path of the blob directory",
            )
        )
        return False
    try:
        sc.meta = read_meta(root)
    except UnsupportedVersionError as exc:
        sc.kind = "unsupported"
        sc.version = _version_of(os.path.join(root, META))
        sc.problems.append(
            Problem(
                "error",
                "unsupported-version",
                f"{exc}. Nothing was changed",
                "use a tensorblob release that reads this format version",
                META,
            )
        )
        return False
    except NotABlobError as exc:
        _not_a_blob(sc, str(exc))
        return False
    except CorruptBlobError as exc:
        sc.kind = "damaged"
        sc.unrepairable = True
        sc.problems.append(
            Problem(
                "error",
                "meta-damaged",
                "meta is damaged: "
                + str(exc).replace(f"meta file {os.path.join(root, META)!r}: ", ""),
                "meta holds the blob's dtype, row shape and block size and cannot be rebuilt "
                "from the other files: restore `meta` from a backup of this blob",
                META,
            )
        )
        return False
    except OSError as exc:
        sc.kind = "damaged"
        sc.unrepairable = True
        sc.problems.append(Problem("error", "io-error", f"cannot read meta: {exc}", "", META))
        return False
    # The newest version among the headers: a rotated journal is version 3.
    sc.version = max(_version_of(os.path.join(root, name)) for name in (META, JOURNAL))
    return True


def _version_of(path: str) -> int:
    try:
        with open(path, "rb") as f:
            head = f.read(_format.HEADER_SIZE)
        return struct.unpack_from("<H", head, 8)[0]
    except (OSError, struct.error):
        return 0


def _not_a_blob(sc: Scan, why: str) -> None:
    root = sc.root
    names = sorted(os.listdir(root))
    if not names:
        sc.kind = "not-a-blob"
        sc.problems.append(
            Problem(
                "error",
                "not-a-blob",
                f"{root} is an empty directory, not a tensorblob",
                "check the path; TensorBlob.open(path, 'w', dtype=..., shape=...) creates a blob",
            )
        )
        return
    # A directory whose manifest or journal carries tensorblob's magic is a blob missing meta.
    ours = [
        n
        for n, magic in ((MANIFEST, _format.MAGIC_MANIFEST), (JOURNAL, _format.MAGIC_JOURNAL))
        if _starts_with(os.path.join(root, n), magic)
    ]
    if ours and META not in names:
        sc.kind = "damaged"
        sc.unrepairable = True
        sc.problems.append(
            Problem(
                "error",
                "meta-missing",
                f"meta is missing, but {' and '.join(ours)} are tensorblob files: this is a "
                "blob that lost its meta file (dtype, row shape, block size)",
                "restore `meta` from a backup of this blob; it cannot be rebuilt from the "
                "other files",
                META,
            )
        )
        return
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    sc.kind = "not-a-blob"
    sc.problems.append(
        Problem(
            "error",
            "not-a-blob",
            f"{root} is not a tensorblob ({why.split(': ', 1)[-1]}); it holds: {shown}",
            "check the path: a blob directory holds meta, manifest, journal and blocks/",
        )
    )


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _list(sc: Scan) -> None:
    """List the directory: unknown names, temp files, block files and sizes, disk usage."""
    root = sc.root
    for name in sorted(os.listdir(root)):
        st = _lstat(os.path.join(root, name))
        if st is None:
            continue
        sc.bytes_apparent += st.st_size
        sc.bytes_on_disk += st.st_blocks * 512
        if name in _recovery.TEMPS:
            sc.temps.append(name)
        elif name not in _recovery.KNOWN_FILES:
            sc.unknown.append(name)
    bdir = os.path.join(root, BLOCKS)
    sc.blocks_dir = os.path.isdir(bdir)
    if not sc.blocks_dir:
        return
    for name in sorted(os.listdir(bdir)):
        st = _lstat(os.path.join(bdir, name))
        if st is None:
            continue
        sc.bytes_apparent += st.st_size
        sc.bytes_on_disk += st.st_blocks * 512
        bid = parse_block_name(name)
        # Only the canonical spelling is a block: the engine opens blocks/<16 lowercase hex>.
        if bid is None or block_name(bid) != name or not os.path.isfile(os.path.join(bdir, name)):
            sc.unknown.append(f"{BLOCKS}/{name}")
        else:
            sc.on_disk[bid] = st.st_size


def _lstat(path: str) -> os.stat_result | None:
    """``os.lstat``, or None for a name that went away since the listing (a live writer
    deleted a freed block, or renamed a checkpoint's temporary file)."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _check_leftovers(sc: Scan) -> None:
    state = sc.state
    for name in sc.temps:
        sc.add(
            "warning",
            "stray-temp",
            f"{name} is left over from an interrupted checkpoint",
            "run `tensorblob recover PATH`: it removes it (it is never read)",
            name,
        )
    for name in sc.unknown:
        sc.add(
            "warning",
            "unknown-file",
            f"{name} is not a tensorblob file",
            "move it out of the blob directory by hand: tensorblob never reads it, recover "
            "leaves it alone, and TensorBlob.unlink refuses to delete a blob holding it",
            name,
        )
    if not sc.readers_file:
        sc.add(
            "warning",
            "readers-missing",
            "the readers file is missing: readers cannot open the blob",
            "run `tensorblob recover PATH`: it recreates it (an empty file carrying the "
            "readers' lock ranges)",
            READERS,
        )
    if sc.writer_active:
        sc.add(
            "note",
            "writer-active",
            f"a writer has the blob open right now: {holder_text(sc.lock)}",
            "nothing to do; recover would wait for it to close",
            LOCK,
        )
    if not sc.lock.exists and not sc.own_lock and not os.path.lexists(os.path.join(sc.root, LOCK)):
        sc.add("note", "lock-missing", "the lock file is missing; the next writer creates it")
    if state is None:
        return
    referenced = set(state.blocks) | set(state.free)
    sc.orphans = sorted(set(sc.on_disk) - referenced)
    if sc.orphans and sc.salvage is None:
        sc.add(
            "warning",
            "orphan-blocks",
            f"{len(sc.orphans)} block file(s) are in no committed state ({ids_text(sc.orphans)}): "
            "left by transactions that did not commit",
            "run `tensorblob recover PATH`: it deletes them",
            BLOCKS,
        )
    if sc.orphans and sc.salvage is not None:
        sc.drops.lines.append(
            f"{len(sc.orphans)} block file(s) that the kept state does not use "
            f"({ids_text(sc.orphans)}), deleted"
        )
    if sc.salvage is not None:
        _diagnose.reserve_ids(sc, state)


def _check_frees(sc: Scan) -> None:
    state = sc.state
    if state is None:
        return
    present = [b for b in state.free if b in sc.on_disk and b not in set(state.blocks)]
    if not present:
        return
    if sc.readers_file:
        # Our own lease holds byte ``state.seq`` only (see scan): probe around it.
        own = state.seq if sc.lease is not None else None
        census = ReaderCensus(sc.root)
        try:
            for bid in present:
                a, b = state.birth(bid), state.freed_at.get(bid, state.seq + 1)
                if own is None or not a <= own < b:
                    used = census.readers_in(a, b)
                else:
                    used = census.readers_in(a, own) or census.readers_in(own + 1, b)
                (sc.freed_in_use if used else sc.reclaimable).append(bid)
        finally:
            census.close()
    else:
        sc.reclaimable = present
    waiting = [b for b in sc.reclaimable if b not in sc.drops.blocks]  # not salvage's own
    if waiting:
        sc.add(
            "note",
            "freed-blocks",
            f"{len(waiting)} freed block file(s) wait to be deleted; no reader needs them now",
            "recover, or the next writer's flush() or close(), deletes them",
            BLOCKS,
        )
    if sc.freed_in_use:
        sc.add(
            "note",
            "freed-in-use",
            f"{len(sc.freed_in_use)} freed block file(s) are kept while open readers may "
            "still use them",
            "nothing to do: a writer deletes them once those readers close",
            BLOCKS,
        )


def _cross_check(sc: Scan, meta: Meta) -> None:
    """The library's own load() must agree; a disagreement means check missed something."""
    try:
        got = _snapshot.load(sc.root, meta).state
    except (CorruptBlobError, OSError, KeyError) as exc:
        sc.add(
            "error",
            "load-failed",
            f"the library cannot load the committed state: {exc}",
            "please report this: check found no specific cause",
        )
        return
    want = sc.state
    if want is not None and (got.length, got.blocks) != (want.length, want.blocks):
        sc.add(
            "note",
            "changed",
            "the blob changed while it was being checked; run check again",
        )
