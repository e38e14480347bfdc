"""The walls are rules: import-linter contracts in pyproject.toml (the engine never imports Qt, the
request module never imports torch, the package's floors), no import circles, and the code is
lint-, format- and type-clean (ruff, pyright basic)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name):
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return found


def test_engine_does_not_import_qt():
    out = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "The engine never imports Qt KEPT" in out.stdout
    assert "The requests that cross the worker pipe are torch-free KEPT" in out.stdout
    assert "The store's own floors KEPT" in out.stdout
    assert ", 0 broken" in out.stdout


def _lint_copy(tmp_path, module: str, line: str):
    """lint-imports on a copy of the package with ``line`` added to ``module`` (never in the package)."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "negalora", copy / "negalora", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / (module.replace(".", "/") + ".py")
    target.write_text(target.read_text() + f"\n{line}  # deliberate\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}  # ahead of the editable install's finder
    return subprocess.run([_tool("lint-imports")], cwd=copy, capture_output=True, text=True, env=env)


def test_an_engine_import_of_the_ui_breaks_the_floors(tmp_path):
    out = _lint_copy(tmp_path, "negalora.generate", "import negalora.ui.platform_check")
    assert out.returncode != 0, out.stdout
    assert "shells, worker, engine, generation, store and models" in out.stdout
    assert "BROKEN" in out.stdout
    assert "negalora.generate -> negalora.ui.platform_check" in out.stdout


def test_a_circle_inside_the_store_breaks_its_floors(tmp_path):
    out = _lint_copy(tmp_path, "negalora.store.clock", "from negalora.store import db")
    assert out.returncode != 0, out.stdout
    assert "The store's own floors BROKEN" in out.stdout


def test_no_import_circles():
    import grimp

    graph = grimp.build_graph("negalora")
    edges = {m: [x for x in graph.find_modules_directly_imported_by(m) if x in graph.modules] for m in graph.modules}
    circles = _strongly_connected(edges)
    assert circles == [], f"import circles: {circles}"


def _strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or not (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert _strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": ["b"], "b": []}) == []


def test_pyright_basic_is_clean():
    out = subprocess.run([_tool("basedpyright"), "negalora"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr
    assert "0 errors" in out.stdout


def test_ruff_is_clean():
    paths = ["negalora", "tests", "tools", "benchmarks", "main.py"]
    out = subprocess.run([_tool("ruff"), "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    paths = ["negalora", "tests", "tools", "benchmarks", "main.py"]
    out = subprocess.run([_tool("ruff"), "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, "run `ruff format negalora tests tools benchmarks`:\n" + out.stdout + out.stderr
