"""A finer power-loss model: what survives a power cut is only what was made durable.

``DiskModel`` replays a traced run (fuzz/core.py: every step with the image
before and after it) as a small model filesystem of inodes and directory
entries, keeping two views:

- the *cache* view: what every process sees (the page cache);
- the *durable* view: what is on the disk. A file's bytes become durable at
  an ``fsync``/``fdatasync`` of it; a directory's entries (creations,
  renames, unlinks, mkdirs) at an ``fsync_dir`` of it.

At a crash, ``image(variant)`` builds what a reboot finds:

- directory entries whose directory was not fsynced afterwards are undone
  (``ns="undo"``: a created file disappears, a renamed file is back under
  its old name with its old inode and contents, an unlinked file is back),
  kept (``"keep"``), kept up to a random point of their order
  (``"prefix"``: as a journaling filesystem commits metadata in order, e.g.
  a file's creation reached the disk but its later unlink did not), or
  each pending operation decided at random (``"mix"``; a rename is one
  operation, kept or undone whole, as the model assumes renames atomic);
- unsynced appended bytes (the journal's tail) are dropped, zeroed, turned
  into garbage, or kept (``tail``);
- other bytes written since the file's last fsync (rows written through the
  mapping, whole files created, copied or truncated) are the old bytes (the
  pre-image from the last fsync; empty for a file never fsynced), zeros,
  garbage, or kept (``data``); ``"mix"`` decides each range at random.

The pre-images come from the trace: the child copies the whole world before
every step, so the contents of a file at its last fsync, of a rename's
target before the rename, and of a file before its unlink are all known.

Then ``check_power_image`` pretends a reboot (a new boot id, harness.fake_boot)
and checks, for both sync levels, G1 (the state is exactly one model
state) and G2: with ``sync="full"`` no acknowledged transaction is lost;
with ``"normal"`` nothing before the last ``flush()``/``close()`` is lost
(the traced child counts durable acknowledgements exactly as harness's
"D<acks>" lines do).
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field
from typing import Any

import core

WHOLE = "whole"
TAIL = "tail"
ROWS = "rows"

NS = ("undo", "keep", "prefix", "mix")
TAILS = ("drop", "zero", "garbage", "keep")
DATA = ("old", "zero", "garbage", "keep", "mix")


@dataclass(frozen=True)
class Variant:
    ns: str
    tail: str
    data: str

    def __str__(self) -> str:
        return f"ns={self.ns},tail={self.tail},data={self.data}"


# A small set that between them undo every kind of non-durable change in
# every way: the CI run uses these; longer runs use them all (ALL_VARIANTS).
CI_VARIANTS = (
    Variant("undo", "drop", "old"),
    Variant("keep", "keep", "garbage"),
    Variant("prefix", "garbage", "zero"),
    Variant("keep", "zero", "old"),
)
ALL_VARIANTS = tuple(
    Variant(n, t, d)
    for n, t, d in itertools.product(NS, TAILS, DATA)
    if (n, t, d) != ("keep", "keep", "keep")
)


@dataclass
class Inode:
    ino: int
    is_dir: bool
    cache: bytes = b""  # file contents as every process sees them
    durable: bytes | None = None  # contents at the last fsync (None: never fsynced)
    dirty: list[tuple[str, int, int]] = field(default_factory=list)  # changes since then
    entries: dict[str, int] = field(default_factory=dict)  # directory: name -> ino (cache)
    dentries: dict[str, int] = field(default_factory=dict)  # directory: name -> ino (durable)
    synced: int = 0  # directory: entry operations before this index of the log are durable


class ModelError(AssertionError):
    """The model's cache view disagrees with the traced world: a bug of the model."""


class DiskModel:
    """The two views of a world directory, advanced step by step through traces."""

    def __init__(self, start: core.Snap) -> None:
        """``start``: a world whose every file and entry is durable."""
        self.inodes: dict[int, Inode] = {}
        # Every change of a directory entry, in order: [(dir ino, name, ino or None), ...]
        # per operation (a rename is one operation: its two entries change together).
        self.log: list[list[tuple[int, str, int | None]]] = []
        self.root = self._new(is_dir=True)
        dirs, files = start
        for d in dirs:
            self._add(d, self._new(is_dir=True), durable=True)
        for rel, data in files.items():
            node = self._new(is_dir=False)
            node.cache = node.durable = data
            self._add(rel, node, durable=True)

    def _new(self, *, is_dir: bool) -> Inode:
        node = Inode(len(self.inodes), is_dir)
        self.inodes[node.ino] = node
        return node

    def _dir(self, rel: str) -> Inode:
        node = self.root
        if rel in ("", "."):
            return node
        for part in rel.split("/"):
            node = self.inodes[node.entries[part]]
        return node

    def _lookup(self, rel: str) -> Inode | None:
        parent, name = os.path.split(rel)
        try:
            d = self._dir(parent)
        except KeyError:
            return None
        ino = d.entries.get(name)
        return None if ino is None else self.inodes[ino]

    def _add(self, rel: str, node: Inode, *, durable: bool = False) -> None:
        parent, name = os.path.split(rel)
        d = self._dir(parent)
        d.entries[name] = node.ino
        if durable:
            d.dentries[name] = node.ino
        else:
            self.log.append([(d.ino, name, node.ino)])

    def _remove(self, rel: str) -> Inode | None:
        parent, name = os.path.split(rel)
        d = self._dir(parent)
        ino = d.entries.pop(name, None)
        if ino is not None:
            self.log.append([(d.ino, name, None)])
        return None if ino is None else self.inodes[ino]

    # -- replaying steps ----------------------------------------------------

    def apply(self, step: core.Step, after: core.Snap) -> None:
        """Advance by one traced step; ``after`` is the world once it was done."""
        kind, rel = step.step, step.path
        files = after[1]
        if rel.startswith("/"):  # outside the world (never happens for tensorblob's steps)
            return
        if kind == "create":
            node = self._new(is_dir=False)
            node.cache = files.get(rel, b"")
            node.dirty.append((WHOLE, 0, 0))
            self._add(rel, node)
        elif kind in ("write", "ftruncate", "copy"):
            node = self._lookup(rel)
            assert node is not None, (kind, rel)
            node.cache = files[rel]
            node.dirty.append((WHOLE, 0, 0))
        elif kind == "append":
            node = self._lookup(rel)
            assert node is not None, (kind, rel)
            old = len(node.cache)
            node.cache = files[rel]
            node.dirty.append((TAIL, old, len(node.cache) - old))
        elif kind in ("write_rows", "punch", "overwrite"):
            node = self._lookup(rel)
            assert node is not None, (kind, rel)
            node.cache = files[rel]
            off, n = step.info
            node.dirty.append((ROWS, off, n))
        elif kind in ("fsync", "fdatasync"):
            node = self._lookup(rel)
            assert node is not None, (kind, rel)
            node.durable = node.cache
            node.dirty.clear()
        elif kind == "fsync_dir":
            d = self._dir(rel)
            d.dentries = dict(d.entries)
            d.synced = len(self.log)
        elif kind == "rename":
            start = len(self.log)
            node = self._remove(step.info)
            assert node is not None, (kind, step.info, rel)
            self._remove(rel)
            self._add(rel, node)
            self.log[start:] = [[e for op in self.log[start:] for e in op]]  # one atomic op
        elif kind in ("unlink", "rmdir"):
            self._remove(rel)
        elif kind == "mkdir":
            self._add(rel, self._new(is_dir=True))
        elif kind == "reserve":
            pass  # disk space only: no byte of content changes (_durable.reserve_tail)
        else:
            raise ModelError(f"unknown step {kind!r}")

    def cache_view(self) -> core.Snap:
        dirs: list[str] = []
        files: dict[str, bytes] = {}

        def walk(d: Inode, prefix: str) -> None:
            for name, ino in d.entries.items():
                node = self.inodes[ino]
                rel = os.path.join(prefix, name) if prefix else name
                if node.is_dir:
                    dirs.append(rel)
                    walk(node, rel)
                else:
                    files[rel] = node.cache

        walk(self.root, "")
        return tuple(sorted(dirs)), files

    def replay(self, tr: core.Trace, upto: int, *, check: bool = False) -> None:
        """Apply steps 1..upto-1 of ``tr`` (the crash is before step ``upto``)."""
        for i in range(1, upto):
            after, _, _ = tr.at(i + 1)
            self.apply(tr.steps[i - 1], after)
            if check and self.cache_view() != after:
                raise ModelError(f"model and trace disagree after step {tr.label(i)}")

    # -- the image after a power cut -------------------------------------------

    def _pending_views(self, rng: random.Random, *, mix: bool) -> dict[int, dict[str, int]]:
        """Directory entries as if the pending operations reached the disk up to a random
        point (``prefix``), or a random subset of them (``mix``), each one whole."""
        pending = [
            i
            for i, op in enumerate(self.log)
            if any(i >= self.inodes[dino].synced for dino, _, _ in op)
        ]
        views: dict[int, dict[str, int]] = {}
        if not pending:
            return views
        k = rng.randint(pending[0], len(self.log))
        for i in pending:
            if mix:
                if rng.random() < 0.5:
                    continue
            elif i >= k:
                break
            for dino, name, ino in self.log[i]:
                if i < self.inodes[dino].synced:
                    continue
                view = views.setdefault(dino, dict(self.inodes[dino].dentries))
                if ino is None:
                    view.pop(name, None)
                else:
                    view[name] = ino
        return views

    def image(self, v: Variant, rng: random.Random) -> core.Snap:
        dirs: list[str] = []
        files: dict[str, bytes] = {}
        views = self._pending_views(rng, mix=v.ns == "mix") if v.ns in ("prefix", "mix") else {}

        def binding(d: Inode, name: str) -> int | None:
            cached, durable = d.entries.get(name), d.dentries.get(name)
            if v.ns == "keep":
                return cached
            if v.ns in ("prefix", "mix"):
                return views.get(d.ino, d.dentries).get(name)
            return durable  # "undo"

        def walk(d: Inode, prefix: str) -> None:
            names = set(d.entries) | set(d.dentries) | set(views.get(d.ino, ()))
            for name in sorted(names):
                ino = binding(d, name)
                if ino is None:
                    continue
                node = self.inodes[ino]
                rel = os.path.join(prefix, name) if prefix else name
                if node.is_dir:
                    dirs.append(rel)
                    walk(node, rel)
                else:
                    files[rel] = self._contents(node, v, rng)

        walk(self.root, "")
        return tuple(sorted(dirs)), files

    @staticmethod
    def _contents(node: Inode, v: Variant, rng: random.Random) -> bytes:
        if not node.dirty:
            return node.cache
        old = node.durable if node.durable is not None else b""
        cache = node.cache

        def junk(n: int) -> bytes:
            return rng.randbytes(n)

        def pick(mode: str) -> str:
            return rng.choice(("old", "zero", "garbage", "keep")) if mode == "mix" else mode

        if any(k == WHOLE for k, _, _ in node.dirty):
            mode = pick(v.data)
            if mode == "old":
                return old
            if mode == "zero":
                return bytes(len(cache))
            if mode == "garbage":
                return junk(len(cache))
            return cache
        buf = bytearray(cache)
        tails = [(o, n) for k, o, n in node.dirty if k == TAIL]
        if tails:
            start = len(old)
            mode = v.tail
            if mode == "drop":
                buf = buf[:start]
            elif mode == "zero":
                buf[start:] = bytes(len(buf) - start)
            elif mode == "garbage":
                buf[start:] = junk(len(buf) - start)
        for kind, off, length in node.dirty:
            if kind != ROWS or off >= len(buf):
                continue
            n = min(length, len(buf) - off)
            mode = pick(v.data)
            if mode == "old":
                piece = old[off : off + n]
                buf[off : off + n] = piece + bytes(n - len(piece))
            elif mode == "zero":
                buf[off : off + n] = bytes(n)
            elif mode == "garbage":
                buf[off : off + n] = junk(n)
        return bytes(buf)


def check_power_image(  # noqa: PLR0917
    img: core.Snap,
    world: str,
    states: list[Any],
    lo: int,
    hi: int,
    boot: str,
    *,
    exercise: bool = True,
) -> core.Verdict:
    """Materialize a power-cut image and examine it as after a reboot."""
    core.materialize(img, world)
    return core.examine(world, states, lo, hi, boot=boot, exercise=exercise)


REBOOT = "fuzz-boot-after-power-cut"


def _variants_for(variants: tuple[Variant, ...] | None) -> tuple[Variant, ...]:
    return CI_VARIANTS if variants is None else variants


def _examine_images(  # noqa: PLR0917 - one call site, all of it context
    model: DiskModel,
    name: str,
    label: str,
    states: list[Any],
    lo: int,
    hi: int,
    variants: tuple[Variant, ...],
    rng: random.Random,
    cw: str,
    seen: set[bytes],
    tally: core.Tally,
    part: str,
    ops: list[list[Any]],
    exercise: bool,
) -> None:
    for v in variants:
        img = model.image(v, rng)
        tally.count(part)
        key = core.image_key(img, lo, hi)
        if key in seen:
            continue
        seen.add(key)
        tally.images += 1
        verdict = check_power_image(img, cw, states, lo, hi, REBOOT, exercise=exercise)
        for g, detail in verdict.violations:
            tally.violations.append(
                core.Violation(g, part, name, label, detail, variant=str(v), ops=ops)
            )


def explore_power(
    name: str,
    ops: list[list[Any]],
    scratch: str,
    deadline: core.Deadline,
    *,
    variants: tuple[Variant, ...] | None = None,
    seed: int = 0,
    exercise: bool = True,
    self_check: bool = True,
) -> core.Tally:
    """A power cut before every step of a workload, each under every variant."""
    import campaign  # noqa: PLC0415 - campaign imports this module

    part = "power/workload"
    tally = core.Tally()
    base = campaign.run_base(name, ops, scratch, tally, part)
    if base is None:
        return tally
    ops, states, tr = base
    cw = core.fast(scratch, "check")
    model = DiskModel(((), {}))
    seen: set[bytes] = set()
    rng = random.Random(seed)
    total = len(tr.steps) + 1
    for n in range(1, total + 1):
        if deadline.passed():
            tally.incomplete.append(f"{part} {name}: {n - 1}/{total} crash points")
            break
        if n > 1:
            after, _, _ = tr.at(n)
            model.apply(tr.steps[n - 2], after)
            if self_check and model.cache_view() != after:
                raise ModelError(f"{name}: model and trace disagree after {tr.label(n - 1)}")
        _snap, acks, durable = tr.at(n)
        _examine_images(
            model,
            name,
            f"power cut at {tr.label(n)}",
            states,
            durable,
            acks + 1,
            _variants_for(variants),
            rng,
            cw,
            seen,
            tally,
            part,
            ops,
            exercise,
        )
    return tally


def explore_power_recovery(
    name: str,
    ops: list[list[Any]],
    scratch: str,
    deadline: core.Deadline,
    *,
    points: int | None = 2,
    variants: tuple[Variant, ...] | None = None,
    seed: int = 0,
    exercise: bool = True,
) -> core.Tally:
    """A writer dies (same boot), a writable open recovers, and the power fails during it.

    The disk model spans both processes: rows the dead writer left in the
    page cache are durable only once recovery fsyncs them.
    """
    import campaign  # noqa: PLC0415

    part = "power/recovery"
    tally = core.Tally()
    base = campaign.run_base(name, ops, scratch, tally, part)
    if base is None:
        return tally
    ops, states, tr = base
    rng = random.Random(seed)
    cw = core.fast(scratch, "check")
    for n in campaign._unclean_points(tr, scratch, points, rng):
        if deadline.passed():
            tally.incomplete.append(f"{part} {name}")
            break
        start, acks, durable = tr.at(n)
        world = os.path.join(scratch, "rec")
        core.materialize(start, world)
        rec = core.trace(world, campaign.RECOVERY_OPS)
        if rec.exitcode != 0:
            continue  # reported by the recovery-interrupt part
        model = DiskModel(((), {}))
        model.replay(tr, n)
        seen: set[bytes] = set()
        for r in range(1, len(rec.steps) + 2):
            if r > 1:
                after, _, _ = rec.at(r)
                model.apply(rec.steps[r - 2], after)
            label = f"writer killed at {tr.label(n)}, power cut in recovery at {rec.label(r)}"
            _examine_images(
                model,
                name,
                label,
                states,
                durable,
                acks + 1,
                _variants_for(variants),
                rng,
                cw,
                seen,
                tally,
                part,
                ops,
                exercise,
            )
    return tally
