"""The cluster plan over manifest parts: same inputs, same plan and digest, on every node."""

from __future__ import annotations

import random

import pytest

from edgenode.errors import PlanError
from edgenode.planning import CostGraph, Link, NodeSpec, OpCost, TensorCost
from edgenode.planning.cluster import plan_cluster, quantize_speed

GIB = 2**30
LINK = Link(bandwidth_bytes_per_s=1e9, latency_s=1e-4)


def parts_chain(works: list[float]) -> CostGraph:
    """Parts in a chain: part i sends one 1 KB tensor to part i+1; the last one is final."""
    ops = tuple(OpCost(name=f"part-{i}", work=w, param_bytes=1000) for i, w in enumerate(works))
    tensors = [TensorCost(name="input", producer=-1, consumers=(0,), nbytes=1000)]
    for i in range(len(works)):
        last = i == len(works) - 1
        consumers = () if last else (i + 1,)
        tensors.append(
            TensorCost(name=f"t{i}", producer=i, consumers=consumers, nbytes=1000, final=last)
        )
    return CostGraph(ops=ops, tensors=tuple(tensors))


def member(node_id: str, speed: float = 1e9) -> NodeSpec:
    return NodeSpec(node_id=node_id, speed=speed, memory_bytes=GIB)


def test_every_node_computes_the_same_plan_whatever_order_it_sees_members_in() -> None:
    graph = parts_chain([1e8] * 8)
    members = [member(f"n{i}", speed=(i + 1) * 1e9) for i in range(5)]
    plans = set()
    for seed in range(10):
        shuffled = members[:]
        random.Random(seed).shuffle(shuffled)
        plans.add(plan_cluster(graph, shuffled, LINK, manifest_digest="m").digest)
    assert len(plans) == 1


def test_parts_are_covered_in_order_by_distinct_nodes() -> None:
    plan = plan_cluster(
        parts_chain([1e8] * 8), [member(f"n{i}") for i in range(4)], LINK, manifest_digest="m"
    )
    assert plan.assignments[0].start == 0 and plan.assignments[-1].stop == 8
    assert all(
        a.stop == b.start for a, b in zip(plan.assignments, plan.assignments[1:], strict=False)
    )
    assert len({a.node_id for a in plan.assignments}) == len(plan.assignments)
    assert [plan.owner(p) for p in range(8)] == [
        a.node_id for a in plan.assignments for _ in a.parts
    ]
    with pytest.raises(PlanError, match="part 8 is not in replica 0"):
        plan.owner(8)


def test_more_nodes_than_parts_form_replica_pipelines() -> None:
    plan = plan_cluster(
        parts_chain([1e8] * 2), [member(f"n{i}") for i in range(5)], LINK, manifest_digest="m"
    )
    assert plan.replicas == 3  # 2 + 2 + a single node running both parts
    for replica in range(plan.replicas):
        owners = [plan.owner(p, replica) for p in range(2)]
        assert all(plan.replica_of(o) == replica for o in owners)
    assert sorted(a.node_id for a in plan.assignments) == [f"n{i}" for i in range(5)]
    assert plan.idle == ()
    with pytest.raises(PlanError, match="replica 3"):
        plan.owner(0, 3)


def test_members_that_cannot_hold_the_model_stay_idle() -> None:
    small = NodeSpec(node_id="tiny", speed=1e9, memory_bytes=10)
    plan = plan_cluster(
        parts_chain([1e8] * 2), [member("a"), member("b"), small], LINK, manifest_digest="m"
    )
    assert plan.idle == ("tiny",) and plan.replicas == 1
    assert plan.parts_of("tiny") == range(0) and plan.replica_of("tiny") is None


def test_a_faster_node_gets_more_work() -> None:
    plan = plan_cluster(
        parts_chain([1e8] * 4),
        [member("slow", 1e9), member("fast", 3e9)],
        LINK,
        manifest_digest="m",
    )
    assert len(plan.parts_of("fast")) == 3 and len(plan.parts_of("slow")) == 1


def test_speed_noise_does_not_change_the_plan_but_membership_does() -> None:
    graph = parts_chain([1e8, 2e8, 1e8, 3e8])
    a = plan_cluster(graph, [member("a", 1.01e9), member("b", 2.02e9)], LINK, manifest_digest="m")
    b = plan_cluster(graph, [member("a", 0.996e9), member("b", 1.98e9)], LINK, manifest_digest="m")
    assert a.digest == b.digest
    c = plan_cluster(
        graph, [member("a", 1e9), member("b", 2e9), member("c")], LINK, manifest_digest="m"
    )
    assert c.digest != a.digest
    other_manifest = plan_cluster(
        graph, [member("a", 1e9), member("b", 2e9)], LINK, manifest_digest="other"
    )
    assert other_manifest.assignments == a.assignments and other_manifest.digest != a.digest


@pytest.mark.parametrize(("speed", "expected"), [(1234.5, 1200.0), (0.0456, 0.046), (9.96, 10.0)])
def test_quantize_speed(speed: float, expected: float) -> None:
    assert quantize_speed(speed) == expected


def test_no_members() -> None:
    with pytest.raises(PlanError, match="no members"):
        plan_cluster(parts_chain([1.0]), [], LINK, manifest_digest="m")


def test_split_plan_and_the_nodes_assume_one_network() -> None:
    from edgenode import defaults
    from edgenode.model.manifest import link_spec
    from edgenode.planning.partition import plan_parts
    from edgenode.runtime.negotiation import DEFAULT_LINK

    assert plan_parts.__defaults__ == (DEFAULT_LINK,)  # `split --cut balanced`
    assert DEFAULT_LINK.bandwidth_bytes_per_s == defaults.LINK_MBPS * 1e6 / 8 == 125e6
    assert DEFAULT_LINK.latency_s == defaults.HOP_LATENCY_MS / 1e3
    spec = link_spec(None, 0.5)  # a manifest written with only --hop-latency-ms
    assert spec is not None and spec.bandwidth_bytes_per_s == DEFAULT_LINK.bandwidth_bytes_per_s
