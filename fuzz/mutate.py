"""Mutation check of the durability code: remove one durability step, the campaign must notice.

Each mutation removes one fsync / fdatasync / directory fsync call site of
the commit, durable point, checkpoint, recovery and creation protocols, or
breaks one ordering step (for example: the commit frame written before the
blocks are synced under ``sync="full"``, freed blocks deleted before the
durable point). It is applied to a temporary copy of the ``tensorblob``
package (the real files are never touched), which is put first on
``PYTHONPATH`` of a ``scripts/fuzz --profile ci --stop-on-first`` run: every
process of that run (the traced writers, the recovering and checking
processes, the soak) uses the mutant engine. The run must find a violation;
the table records the first check that did.

Mutations are written as edits inside one function (found with ``ast``), so
they survive unrelated changes of the engine; an edit whose text is no
longer found is reported as "not applicable", never silently skipped.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import core

PKG = os.path.join(core.ROOT, "tensorblob")
FUZZ = os.path.join(core.ROOT, "scripts", "fuzz")


@dataclass(frozen=True)
class Edit:
    file: str  # inside tensorblob/
    func: str  # the function (or method) whose body is edited
    old: str  # text to find in it (exactly once)
    new: str  # replacement; "" removes the statement (replaced by ``pass``)


@dataclass(frozen=True)
class Mutation:
    name: str
    protocol: str
    what: str
    edits: tuple[Edit, ...]


# Checks of engine bugs still open, left out of mutation runs so that they do not
# "catch" every mutant (an empty dict once they are fixed).
KNOWN_OPEN: dict[str, str] = {}  # no known open violation


def _drop(file: str, func: str, stmt: str) -> Edit:
    return Edit(file, func, stmt, "")


MUTATIONS: tuple[Mutation, ...] = (
    # -- the commit (Engine.commit / _committed), sync="full" --------------------
    Mutation(
        "commit-full-no-block-fsync",
        "commit (full)",
        "step 1 removed: the written blocks are not fsynced before the commit record",
        (_drop("_txn.py", "commit", "self.blocks.sync(synced, new_files=bool(kept_private))"),),
    ),
    Mutation(
        "commit-full-no-blocks-dir-fsync",
        "commit (full)",
        "step 1: blocks/ is not fsynced after the transaction created block files",
        (Edit("_txn.py", "commit", "new_files=bool(kept_private))", "new_files=False)"),),
    ),
    Mutation(
        "commit-full-no-journal-fdatasync",
        "commit (full)",
        "step 3 removed: the journal is not fdatasynced after the commit record",
        (_drop("_txn.py", "commit", "self.journal.sync()"),),
    ),
    Mutation(
        "commit-full-frame-before-blocks",
        "commit (full)",
        "order: the commit record is appended before the blocks are fsynced "
        "(they are fsynced after it, before the journal's fdatasync)",
        (
            _drop("_txn.py", "commit", "self.blocks.sync(synced, new_files=bool(kept_private))"),
            Edit(
                "_txn.py",
                "commit",
                "self.journal.sync()",
                "self.blocks.sync(written, new_files=True)\n                self.journal.sync()",
            ),
        ),
    ),
    Mutation(
        "open-marker-no-fdatasync",
        "commit (session start)",
        "the open marker is not fdatasynced before the session's first block file",
        (_drop("_txn.py", "_before_new_file", "self.journal.sync()"),),
    ),
    Mutation(
        "reap-at-once-under-normal",
        "commit (normal)",
        "order: freed blocks are deleted right after a sync='normal' commit, "
        "before the durable point that makes their freeing durable",
        (Edit("_txn.py", "_committed", "if self.full and st.free:", "if st.free:"),),
    ),
    # -- the durable point (flush / close) ---------------------------------------
    Mutation(
        "durable-point-no-block-fsync",
        "durable point",
        "the blocks written since the last durable point are not fsynced",
        (
            Edit(
                "_durability.py",
                "durable_point",
                "sync_and_sum(st, self.blocks, dirty, new_files=new_files, sums=dirty)",
                "sync_and_sum(st, self.blocks, set(), new_files=new_files, sums=dirty)",
            ),
        ),
    ),
    Mutation(
        "durable-point-no-blocks-dir-fsync",
        "durable point",
        "blocks/ is not fsynced (new block files, deletions)",
        (
            Edit(
                "_durability.py",
                "durable_point",
                "new_files = m.new_files or m.deleted",
                "new_files = False",
            ),
        ),
    ),
    Mutation(
        "durable-point-no-journal-fdatasync",
        "durable point",
        "the journal is not fdatasynced after the sync record",
        (_drop("_durability.py", "durable_point", "self.journal.sync()"),),
    ),
    Mutation(
        "durable-point-reap-first",
        "durable point",
        "order: freed blocks are deleted before the sync record is made durable",
        (
            Edit(
                "_durability.py",
                "durable_point",
                "m.made_durable(closing, st.length)\n"
                "        _recovery.reap(st, self.blocks, self.probe)",
                "m.made_durable(closing, st.length)",
            ),
            Edit(
                "_durability.py",
                "durable_point",
                "            self.journal.append(record)\n",
                "            _recovery.reap(st, self.blocks, self.probe)\n"
                "            self.journal.append(record)\n",
            ),
        ),
    ),
    # -- the checkpoint ---------------------------------------------------------------
    Mutation(
        "checkpoint-no-block-fsync",
        "checkpoint",
        "the blocks are not fsynced before the new manifest",
        (
            Edit(
                "_durability.py",
                "_checkpoint",
                "st, self.blocks, m.dirty, new_files=new_files, sums=st.blocks",
                "st, self.blocks, set(), new_files=new_files, sums=st.blocks",
            ),
        ),
    ),
    Mutation(
        "checkpoint-no-blocks-dir-fsync",
        "checkpoint",
        "blocks/ is not fsynced before the new manifest",
        (
            Edit(
                "_durability.py",
                "_checkpoint",
                "new_files = m.new_files or m.deleted",
                "new_files = False",
            ),
        ),
    ),
    Mutation(
        "checkpoint-journal-before-manifest",
        "checkpoint",
        "order: the new journal is installed before the new manifest",
        (
            _drop(
                "_recovery.py",
                "install_checkpoint",
                "_durable.install(os.path.join(root, MANIFEST))",
            ),
            Edit(
                "_recovery.py",
                "install_checkpoint",
                "_durable.install(os.path.join(root, JOURNAL))",
                "_durable.install(os.path.join(root, JOURNAL))\n    "
                "_durable.install(os.path.join(root, MANIFEST))",
            ),
        ),
    ),
    # -- the rotation (Engine._rotate, docs/design.md item 4) ---------------------------
    Mutation(
        "rotate-after-durable-point",
        "rotation",
        "a durable point does not stop rotations: the carried record then covers "
        "durable commits, which a power cut drops",
        (_drop("_durability.py", "made_durable", "self.rotatable = False"),),
    ),
    Mutation(
        "rotate-after-overwrite",
        "rotation",
        "a commit that is not an append does not stop rotations: the carried append "
        "record then misstates the session",
        (
            Edit(
                "_durability.py",
                "committed",
                "if not append:\n            self.rotatable = False",
                "pass",
            ),
        ),
    ),
    Mutation(
        "rotate-without-carried-record",
        "rotation",
        "the rotated journal does not carry the session's rows",
        (
            Edit(
                "_journal.py",
                "stage_rotation",
                "data += _format.encode_frame(salt, {**_records.append_record(length, "
                'carried=True), "q": 2})',
                "",
            ),
        ),
    ),
    Mutation(
        "write-atomic-no-file-fsync",
        "checkpoint (stage, install)",
        "the temporary file is not fsynced before the rename",
        (
            Edit(
                "_durable.py",
                "stage",
                "create_file(tmp, data, sync=True)",
                "create_file(tmp, data, sync=False)",
            ),
        ),
    ),
    Mutation(
        "write-atomic-no-dir-fsync",
        "checkpoint (stage, install)",
        "the directory is not fsynced after the rename",
        (_drop("_durable.py", "install", "fsync_dir(os.path.dirname(path))"),),
    ),
    Mutation(
        "write-atomic-rename-before-fsync",
        "checkpoint (stage, install)",
        "order: the file is fsynced only after it was renamed into place",
        (
            Edit(
                "_durable.py",
                "stage",
                "create_file(tmp, data, sync=True)",
                "create_file(tmp, data, sync=False)",
            ),
            Edit(
                "_durable.py",
                "install",
                'rename(path + ".tmp", path)',
                'rename(path + ".tmp", path)\n    fsync_paths([path])',
            ),
        ),
    ),
    Mutation(
        "reap-no-dir-fsync",
        "deletion of freed blocks",
        "blocks/ is not fsynced after freed blocks are deleted",
        (_drop("_recovery.py", "_reap_guarded", "_durable.fsync_dir(blocks.dir)"),),
    ),
    # -- recovery ---------------------------------------------------------------------
    Mutation(
        "recover-no-block-fsync",
        "recovery",
        "step 1 removed: rows of replayed sync='normal' commits are not fsynced "
        "before the checkpoint",
        (_drop("_recovery.py", "recover", "blocks.sync(loaded.dirty, new_files=True)"),),
    ),
    Mutation(
        "replay-not-dirty",
        "recovery",
        "replay forgets the blocks written by the records after the last durable marker "
        "(commit records and runs of append records alike), so recovery does not fsync "
        "them before its checkpoint",
        (
            Edit(
                "_snapshot.py",
                "_replay",
                "loaded.kept += j - i\n            if i > last_durable:\n"
                "                loaded.dirty.update(written)\n",
                "loaded.kept += j - i\n",
            ),
        ),
    ),
    Mutation(
        "recover-no-blocks-dir-fsync",
        "recovery",
        "step 1: blocks/ is not fsynced for the replayed commits' new block files",
        (
            Edit(
                "_recovery.py",
                "recover",
                "blocks.sync(loaded.dirty, new_files=True)",
                "blocks.sync(loaded.dirty, new_files=False)",
            ),
        ),
    ),
    Mutation(
        "recover-block-fsync-after-checkpoint",
        "recovery",
        "order: the replayed commits' blocks are fsynced after the checkpoint",
        (
            _drop("_recovery.py", "recover", "blocks.sync(loaded.dirty, new_files=True)"),
            Edit(
                "_recovery.py",
                "recover",
                "    checkpoint(root, state, meta.block_size, blocks)\n",
                "    checkpoint(root, state, meta.block_size, blocks)\n"
                "    blocks.sync(loaded.dirty, new_files=True)\n",
            ),
        ),
    ),
    Mutation(
        "recover-no-orphan-dir-fsync",
        "recovery",
        "step 3: blocks/ is not fsynced after the orphans are deleted",
        (_drop("_recovery.py", "recover", "_durable.fsync_dir(blocks.dir)"),),
    ),
    # -- the block store ------------------------------------------------------------
    Mutation(
        "blocks-sync-no-file-fsync",
        "all (BlockStore.sync)",
        "BlockStore.sync fsyncs no block file (only the directory)",
        (
            _drop(
                "_blockfiles.py",
                "sync",
                "_durable.fsync_paths([p for p in paths if os.path.exists(p)])",
            ),
        ),
    ),
    Mutation(
        "blocks-sync-no-dir-fsync",
        "all (BlockStore.sync)",
        "BlockStore.sync never fsyncs blocks/",
        (_drop("_blockfiles.py", "sync", "_durable.fsync_dir(self.dir)"),),
    ),
    # -- creation ---------------------------------------------------------------------
    Mutation(
        "create-meta-no-fsync",
        "creation",
        "meta is not fsynced",
        (Edit("_dirs.py", "build", "meta.encode(), sync=True)", "meta.encode(), sync=False)"),),
    ),
    Mutation(
        "create-manifest-no-fsync",
        "creation",
        "the first manifest is not fsynced",
        (
            Edit(
                "_dirs.py",
                "build",
                "encode_manifest(state, meta.block_size), sync=True",
                "encode_manifest(state, meta.block_size), sync=False",
            ),
        ),
    ),
    Mutation(
        "create-journal-no-fsync",
        "creation",
        "the first journal is not fsynced",
        (Edit("_dirs.py", "build", "journal, sync=True)", "journal, sync=False)"),),
    ),
    Mutation(
        "create-no-tmpdir-fsync",
        "creation",
        "the hidden directory is not fsynced before it is renamed into place",
        (_drop("_dirs.py", "build", "_durable.fsync_dir(tmp)"),),
    ),
    Mutation(
        "create-no-parent-fsync",
        "creation",
        "the parent directory is not fsynced after the rename (creation not durable)",
        (_drop("_dirs.py", "create", "_durable.fsync_dir(os.path.dirname(path))"),),
    ),
    # -- rows logged in the journal (sync="full", docs/design.md item 21) -----------
    Mutation(
        "logged-blocks-not-synced",
        "commit (full)",
        "step 1: a general commit fsyncs only its own blocks, not those holding rows "
        "logged earlier, yet its record says every row is in the block files",
        (
            Edit(
                "_txn.py",
                "commit",
                "synced = sorted(self.marks.dirty.union(written))",
                "synced = sorted(written)",
            ),
        ),
    ),
    Mutation(
        "logged-no-journal-sync",
        "commit (full)",
        "the fast append under full does not fdatasync the journal (no commit point)",
        (_drop("_fast.py", "put_commit", "j.sync()"),),
    ),
    Mutation(
        "logged-not-rewritten",
        "recovery",
        "recovery does not write the logged rows back into their blocks",
        (_drop("_recovery.py", "recover", "_durable.overwrite(fd, data, off, path)"),),
    ),
    Mutation(
        "logged-not-laid-over",
        "snapshot",
        "a reader after a reboot reads logged rows from the block file, not the journal",
        (
            Edit(
                "_blocks.py",
                "_entry",
                "if bid in self.logged and not self.writable:",
                "if False:",
            ),
        ),
    ),
    # -- collector sessions (docs/design.md items 22-23) ------------------------------
    Mutation(
        "ahead-over-rows",
        "durable point",
        "the zeros taken ahead at a durable point start one row below the high-water "
        "mark, over a committed row, allocated or not",
        (
            Edit(
                "_window.py",
                "_allocate_ahead",
                "if hole >= min(at + ahead // 2, end):  # room for the next rows already\n"
                "                    continue\n"
                "                start = max(hole, at)",
                "start = at - rb",
            ),
        ),
    ),
    Mutation(
        "fast-first-write-no-marker",
        "commit",
        "a session's first commit on the fast path writes no open marker: its records "
        "take no boot id of their own session",
        (_drop("_fast.py", "put_commit", "self._mark_open()"),),
    ),
    # -- unlink (TensorBlob.unlink) -------------------------------------------------
    Mutation(
        "unlink-no-parent-fsync",
        "unlink",
        "the parent directory is not fsynced after the rename (unlink not durable)",
        (
            Edit(
                "_dirs.py",
                "_unlink",
                "# the commit point: the blob is gone\n        _durable.fsync_dir(parent)",
                "# the commit point: the blob is gone",
            ),
        ),
    ),
    Mutation(
        "unlink-remove-in-place",
        "unlink",
        "order: the files are removed under the blob's own name, before the rename",
        (
            Edit(
                "_dirs.py",
                "_unlink",
                "_durable.rename(root, tomb)  # the commit point: the blob is gone",
                "remove_tree(root)\n        _durable.mkdir(tomb)",
            ),
        ),
    ),
)


class NotApplicable(Exception):
    pass


def _func_span(src: str, func: str) -> tuple[int, int]:
    """Character offsets of the (first) function or method named ``func``."""
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func:
            return starts[node.lineno - 1], starts[node.end_lineno]
    raise NotApplicable(f"no function {func}")


def apply(m: Mutation, dest: str) -> None:
    """Write a mutant copy of the package to ``dest/tensorblob``."""
    pkg = os.path.join(dest, "tensorblob")
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for e in m.edits:
        path = os.path.join(pkg, e.file)
        with open(path) as f:
            src = f.read()
        a, b = _func_span(src, e.func)
        body = src[a:b]
        if body.count(e.old) != 1:
            raise NotApplicable(f"{e.file}:{e.func}: {e.old!r} found {body.count(e.old)} times")
        if e.new == "":
            i = body.index(e.old)
            line_start = body.rindex("\n", 0, i) + 1
            indent = body[line_start:i]
            if indent.strip():
                raise NotApplicable(f"{e.old!r} is not a whole statement")
            body = (
                body[:i]
                + "pass  # MUTATION: removed "
                + e.old.replace("\n", " ")
                + body[i + len(e.old) :]
            )
        else:
            body = body.replace(e.old, e.new)
        src = src[:a] + body + src[b:]
        ast.parse(src)
        with open(path, "w") as f:
            f.write(src)


@dataclass
class Outcome:
    mutation: Mutation
    caught: bool | None  # None: not applicable
    by: str  # the check that caught it (or why not applicable)
    detail: str
    seconds: float


def check_mutant(m: Mutation, budget: float, seed: int) -> Outcome:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-mutant-") as dest:
        try:
            apply(m, dest)
        except NotApplicable as exc:
            return Outcome(m, None, "not applicable", str(exc), 0.0)
        out = os.path.join(dest, "result.json")
        env = dict(os.environ, PYTHONPATH=dest + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env["FUZZ_EXPECT_ENGINE"] = os.path.join(dest, "tensorblob")
        env.update(KNOWN_OPEN)
        cmd = [sys.executable, FUZZ, "--profile", "ci", "--budget", str(budget)]
        cmd += ["--seed", str(seed), "--stop-on-first", "--no-soak", "--quiet", "--json", out]
        proc = subprocess.run(
            cmd,
            env=env,
            cwd=dest,
            capture_output=True,
            text=True,
            timeout=budget + 300,
            check=False,
        )
        secs = time.monotonic() - t0
        if not os.path.exists(out):
            return Outcome(m, True, "the campaign crashed", proc.stderr[-500:], secs)
        with open(out) as f:
            res = json.load(f)
        if not res["engine"].startswith(dest):
            raise RuntimeError(f"the mutant was not the engine under test: {res['engine']}")
        errors = [v for v in res["violations"] if v["guarantee"] == "ERR"]
        if errors:  # a failure of the campaign itself proves nothing about the mutant
            return Outcome(m, False, "campaign error", errors[0]["detail"][:300], secs)
        real = res["violations"]
        if not real:
            return Outcome(m, False, "not caught", f"{res['crash_points']} crash states", secs)
        v = real[0]
        by = f"{v['check']} [{v['guarantee']}], workload {v['workload']}"
        where = f"{v['step']}" + (f" ({v['variant']})" if v.get("variant") else "")
        return Outcome(m, True, by, f"{where}: {v['detail'][:300]}", secs)


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| mutation | protocol | what is removed or reordered | how applied "
        "| caught by (first violation) |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        m = o.mutation
        how = (
            "; ".join(
                f"`{e.file}:{e.func}`: "
                + (f"`{e.old}` removed" if e.new == "" else f"`{e.old}` → `{e.new}`")
                for e in m.edits
            )
            .replace("\n", " ")
            .replace("|", "\\|")
        )
        verdict = {None: "n/a: ", False: "**NOT CAUGHT**: ", True: ""}[o.caught] + o.by
        if o.caught:  # where: the crash point (and power-loss variant), without the details
            verdict += ", at " + o.detail.split(": ")[0].replace("|", "\\|")
        rows.append(f"| `{m.name}` | {m.protocol} | {m.what} | {how} | {verdict} |")
    return "\n".join(rows)


def run(
    budget: float,
    seed: int,
    progress: Callable[[str], None] | None = None,
    only: list[str] | None = None,
    per_mutant: float = 150.0,
) -> core.Tally:
    """Check every mutation within ``budget`` seconds; a surviving mutant is a violation."""
    start = time.monotonic()
    tally = core.Tally()
    outcomes: list[Outcome] = []
    todo = [m for m in MUTATIONS if not only or m.name in only]
    for i, m in enumerate(todo):
        left = budget - (time.monotonic() - start)
        if left < 20:
            tally.incomplete.append(f"mutations not checked: {', '.join(x.name for x in todo[i:])}")
            break
        o = check_mutant(m, min(per_mutant, left - 10), seed)
        outcomes.append(o)
        tally.count("mutate")
        if progress:
            progress(
                f"{m.name}: {'caught by ' if o.caught else ''}{o.by} "
                f"({o.seconds:.0f} s) {o.detail[:160]}"
            )
        if o.caught is False:
            tally.violations.append(
                core.Violation(
                    "MUT", "mutate", m.name, "-", f"mutation not caught: {m.what}", seed=seed
                )
            )
    tally.notes.append("mutation table:\n" + table(outcomes))
    path = os.path.join(tempfile.gettempdir(), "tensorblob-mutation-table.md")
    with open(path, "w") as f:
        f.write(table(outcomes) + "\n")
    tally.notes.append(f"table written to {path}")
    for o in outcomes:
        tally.notes.append(f"{o.mutation.name}: {o.by}: {o.detail}")
    return tally


if __name__ == "__main__":  # pragma: no cover
    names = sys.argv[2:] or None
    t = run(float(sys.argv[1]) if len(sys.argv) > 1 else 3600, 0, progress=print, only=names)
    print(t.summary())
