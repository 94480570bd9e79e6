"""node.memory_budget: what a node offers the plan, advertised to its peers and planned with
(issue 22, item 1), and its default: a share of the memory available at start."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edgenode.config import parse_config
from edgenode.defaults import MEMORY_BUDGET_SHARE
from edgenode.errors import ConfigError
from edgenode.runtime.selfbench import available_memory_bytes, memory_budget_bytes
from tests.nodes import SLOW_GFLOPS, NodeProcess, agreed_cluster

MEMINFO = "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:     800000 kB\n"


def test_the_budget_is_read_with_its_unit() -> None:
    config = parse_config({"node": {"memory_budget": "400 MiB"}})
    assert config.node.memory_budget_bytes == 400 * 2**20
    assert parse_config({"node": {"memory_budget": "1.5GB"}}).node.memory_budget_bytes == 1.5e9
    assert parse_config({}).node.memory_budget_bytes == 0  # not set: the default share


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "node.memory_budget: expected a size such as 512MiB or 2GB, got 'lots'"),
        ("0 MiB", "node.memory_budget: must be positive, or absent for the default"),
        ("12 parsecs", "node.memory_budget: expected a size"),
    ],
)
def test_a_bad_budget_is_one_clear_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"node": {"memory_budget": value}})


def test_without_a_budget_a_node_offers_a_share_of_the_memory_available() -> None:
    assert available_memory_bytes(MEMINFO) == 800000 * 1024  # MemAvailable, not MemTotal
    assert memory_budget_bytes(0, MEMINFO) == int(MEMORY_BUDGET_SHARE * 800000 * 1024)
    assert memory_budget_bytes(123, MEMINFO) == 123  # configured: as it is
    # a kernel that does not say falls back to the physical total, which this machine has
    assert available_memory_bytes("MemTotal: 1 kB\n") > 0
    assert 0 < available_memory_bytes() <= available_memory_bytes("")


@pytest.mark.tf
def test_a_node_whose_budget_holds_no_part_is_left_idle(split_dir: Path, tmp_path: Path) -> None:
    cluster = f"test-{uuid.uuid4().hex[:12]}"

    def start(name: str, budget: str) -> NodeProcess:
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[node]\nspeed_gflops = {SLOW_GFLOPS}\nmemory_budget = "{budget}"\n'
            f'[cluster]\nname = "{cluster}"\n'
        )
        return NodeProcess(name, tmp_path, "--config", str(config), "--listen", "127.0.0.1:0",
                           "--model", str(split_dir), "--interfaces", "127.0.0.1",
                           "--state-dir", str(tmp_path / name))  # fmt: skip

    nodes = [start("a", "1 KiB"), start("b", "64 MiB")]
    try:
        for node in nodes:
            node.wait_serving()
        found = agreed_cluster(nodes, {"a", "b"})
        assert found["a"]["node"]["memory_bytes"] == 1024
        assert found["b"]["node"]["memory_bytes"] == 64 * 2**20
        # Both are equally fast, so without the budgets the plan would use both.
        assert not found["a"]["parts"]
        assert len(found["b"]["parts"]) == 4
        assert "memory budget 1.0 KiB" in nodes[0].log()
    finally:
        for node in nodes:
            node.stop()
