"""Each node's own link: a node on a slow link should not be the one that sends the big
tensors, and a plan without per-node links is what it always was."""

from __future__ import annotations

import pytest

from edgenode.errors import PlanError
from edgenode.planning import (
    CostGraph,
    Link,
    NodeSpec,
    OpCost,
    TensorCost,
    plan_cluster,
    plan_pipeline,
    quantize_link,
    stage_cost,
)

MB = 1_000_000
LINK = Link(bandwidth_bytes_per_s=125 * MB, latency_s=0.0005)


def chain(boundary_bytes: int, final_bytes: int = 4_000) -> CostGraph:
    """Four equal ops; each sends ``boundary_bytes`` to the next, the last a small answer."""
    ops = tuple(OpCost(name=f"op{i}", work=1e9) for i in range(4))
    tensors = [
        TensorCost(name=f"t{i}", producer=i, consumers=(i + 1,), nbytes=boundary_bytes)
        for i in range(3)
    ]
    tensors.append(TensorCost(name="out", producer=3, nbytes=final_bytes, final=True))
    return CostGraph(ops=ops, tensors=tuple(tensors))


def node(node_id: str, link_mbit: float = 0.0) -> NodeSpec:
    return NodeSpec(
        node_id=node_id, speed=1e9, memory_bytes=2**30, link_bytes_per_s=link_mbit * 1e6 / 8
    )


def test_without_own_links_the_plan_is_the_cluster_links() -> None:
    graph = chain(2 * MB)
    plain = plan_pipeline(graph, [node("a"), node("b")], LINK)
    same = plan_pipeline(graph, [node("a", 10_000), node("b", 10_000)], LINK)  # faster: capped
    assert plain == same


def test_the_node_on_the_slow_link_takes_the_stage_that_sends_least() -> None:
    graph = chain(2 * MB)
    fast = plan_pipeline(graph, [node("a"), node("b")], LINK)
    assert len(fast.stages) == 2
    slow_b = plan_pipeline(graph, [node("a"), node("b", 8)], LINK)
    assert [s.node_id for s in slow_b.stages] == ["a", "b"]  # b sends only the answer
    slow_a = plan_pipeline(graph, [node("a", 8), node("b")], LINK)
    assert [s.node_id for s in slow_a.stages] == ["b", "a"]  # a sends only the answer
    last = slow_a.stages[-1]
    assert last.send_bytes == 4_000
    assert last.send_s == pytest.approx(4_000 / (8e6 / 8))
    # the planner's tables and the one-stage cost agree, per-node link included
    again = stage_cost(graph, last.start, last.stop, node("a", 8), LINK)
    assert again.time_s == last.time_s


def test_a_slow_link_everywhere_keeps_the_model_on_one_node() -> None:
    graph = chain(20 * MB)
    spread = plan_pipeline(graph, [node("a"), node("b")], LINK)
    assert len(spread.stages) == 2
    # 20 MB over 8 Mbit/s is 20 s: far more than running all four ops on one node (4 s)
    narrow = plan_pipeline(graph, [node("a", 8), node("b", 8)], LINK)
    assert len(narrow.stages) == 1


def test_cluster_plans_round_links_so_that_jitter_does_not_replan() -> None:
    graph = chain(2 * MB)
    plans = {
        plan_cluster(graph, [node("a", m), node("b")], LINK, manifest_digest="d").digest
        for m in (7.6, 8.0, 8.4)
    }
    assert len(plans) == 1


@pytest.mark.parametrize(
    ("mbit", "rounded"),
    [(0, 0), (0.3, 1), (7.6, 8), (30, 32), (100, 128), (1000, 1024), (9_400, 8192)],
)
def test_quantize_link_is_a_power_of_two_in_mbit(mbit: float, rounded: float) -> None:
    assert quantize_link(mbit * 1e6 / 8) * 8 / 1e6 == rounded


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_a_bad_node_link_is_refused(bad: float) -> None:
    spec = NodeSpec(node_id="a", speed=1e9, memory_bytes=2**30, link_bytes_per_s=bad)
    with pytest.raises(PlanError, match="link_bytes_per_s"):
        plan_pipeline(chain(MB), [spec], LINK)
