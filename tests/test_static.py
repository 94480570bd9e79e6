"""Static checks the package promises: mypy --strict and ruff, run as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed beside {sys.executable} (pip install -e '.[dev]')")
    return found


def test_mypy_strict() -> None:
    out = subprocess.run(
        [_tool("mypy"), "edgenode"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff() -> None:
    for args in (["check", "edgenode", "tests"], ["format", "--check", "edgenode", "tests"]):
        out = subprocess.run(
            [_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stdout + out.stderr
