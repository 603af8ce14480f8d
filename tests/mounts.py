"""Small real filesystems for fault tests: a tmpfs with ``size=``, an ext4 image on a loop device.

Mounting needs root (CI runs as root on a machine like the one the suite is
written for). Every mount is checked with ``os.path.ismount`` before a test
may fill it, and is unmounted (and its image removed) when the test ends,
whether it passed or failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a test filesystem needs root (CI runs these as root)")


def _umount(where: str) -> None:
    for _ in range(50):
        done = subprocess.run(["umount", where], capture_output=True, check=False, timeout=60)
        if done.returncode == 0 or not os.path.ismount(where):
            return
        time.sleep(0.1)  # a process of the test may still be exiting
    subprocess.run(["umount", "-l", where], capture_output=True, check=False, timeout=60)


@contextlib.contextmanager
def mounted(kind: str, size_kib: int) -> Iterator[str]:
    """Mount a fresh ``kind`` ("tmpfs" or "ext4") of ``size_kib`` KiB; yield its mount point."""
    need_root()
    base = tempfile.mkdtemp(prefix=f"tb-{kind}-")
    where = os.path.join(base, "mnt")
    os.mkdir(where)
    image = os.path.join(base, "image")
    try:
        if kind == "tmpfs":
            _run("mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", where)
        elif kind == "ext4":
            with open(image, "wb") as f:
                f.truncate(size_kib * 1024)
            _run("mkfs.ext4", "-q", "-F", "-m", "0", image)
            _run("mount", "-o", "loop", image, where)
        else:  # pragma: no cover - a typo in a test
            raise ValueError(kind)
        if not os.path.ismount(where):  # never fill anything but the test filesystem
            raise AssertionError(f"{where} is not a mount point")
        yield where
    finally:
        if os.path.ismount(where):
            _umount(where)
        shutil.rmtree(base, ignore_errors=True)


def remount(where: str, option: str) -> None:
    """``mount -o remount,OPTION`` (``ro`` or ``rw``)."""
    assert os.path.ismount(where)
    _run("mount", "-o", f"remount,{option}", where)


def fill(where: str, name: str, nbytes: int) -> str:
    """Take ``nbytes`` of the filesystem's space with a file of zeros; return its path."""
    assert os.path.ismount(where)
    path = os.path.join(where, name)
    with open(path, "wb") as f:
        chunk = bytes(1 << 16)
        left = nbytes
        while left > 0:
            left -= f.write(chunk[: min(left, len(chunk))])
        f.flush()
        os.fsync(f.fileno())
    return path
