"""The filesystem a path is on (from ``/proc/self/mountinfo``), and whether a writer trusts it.

The writer's guarantees rest on three things a network or FUSE filesystem
may not give: a ``flock`` and open-file-description locks that every
process which can see the files honours, an ``fsync`` that really reaches
stable storage, and one page cache shared by every reader of a block file.
A writer's open on a filesystem of a type listed here is refused
(``UntrustedFilesystemError``) unless the caller passes ``trust_fs=True``.
Readers are allowed everywhere; docs/ddp.md says what they can rely on.

Detection reads ``MOUNTINFO`` (a module attribute, so that tests can point it
at a fake table) and takes the mount whose mount point is the longest prefix
of the path with its symlinks resolved. A table that cannot be read (not
Linux, no ``/proc``) refuses nothing.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

from .errors import UntrustedFilesystemError

MOUNTINFO = "/proc/self/mountinfo"

# Network and cluster filesystems: their locks may not reach every machine
# that sees the files, and their fsync and caches are the server's and the
# client's business.
NETWORK = frozenset(
    {
        "9p",
        "afs",
        "beegfs",
        "ceph",
        "cifs",
        "davfs",
        "gfs2",
        "glusterfs",
        "gpfs",
        "lustre",
        "ncpfs",
        "nfs",
        "nfs4",
        "ocfs2",
        "orangefs",
        "smb3",
        "smbfs",
        "virtiofs",
    }
)
# FUSE mounts (types "fuse" and "fuse.NAME"): a daemon that does not
# implement fsync makes the kernel report success for every later fsync, and
# its locks may be local to one machine. These daemons are known to pass both
# through to a local filesystem.
TRUSTED_FUSE = frozenset({"fuse.fuse-overlayfs"})

_ESCAPE = re.compile(r"\\([0-7]{3})")
_cache: dict[tuple[str, int, int], tuple[str, str] | None] = {}
_statfs = getattr(ctypes.CDLL(None, use_errno=True), "statfs", None)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """Return ``(mount point, filesystem type)`` for each line of a mountinfo table, in order.

    Lines that do not have the mountinfo layout (fields, ``-``, type) are
    skipped. Octal escapes in mount points (``\\040`` for a space) are decoded.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if sep + 1 >= len(fields) or not fields[4].startswith("/"):
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((point, fields[sep + 1]))
    return mounts


def mount_of(path: str, mounts: list[tuple[str, str]]) -> tuple[str, str] | None:
    """Return the ``(mount point, type)`` holding the absolute ``path``, or None.

    The longest mount point that is ``path`` or one of its ancestors wins;
    among equal ones, the last in the table (a mount stacked over another).
    """
    best: tuple[str, str] | None = None
    for point, fstype in mounts:
        inside = point in ("/", path) or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def filesystem_of(path: str) -> tuple[str, str] | None:
    """Return ``(mount point, type)`` of the filesystem holding ``path``, or None if unknown.

    Symlinks are resolved. A path that does not exist yet is placed by its
    nearest existing ancestor, where it would be created. Reading the table
    costs about 40 us, so the answer is cached per filesystem: by device
    number and ``statfs`` type, which a filesystem mounted later on a reused
    device number does not share unless it is of the same kind.
    """
    probe = os.path.abspath(path)
    while True:
        try:
            st = os.stat(probe)
            break
        except OSError:
            parent = os.path.dirname(probe)
            if parent == probe:
                return None
            probe = parent
    key = (MOUNTINFO, st.st_dev, _statfs_type(probe))
    if key not in _cache:
        try:
            with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            return None
        _cache[key] = mount_of(os.path.realpath(probe), parse_mountinfo(text))
    return _cache[key]


def _statfs_type(path: str) -> int:
    """``f_type`` of ``statfs(path)`` (the first field, a long, on 64-bit Linux), or -1."""
    buf = ctypes.create_string_buffer(256)  # more than the 120 bytes of struct statfs
    if _statfs is None or _statfs(os.fsencode(path), buf) != 0:
        return -1
    return int.from_bytes(buf.raw[:8], sys.byteorder, signed=True)


def is_untrusted(fstype: str) -> bool:
    """True for a filesystem type whose locks or fsync a writer cannot rely on."""
    if fstype in TRUSTED_FUSE:
        return False
    return fstype in NETWORK or fstype == "fuse" or fstype.startswith("fuse.")


def refuse_untrusted(root: str) -> None:
    """Raise UntrustedFilesystemError if the blob at ``root`` is on an untrusted filesystem."""
    found = filesystem_of(root)
    if found is None or not is_untrusted(found[1]):
        return
    point, fstype = found
    raise UntrustedFilesystemError(
        f"refusing to open blob {root!r} for writing: it is on a {fstype} filesystem "
        f"(mounted at {point!r}), whose locks and fsync tensorblob cannot trust. Write on a "
        "local filesystem and let other machines read (docs/ddp.md), or pass trust_fs=True "
        "if its locks and fsync work and no other machine writes to it"
    )
