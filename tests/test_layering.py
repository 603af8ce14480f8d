"""The package's shape: the map in docs/design.md matches the code, imports go down only,
the metadata path needs no torch, and every module stays small (issues 15, 20).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch

from tensorblob import TensorBlob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "tensorblob")
THIRD_PARTY = {"torch", "numpy", "tensordict", "msgpack", "filelock", "tqdm", "safetensors"}
# Imported by one module each; torch and numpy are the row type (docs/design.md).
ONE_MODULE = {"msgpack", "filelock", "tensordict", "tqdm", "safetensors"}


def _the_map() -> list[tuple[list[str], set[str]]]:
    """The rows of docs/design.md's package map: (modules, what they may import)."""
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        text = f.read()
    section = text.split("## The package map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        modules = re.findall(r"`([\w.]+)`", cells[0])
        allowed = set(re.findall(r"`([\w.]+)`", cells[2]))
        rows.append((modules, allowed))
    return rows


def _imports(name: str) -> tuple[set[str], set[str]]:
    """The package modules and third-party packages ``tensorblob/<name>.py`` imports,
    anywhere in the file (lazy and type-checking imports included)."""
    with open(os.path.join(PKG, f"{name}.py")) as f:
        tree = ast.parse(f.read())
    own, third = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                own.add(node.module.split(".")[0])
            else:
                own.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            third.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            third.update(a.name.split(".")[0] for a in node.names)
    return own, third & THIRD_PARTY


def test_the_map_lists_every_module_once() -> None:
    listed = [m for modules, _ in _the_map() for m in modules]
    present = sorted(n[:-3] for n in os.listdir(PKG) if n.endswith(".py"))
    assert sorted(listed) == present


def test_every_module_imports_only_what_the_map_allows_and_only_downwards() -> None:
    rows = _the_map()
    row_of = {m: i for i, (modules, _) in enumerate(rows) for m in modules}
    wrong = []
    for i, (modules, allowed) in enumerate(rows):
        for m in modules:
            own, third = _imports(m)
            for dep in sorted((own | third) - allowed):
                wrong.append(f"{m} imports {dep}, which the map does not allow")
            for dep in sorted(own):
                if dep in row_of and row_of[dep] <= i and dep not in modules:
                    wrong.append(f"{m} imports {dep}, which is not below it")
    assert not wrong, "\n".join(wrong)


def test_each_infrastructure_package_is_imported_by_one_module() -> None:
    users: dict[str, list[str]] = {p: [] for p in ONE_MODULE}
    for name in sorted(n[:-3] for n in os.listdir(PKG) if n.endswith(".py")):
        for package in _imports(name)[1] & ONE_MODULE:
            users[package].append(name)
    assert all(len(v) == 1 for v in users.values()), users


def _code_lines(path: str) -> tuple[int, int]:
    """Lines of the file, and lines that are not docstrings."""
    with open(path) as f:
        src = f.read()
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                end = body[0].end_lineno or body[0].lineno
                docs.update(range(body[0].lineno, end + 1))
    total = src.count("\n")
    return total, total - len(docs)


def test_every_module_stays_small() -> None:
    """At most about 400 lines; the public class's modules may be longer by their docstrings."""
    big = []
    for name in sorted(os.listdir(PKG)):
        if name.endswith(".py"):
            total, code = _code_lines(os.path.join(PKG, name))
            public = name in ("_blob.py", "_handle.py")
            if (code if public else total) > 440:
                big.append(f"{name}: {total} lines, {code} without docstrings")
    assert not big, big


def test_no_code_branches_on_the_text_of_an_error() -> None:
    pattern = re.compile(
        r"in str\((exc|e|err)\)|str\((exc|e|err)\)\.(startswith|endswith)"
        r'|"[^"]+" in (detail|msg|message|str\(exc\))'
    )
    found = []
    for name in sorted(os.listdir(PKG)):
        if name.endswith(".py"):
            with open(os.path.join(PKG, name)) as f:
                for n, line in enumerate(f, 1):
                    if pattern.search(line):
                        found.append(f"{name}:{n}: {line.strip()}")
    assert not found, found


def _run(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints a dict literal, which is returned."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    )
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("light") / "blob")
    with TensorBlob.open(path, "w", dtype="float32", shape=(3,)) as b:
        b.write(torch.ones(5, 3))
    b = TensorBlob.open(path, "a")  # a writer left open, then abandoned: unclean
    b.write(torch.ones(2, 3))
    b._abandon()
    return path


def test_the_metadata_commands_import_neither_torch_nor_tensordict(blob: str) -> None:
    got = _run(
        f"""
        import contextlib, io, sys
        import tensorblob
        from tensorblob import _cli
        codes = []
        with contextlib.redirect_stdout(io.StringIO()):
            for argv in (["info", {blob!r}], ["check", {blob!r}],
                         ["recover", "--dry-run", {blob!r}], ["--help"]):
                codes.append(_cli.main(argv))
        print(dict(codes=codes, heavy=sorted(
            m for m in ("torch", "tensordict", "numpy") if m in sys.modules)))
        """
    )
    assert got == {"codes": [0, 1, 0, 0], "heavy": []}


def test_opening_a_blob_and_its_length_do_not_import_tensordict(blob: str) -> None:
    got = _run(
        f"""
        import sys
        from tensorblob import TensorBlob
        with TensorBlob.open({blob!r}, "r") as b:
            n = len(b)
            before = "tensordict" in sys.modules
            b[0]  # the first mapping of a block
        print(dict(n=n, before=before, after="tensordict" in sys.modules))
        """
    )
    assert got == {"n": 7, "before": False, "after": True}
