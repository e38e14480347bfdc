"""The engine never imports Qt and the request module never imports torch (import-linter contracts in
pyproject.toml), and the code is lint-clean."""

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
    assert ", 0 broken" in out.stdout


def test_ruff_is_clean():
    paths = ["negalora", "tests", "tools", "benchmarks", "main.py"]
    out = subprocess.run([_tool("ruff"), "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    paths = ["negalora", "tests", "tools", "benchmarks", "main.py"]
    out = subprocess.run([_tool("ruff"), "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, "run `ruff format negalora tests tools benchmarks`:\n" + out.stdout + out.stderr
