"""node.memory_budget: what a node offers the plan, advertised to its peers and planned with
(issue 22, item 1), and its default: a share of the memory available at start."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgenode.config import parse_config
from edgenode.defaults import MEMORY_BUDGET_SHARE
from edgenode.errors import ConfigError
from edgenode.runtime.selfbench import available_memory_bytes, memory_budget_bytes
from tests.nodes import (
    SLOW_GFLOPS,
    START_DEADLINE_S,
    NodeProcess,
    agreed_cluster,
    cli,
    start_node,
    statuses,
    wait_until,
)

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


def starter(split_dir: Path, workdir: Path) -> Callable[[str, str], NodeProcess]:
    """Starts nodes of one new test cluster on ``split_dir``, each with its own budget."""
    cluster = f"test-{uuid.uuid4().hex[:12]}"

    def start(name: str, budget: str) -> NodeProcess:
        config = workdir / f"{name}.toml"
        config.write_text(
            f'[node]\nspeed_gflops = {SLOW_GFLOPS}\nmemory_budget = "{budget}"\n'
            f'[cluster]\nname = "{cluster}"\n'
        )
        return start_node(split_dir, workdir, name, config=config)

    return start


@pytest.mark.tf
def test_a_node_whose_budget_holds_no_part_is_left_idle(split_dir: Path, tmp_path: Path) -> None:
    start = starter(split_dir, tmp_path)
    nodes = [start("a", "1 KiB"), start("b", "16 GiB")]
    try:
        for node in nodes:
            node.wait_serving()
        found = agreed_cluster(nodes, {"a", "b"})
        assert found["a"]["node"]["memory_bytes"] == 1024
        assert found["b"]["node"]["memory_bytes"] == 16 * 2**30
        # Each measured its baseline (resident at start, the backend loaded, no part): the
        # planner gives a node parts that fit its budget less that.
        assert all(16 * 2**20 < found[n]["node"]["baseline_bytes"] < 2**31 for n in "ab")
        # status: what it holds now, at its peak, and what the model predicts for its parts
        b = found["b"]
        assert 0 < b["resident_bytes"] <= b["peak_bytes"]
        assert b["predicted_bytes"] > b["node"]["baseline_bytes"]
        assert found["a"]["predicted_bytes"] == found["a"]["node"]["baseline_bytes"]  # no part
        # Both are equally fast, so without the budgets the plan would use both.
        assert not found["a"]["parts"]
        assert len(found["b"]["parts"]) == 4
        assert "memory budget 1.0 KiB" in nodes[0].log()
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.tf
def test_budgets_that_cannot_hold_the_model_say_so_until_a_node_that_can_joins(
    split_dir: Path, tmp_path: Path
) -> None:
    start = starter(split_dir, tmp_path)
    nodes = [start("a", "1 KiB"), start("b", "1 KiB")]
    try:
        for node in nodes:
            node.wait_serving()

        def stuck() -> dict[str, dict[str, Any]] | None:
            found = statuses([n.address for n in nodes])
            said = [st["plan"].get("problem") for st in found.values()]
            ok = set(found) == {"a", "b"} and all(said)
            return found if ok else None

        found = wait_until(stuck, START_DEADLINE_S, "both nodes to say why there is no plan")
        problem = found["a"]["plan"]["problem"]
        assert problem == found["b"]["plan"]["problem"]
        assert problem.startswith("no feasible plan: op ")  # one op alone exceeds 1 KiB
        assert "the largest node" in problem and "holds 0 bytes for parts" in problem
        assert not found["a"]["parts"] and not found["b"]["parts"]  # they serve nothing
        shown = cli("status", "--peer", nodes[0].address)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.rstrip().endswith(f"no plan: {problem}")
        for node in nodes:  # one line each, in the log, whatever the rounds of planning
            assert node.log().count(problem) == 1
        nodes.append(start("c", "16 GiB"))
        nodes[-1].wait_serving()
        agreed = agreed_cluster(nodes, {"a", "b", "c"})
        assert len(agreed["c"]["parts"]) == 4 and not agreed["a"]["plan"].get("problem")
    finally:
        for node in nodes:
            node.stop()
