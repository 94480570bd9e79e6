"""`edgenode split --spatial N` and `plan --spatial N` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tf


def edgenode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgenode.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.test_spatial import conv_stack

    path = tmp_path_factory.mktemp("model") / "stack.keras"
    conv_stack(23).save(path)
    return path


def test_split_spatial_writes_verified_stripes(stack: Path, tmp_path: Path) -> None:
    out = edgenode("split", "--model", str(stack), "--spatial", "3", "--gflops", "10",
                   "--out", str(tmp_path / "tiles"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "spatial region: ops 0.." in out.stderr
    assert "stripes: parts 0..2 run at once on different nodes, part 3 gathers them" in out.stdout
    assert "chained parts vs whole model: max abs diff" in out.stdout
    manifest = json.loads((tmp_path / "tiles" / "manifest.json").read_text())
    assert manifest["tiles"]["stripes"] == [0, 1, 2] and manifest["tiles"]["gather"] == 3
    rows = [s["rows"] for s in manifest["tiles"]["slices"]]
    assert rows[0][0] == 0 and rows[-1][1] == 23 and len(rows) == 3  # the border is padded


def test_split_spatial_ending_where_asked(stack: Path, tmp_path: Path) -> None:
    out = edgenode("split", "--model", str(stack), "--spatial", "2", "--gflops", "10",
                   "--spatial-last-op", "cat", "--out", str(tmp_path / "t"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "(cat)" in out.stderr
    out = edgenode("split", "--model", str(stack), "--spatial", "2", "--gflops", "10",
                   "--spatial-last-op", "head", "--out", str(tmp_path / "u"))  # fmt: skip
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .endswith("no spatial region of stack ends after op 'head'")
        or "head" in out.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--spatial", "2", "--parts", "3"),
            "--spatial chooses its own parts: drop --parts, --at, --per-op, --profile",
        ),
        (("--spatial", "1"), "--spatial 1: at least 2 stripes"),
        (("--gflops", "3"), "--spatial-last-op and --gflops go with --spatial N"),
    ],
)
def test_split_spatial_usage_errors_are_one_line(
    stack: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    out = edgenode("split", "--model", str(stack), "--out", str(tmp_path / "x"), *args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"edgenode: error: {message}"]


def test_plan_spatial_compares_with_layer_wise(stack: Path) -> None:
    # Slow nodes: compute outweighs hops, the stripes spread over both nodes.
    out = edgenode("plan", "--model", str(stack), "--nodes", "2", "--gflops", "0.001",
                   "--spatial", "2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "spatial, 2 stripes of ops 0.." in out.stdout
    assert "predicted latency: spatial" in out.stdout and "on 2 nodes" in out.stdout
    # Fast nodes: the hops cost more than the halves save.
    out = edgenode("plan", "--model", str(stack), "--nodes", "2", "--gflops", "1000",
                   "--spatial", "2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "stripes do not pay on these nodes" in out.stdout
