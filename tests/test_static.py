"""Static checks the package promises: mypy --strict, ruff and the import contracts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
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


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # --no-cache: write nothing into the checkout; PYTHONPATH: analyse the tree in cwd.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [_tool("lint-imports"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts() -> None:
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("planning/partition.py", "import grpc", "planning-pure"),
        ("planning/cluster.py", "from edgenode.mesh import NodeId", "planning-pure"),
        ("mesh/_base.py", "import keras", "tensorflow-in-model-and-backends"),
        ("client/outputs.py", "import tensorflow", "tensorflow-in-model-and-backends"),
        ("mesh/_base.py", "from edgenode.transport import codec", "layers"),
        ("model/graph.py", "from edgenode.runtime import metrics", "layers"),
    ],
)
def test_import_contracts_catch_a_bad_import(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    """The same contracts on a copy of the package with one bad import added: that one breaks."""
    shutil.copytree(
        ROOT / "edgenode",
        tmp_path / "edgenode",
        ignore=shutil.ignore_patterns("__pycache__", "data"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "edgenode" / module).open("a") as f:
        f.write(f"\n{bad_import}  # added by the test\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    name = next(c["name"] for c in contracts["contracts"] if c["id"] == contract)
    text = " ".join(out.stdout.split())  # the report wraps long contract names
    assert f"{name} BROKEN" in text, out.stdout
    assert bad_import.split()[1] in out.stdout, out.stdout


_DYNAMIC_IMPORT = re.compile(r"import_module\(\s*f?[\"'](tensorflow|keras|ai_edge_litert)\b")
# A name-based import lint-imports cannot see; there is none (client/ computes Keras'
# preprocessing in numpy): do not add to this set.
_KNOWN_DYNAMIC: set[str] = set()


def test_no_dynamic_tensorflow_imports_outside_model_and_backends() -> None:
    found = set()
    for path in sorted((ROOT / "edgenode").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name.startswith(("edgenode/model/", "edgenode/backends/")):
            continue
        if _DYNAMIC_IMPORT.search(path.read_text(encoding="utf-8")):
            found.add(name)
    assert found <= _KNOWN_DYNAMIC, sorted(found - _KNOWN_DYNAMIC)
