"""Spatial plans (planning.tiles): the simulated latency of a tiled graph, and the plan
that spreads its stripes over the nodes when that answers sooner."""

from __future__ import annotations

import itertools

import pytest

from edgenode.errors import PlanError
from edgenode.planning import (
    CostGraph,
    Link,
    NodeSpec,
    OpCost,
    TensorCost,
    TileShape,
    plan_cluster,
    plan_tiles,
    schedule,
)
from edgenode.planning.tiles import _spreads

GIB = 2**30
FAST = Link(bandwidth_bytes_per_s=1e9, latency_s=1e-4)


def tiled(stripes: int, *, before: float = 0.0, stripe: float = 1e9, gather: float = 1e8,
          slice_bytes: int = 10_000, out_bytes: int = 1_000) -> CostGraph:  # fmt: skip
    """[before], ``stripes`` stripes of ``stripe`` work each reading a row slice, a gather."""
    ops = [OpCost(name="before", work=before)] if before else []
    first = len(ops)
    source = 0 if before else -1
    tensors = [TensorCost(name="image", producer=-1, consumers=(0,) if before else (), nbytes=1)]
    for i in range(stripes):
        ops.append(OpCost(name=f"stripe{i}", work=stripe, param_bytes=100))
        tensors.append(
            TensorCost(name=f"rows{i}", producer=source, consumers=(first + i,), nbytes=slice_bytes)
        )
    last = len(ops)
    ops.append(OpCost(name="gather", work=gather))
    tensors += [
        TensorCost(name=f"out{i}", producer=first + i, consumers=(last,), nbytes=out_bytes)
        for i in range(stripes)
    ]
    tensors.append(TensorCost(name="answer", producer=last, nbytes=40, final=True))
    shape = TileShape(stripes=tuple(range(first, last)), gather=last)
    return CostGraph(ops=tuple(ops), tensors=tuple(tensors), tiles=shape)


def node(node_id: str, speed: float = 1e9, memory: int = GIB) -> NodeSpec:
    return NodeSpec(node_id=node_id, speed=speed, memory_bytes=memory)


def test_schedule_runs_stripes_at_once_and_charges_each_hop() -> None:
    graph = tiled(2, stripe=1e9, gather=1e8, slice_bytes=10_000, out_bytes=1_000)
    a, b = node("a"), node("b")
    alone = schedule(graph, [(a, 0, 3)], FAST)
    assert alone == pytest.approx(2.1)  # both stripes and the gather, no hop
    # a: stripe 0; b: stripe 1 (its rows sent first: 10 us + 0.1 ms) and the gather; the
    # answer goes back to a (40 bytes + 0.1 ms)
    spread = schedule(graph, [(a, 0, 1), (b, 1, 3)], FAST)
    to_b = 10_000 / 1e9 + 1e-4
    stripe1_done = to_b + 1.0
    stripe0_there = 1.0 + 1_000 / 1e9 + 1e-4
    expected = max(stripe1_done, stripe0_there) + 0.1 + 40 / 1e9 + 1e-4
    assert spread == pytest.approx(expected)


def test_a_node_sends_one_tensor_after_another() -> None:
    graph = tiled(3, stripe=1e9, slice_bytes=10**9)  # 1 s per slice on the link
    nodes = [node("a"), node("b"), node("c")]
    latency = schedule(graph, [(nodes[0], 0, 1), (nodes[1], 1, 2), (nodes[2], 2, 4)], FAST)
    # c's rows leave after b's: 2 s on the link, then its stripe and the gather
    assert latency >= 2 + 1.0 + 0.1


def test_equal_nodes_on_a_fast_link_take_one_stripe_each() -> None:
    graph = tiled(4, before=1e8)
    nodes = [node(f"n{i}") for i in range(4)]
    plan = plan_tiles(graph, nodes, FAST)
    assert [(s.start, s.stop) for s in plan.stages] == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert plan.latency_s < 1.5  # against 4.2 s on one node


def test_a_slow_link_keeps_the_model_on_one_node() -> None:
    graph = tiled(2, slice_bytes=10**8)  # rows that take 100 s to send
    slow = Link(bandwidth_bytes_per_s=1e6, latency_s=1e-3)
    plan = plan_tiles(graph, [node("a"), node("b")], slow)
    assert [(s.node_id, s.start, s.stop) for s in plan.stages] == [("a", 0, 3)]


def test_a_faster_node_takes_more_stripes() -> None:
    graph = tiled(4)
    plan = plan_tiles(graph, [node("slow", 1e9), node("fast", 3e9)], FAST)
    counts = {s.node_id: s.stop - s.start for s in plan.stages}
    assert counts["fast"] >= 3  # the gather rides with the last node's stripes


def test_every_spread_is_tried() -> None:
    for stripes, nodes in itertools.product(range(1, 6), range(1, 6)):
        spreads = list(_spreads(stripes, nodes))
        assert all(sum(s) == stripes and min(s) >= 1 and len(s) == nodes for s in spreads)
        assert len(spreads) == len(set(spreads))
        expected = len(list(itertools.combinations(range(1, stripes), nodes - 1)))
        assert len(spreads) == expected


def test_memory_decides_who_can_run_a_share() -> None:
    graph = tiled(2)
    with pytest.raises(PlanError, match="no feasible plan"):
        plan_tiles(graph, [node("a", memory=10), node("b", memory=10)], FAST)


def test_plan_cluster_uses_the_spatial_planner_and_replicates() -> None:
    graph = tiled(2)
    members = [node(f"n{i}") for i in range(4)]
    plan = plan_cluster(graph, members, FAST, manifest_digest="m")
    assert plan.replicas == 2
    for replica in range(2):
        stages = [a for a in plan.assignments if a.replica == replica]
        assert [(a.start, a.stop) for a in stages] == [(0, 1), (1, 3)]
    assert plan.latency_s == pytest.approx(
        schedule(graph, [(members[0], 0, 1), (members[1], 1, 3)], FAST)
    )
