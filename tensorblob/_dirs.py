"""A blob directory's lifecycle: creating it, deleting it, and what crashes leave behind.

Creation builds the blob complete and durable in a hidden sibling directory,
then renames it into place (docs/design.md, item 9); deletion renames it to
a hidden tombstone, then removes that (item 10). A crash in either leaves a
hidden directory that the next creation or deletion of the same name sweeps
away. Every change goes through ``_durable``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets

from . import _durable, _recovery
from ._blockfiles import BLOCKS, parse_block_name
from ._format import MAGIC_META
from ._journal import JOURNAL, encode_journal
from ._locking import LOCK, READERS, WriterLock, hold_dir
from ._manifest import MANIFEST, encode_manifest
from ._meta import META, Meta, read_meta
from ._state import State
from .errors import (
    BlobIOError,
    BlobNotFoundError,
    InvalidArgumentError,
    NotABlobError,
    TensorBlobError,
    from_os_error,
)


def _make_parents(parent: str, path: str) -> None:
    """Create the missing directories of ``parent``, top down, each made durable."""
    missing = []
    d = parent
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise NotABlobError(f"cannot create blob {path!r}: {d!r} is not a directory")
        missing.append(d)
        up = os.path.dirname(d)
        if up == d:  # pragma: no cover - the root always exists
            break
        d = up
    for d in reversed(missing):
        try:
            _durable.mkdir(d)
        except FileExistsError:  # another process made it meanwhile
            if not os.path.isdir(d):
                raise NotABlobError(
                    f"cannot create blob {path!r}: {d!r} is not a directory"
                ) from None
            continue
        _durable.fsync_dir(os.path.dirname(d))


def is_empty(path: str) -> bool:
    """True if the directory ``path`` is empty (a blob's meta file says at once it is not)."""
    return not os.path.exists(os.path.join(path, META)) and not os.listdir(path)


def create(path: str, meta: Meta) -> bool:
    """Create a blob at ``path`` atomically; return False if one appeared there meanwhile.

    The blob is built complete and durable in a hidden sibling directory, then
    renamed into place (the creation's commit point), then the parent is
    fsynced. ``path`` may be absent or an empty directory. Missing parent
    directories are created first, top down, each made durable (its own
    parent fsynced) before anything is created inside it.
    """
    tmp, held = build_dir(path)
    try:
        build(tmp, meta)
        try:
            _durable.rename(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                remove_tree(tmp)
                return False
            raise
    except BaseException:
        if os.path.isdir(tmp):
            remove_tree(tmp)
        raise
    finally:
        os.close(held)
    _durable.fsync_dir(os.path.dirname(path))
    return True


def enclosing_blob(path: str) -> str | None:
    """The blob (or TensorDB) directory that is ``path`` or holds it, if there is one."""
    while True:
        try:
            fd = os.open(os.path.join(path, META), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                if os.read(fd, len(MAGIC_META)) == MAGIC_META:
                    return path
            finally:
                os.close(fd)
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def build_dir(path: str) -> tuple[str, int]:
    """Make the hidden sibling directory a blob for ``path`` is built in, locked; return it
    and the lock's descriptor (close it when done). Missing parents are created first,
    and what dead builders of ``path`` left behind is swept."""
    parent, name = os.path.split(path)
    inside = enclosing_blob(parent)
    if inside is not None:
        raise InvalidArgumentError(
            f"cannot create {path!r} inside the blob {inside!r}: a blob's directory holds "
            "only its own files"
        )
    _make_parents(parent, path)
    sweep_leftovers(parent, name)
    for _ in range(5):
        tmp = os.path.join(parent, f".{name}.creating-{secrets.token_hex(4)}")
        _durable.mkdir(tmp)
        # Locked while building: a sweeper removes a hidden directory only when
        # it can lock it (its builder died). If one took it first, start over.
        held = hold_dir(tmp)
        if held is not None:
            return tmp, held
    raise BlobIOError(  # pragma: no cover - five sweepers in a row
        f"cannot create blob {path!r}: its build directory kept vanishing"
    )


def build(tmp: str, meta: Meta) -> None:
    """Write an empty blob of ``meta`` into the empty directory ``tmp``, durably."""
    _durable.create_file(os.path.join(tmp, LOCK), b"", sync=False)
    state = State(meta.uuid, arity=len(meta.fields))
    _durable.create_file(os.path.join(tmp, META), meta.encode(), sync=True)
    _durable.create_file(
        os.path.join(tmp, MANIFEST), encode_manifest(state, meta.block_size), sync=True
    )
    journal = encode_journal(meta.uuid, state.gen, secrets.randbits(32), closed=True)
    _durable.create_file(os.path.join(tmp, JOURNAL), journal, sync=True)
    _durable.create_file(os.path.join(tmp, READERS), b"", sync=False)
    _durable.mkdir(os.path.join(tmp, BLOCKS))
    _durable.fsync_dir(tmp)


def sweep_leftovers(parent: str, name: str) -> None:
    """Remove hidden creating/deleting directories of ``name`` whose owner died.

    A live creator or deleter holds a flock on the directory (see
    ``hold_dir``); a directory that can be locked is removed.
    """
    prefixes = (f".{name}.creating-", f".{name}.deleting-")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    removed = False
    for entry in entries:
        if not entry.startswith(prefixes):
            continue
        leftover = os.path.join(parent, entry)
        fd = hold_dir(leftover)
        if fd is None:
            continue
        try:
            remove_tree(leftover)
            removed = True
        except OSError:
            pass  # best effort: a later creation or unlink tries again
        finally:
            os.close(fd)
    if removed:
        # Durable before anything this name does next: otherwise a power cut
        # could bring a leftover back next to a blob created after it.
        _durable.fsync_dir(parent)


def remove_tree(root: str) -> None:
    """Remove a blob directory that nothing else can see any more (created or tombstoned).

    Tolerates another process removing the same directory at the same time.
    """
    blocks = os.path.join(root, BLOCKS)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(blocks):
            _durable.unlink(os.path.join(blocks, name), missing_ok=True)
        _durable.rmdir(blocks)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            _durable.unlink(os.path.join(root, name), missing_ok=True)
        _durable.rmdir(root)


def unlink(root: str, *, db: bool, missing_ok: bool, timeout: float) -> bool:
    """``_unlink``, with an OSError of the disk work raised as a tensorblob error."""
    try:
        return _unlink(root, db=db, missing_ok=missing_ok, timeout=timeout)
    except OSError as exc:
        if isinstance(exc, TensorBlobError):
            raise
        kind = "database" if db else "blob"
        raise from_os_error(exc, root, "deleting it", "", kind=kind) from exc


def _unlink(root: str, *, db: bool, missing_ok: bool, timeout: float) -> bool:
    """Delete the blob (``db``: the TensorDB) at ``root``, atomically: after a crash it is
    either whole or gone. Return True, or False if nothing was there and ``missing_ok``.

    Takes the writer lock first. Refuses a directory that holds files
    tensorblob did not create, so it never deletes anything else. Steps:
    rename to a hidden tombstone (the commit point), fsync the parent,
    remove the tombstone's files, fsync the parent again.

    Raises:
        BlobNotFoundError: nothing at ``root`` (unless ``missing_ok``).
        NotABlobError: ``root`` is not a blob (a TensorDB), or holds foreign files.
        CorruptBlobError: the blob's ``meta`` is damaged.
        LockTimeoutError: a writer kept the lock past ``timeout``.
    """
    kind = "TensorDB" if db else "TensorBlob"
    if not os.path.lexists(root):
        if missing_ok:
            return False
        raise BlobNotFoundError(f"{kind} not found: nothing at {root!r}")
    if not os.path.isdir(root) or os.path.islink(root):
        raise NotABlobError(f"{root!r} is not a tensorblob (it is not a directory)")
    meta = read_meta(root)
    if meta.db != db:
        raise NotABlobError(
            f"refusing to delete {root!r} as a {kind}: it is a {meta.kind} (use {meta.kind}.unlink)"
        )
    foreign = sorted(set(os.listdir(root)) - _recovery.KNOWN_FILES)
    blocks_dir = os.path.join(root, BLOCKS)
    if os.path.isdir(blocks_dir):
        foreign += [f"{BLOCKS}/{n}" for n in os.listdir(blocks_dir) if parse_block_name(n) is None]
    if foreign:
        raise NotABlobError(
            f"refusing to delete {root!r}: it holds files tensorblob did not create: "
            f"{', '.join(foreign[:5])}"
        )
    lock = WriterLock(root, timeout)
    lock.acquire()
    parent, name = os.path.split(root)
    tomb = os.path.join(parent, f".{name}.deleting-{secrets.token_hex(4)}")
    try:
        _durable.rename(root, tomb)  # the commit point: the blob is gone
        _durable.fsync_dir(parent)
    finally:
        lock.release()
    held = hold_dir(tomb)  # if a sweeper got there first, it removes the tombstone
    if held is not None:
        try:
            remove_tree(tomb)
        finally:
            os.close(held)
        # The tombstone's removal is durable too: a power cut after a later
        # creation of the name must not bring it back beside the new blob.
        _durable.fsync_dir(parent)
    sweep_leftovers(parent, name)
    return True
