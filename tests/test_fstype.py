"""Writers refused on filesystems whose locks or fsync cannot be trusted; readers allowed.

The detection reads a mountinfo table: these tests point it at a fake one
(``_fstype.MOUNTINFO``) that declares a directory under ``tmp_path`` to be
an NFS (or SMB, Lustre, FUSE) mount, rather than mocking the filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tensorblob import InvalidArgumentError, TensorBlob, UntrustedFilesystemError, _fstype

TABLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
36 27 98:0 /export /mnt/with\\040space rw,noatime master:1 shared:7 - nfs4 srv:/export rw
37 27 0:40 / /mnt/data rw,relatime - ext4 /dev/vdb rw
38 37 0:41 / /mnt/data/remote rw,relatime - cifs //srv/share rw
39 37 0:42 / /mnt/data/remote rw,relatime - tmpfs tmpfs rw
40 27 0:43 / /mnt/fuse rw - fuse.sshfs host:/ rw
41 27 0:44 / /mnt/overlay rw - fuse.fuse-overlayfs fuse-overlayfs rw
this line is not a mountinfo line
"""


def test_the_table_is_parsed_into_mount_points_and_types_with_escapes_decoded():
    mounts = _fstype.parse_mountinfo(TABLE)
    assert mounts[:3] == [("/proc", "proc"), ("/", "ext4"), ("/mnt/with space", "nfs4")]
    assert len(mounts) == 8


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ("/", "ext4")),
        ("/home/user/blob", ("/", "ext4")),
        ("/mnt/with space/a/b", ("/mnt/with space", "nfs4")),
        ("/mnt/with space", ("/mnt/with space", "nfs4")),
        ("/mnt/with spaces", ("/", "ext4")),  # a prefix of the name is not a parent
        ("/mnt/data/x", ("/mnt/data", "ext4")),
        ("/mnt/data/remote/x", ("/mnt/data/remote", "tmpfs")),  # the last mount stacked wins
        ("/mnt/fuse/blob", ("/mnt/fuse", "fuse.sshfs")),
    ],
)
def test_the_longest_mount_point_holding_the_path_wins(path, expected):
    assert _fstype.mount_of(path, _fstype.parse_mountinfo(TABLE)) == expected


@pytest.mark.parametrize(
    ("fstype", "untrusted"),
    [
        ("ext4", False),
        ("xfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("lustre", True),
        ("ceph", True),
        ("fuse", True),
        ("fuse.sshfs", True),
        ("fuse.fuse-overlayfs", False),
    ],
)
def test_network_and_fuse_filesystems_are_untrusted(fstype, untrusted):
    assert _fstype.is_untrusted(fstype) is untrusted


@pytest.fixture
def nfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory ``nfs`` under tmp_path that the mountinfo table says is an NFS mount."""
    mount = Path(os.path.realpath(tmp_path)) / "nfs"
    mount.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"90 27 0:99 / {mount} rw,relatime - nfs4 server:/export rw,vers=4.2\n"
    )
    monkeypatch.setattr(_fstype, "MOUNTINFO", str(table))
    return mount


@pytest.mark.parametrize("mode", ["w", "a", "r+", "w+", "a+"])
def test_a_writer_on_nfs_is_refused_with_an_error_naming_the_filesystem(nfs, mode):
    path = nfs / "blob"
    if mode[0] == "r":
        with TensorBlob.open(path, "w", dtype="int64", shape=(), trust_fs=True) as w:
            w.write(torch.arange(3))
    before = sorted(os.listdir(nfs))
    with pytest.raises(UntrustedFilesystemError) as info:
        TensorBlob.open(path, mode, dtype="int64", shape=())
    message = str(info.value)
    assert "nfs4" in message
    assert str(nfs) in message
    assert str(path) in message
    assert "trust_fs=True" in message
    assert isinstance(info.value, OSError)
    assert sorted(os.listdir(nfs)) == before  # refused before anything was created


def test_a_writer_through_a_symlink_into_nfs_is_refused(nfs, tmp_path):
    (nfs / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(nfs / "real")
    with pytest.raises(UntrustedFilesystemError, match="nfs4"):
        TensorBlob.open(link / "blob", "w", dtype="int64", shape=())


def test_a_reader_on_nfs_is_allowed_and_trust_fs_lets_a_writer_in(nfs):
    path = nfs / "blob"
    with TensorBlob.open(path, "w", dtype="int64", shape=(), trust_fs=True) as w:
        w.write(torch.arange(5))
    with TensorBlob.open(path, "r") as r:
        assert r[:].tolist() == [0, 1, 2, 3, 4]


def test_a_writer_next_to_the_nfs_mount_is_not_refused(nfs, tmp_path):
    with TensorBlob.open(tmp_path / "local", "w", dtype="int64", shape=()) as w:
        w.write(torch.arange(2))


def test_trust_fs_must_be_a_bool(tmp_path):
    with pytest.raises(InvalidArgumentError, match="trust_fs=1"):
        TensorBlob.open(tmp_path / "blob", "w", dtype="int64", shape=(), trust_fs=1)
    assert not os.path.exists(tmp_path / "blob")


def test_an_unreadable_table_refuses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_fstype, "MOUNTINFO", str(tmp_path / "missing"))
    assert _fstype.filesystem_of(str(tmp_path)) is None
    with TensorBlob.open(tmp_path / "blob", "w", dtype="int64", shape=()) as w:
        w.write(torch.arange(2))


def test_the_real_table_places_this_directory_on_a_filesystem(tmp_path):
    found = _fstype.filesystem_of(str(tmp_path / "not" / "yet"))
    assert found is not None
    point, fstype = found
    assert os.path.realpath(tmp_path).startswith(point)
    assert fstype
