"""serving(): what a plan gives requests that enter at one node, inputs crossing its link."""

from __future__ import annotations

import math

import pytest

from edgenode.errors import PlanError
from edgenode.planning import CostGraph, Link, NodeSpec, OpCost, TensorCost
from edgenode.planning.cluster import Assignment, ClusterPlan, plan_cluster
from edgenode.planning.serving import serving

GIB = 2**30
LINK = Link(bandwidth_bytes_per_s=125e6, latency_s=1e-3)  # gigabit
INPUT = 600_000  # bytes: a 224x224x3 float32 image, about
WORK = 8e8  # FLOPs of the whole model
SPEED = 8e10  # FLOP/s: 10 ms per request


def model(parts: int = 4) -> CostGraph:
    ops = tuple(OpCost(name=f"p{i}", work=WORK / parts, param_bytes=1000) for i in range(parts))
    tensors = [TensorCost(name="image", producer=-1, consumers=(0,), nbytes=INPUT)]
    for i in range(parts):
        last = i == parts - 1
        tensors.append(TensorCost(name=f"t{i}", producer=i, consumers=() if last else (i + 1,),
                                  nbytes=4000 if last else 200_000, final=last))  # fmt: skip
    return CostGraph(ops=ops, tensors=tuple(tensors))


def members(count: int, mbit: float = 0.0) -> list[NodeSpec]:
    return [NodeSpec(node_id=f"n{i}", speed=SPEED, memory_bytes=GIB,
                     link_bytes_per_s=mbit * 1e6 / 8) for i in range(count)]  # fmt: skip


def test_on_a_slow_link_the_origins_replica_serves_and_the_link_feeds_the_rest() -> None:
    graph, nodes = model(), members(4, mbit=8)
    plan = plan_cluster(graph, nodes, LINK, manifest_digest="m")
    assert plan.replicas == 4  # each node runs the whole model: nothing crosses 8 Mbit/s
    got = serving(plan, graph, nodes, LINK, origin="n2")
    one = WORK / SPEED  # its own replica ends on it: the answer goes back to the client
    assert got.latency_s == pytest.approx(one)
    forward = 1 / (INPUT / 1e6 + LINK.latency_s)  # 8 Mbit/s = 1e6 B/s
    assert got.forward_rps == pytest.approx(forward)
    assert got.throughput_rps == pytest.approx(1 / one + forward)  # far below 4 replicas
    assert got.throughput_rps < 0.4 * sum(got.replica_rates)


def test_on_gigabit_every_replica_counts() -> None:
    graph, nodes = model(), members(4)
    plan = plan_cluster(graph, nodes, LINK, manifest_digest="m")
    got = serving(plan, graph, nodes, LINK, origin=plan.assignments[0].node_id)
    assert got.throughput_rps == pytest.approx(sum(got.replica_rates))
    assert got.latency_s == pytest.approx(plan.latency_s)  # replica 0 starts at the origin


def test_an_origin_without_a_replica_of_its_own_sends_every_input_away() -> None:
    graph, nodes = model(2), members(3, mbit=8)
    plan = ClusterPlan(
        manifest_digest="m", members=("n0", "n1", "n2"),
        assignments=(Assignment(node_id="n0", start=0, stop=1),
                     Assignment(node_id="n1", start=1, stop=2)),
        idle=("n2",), bottleneck_s=1.0, latency_s=1.0,
    )  # fmt: skip
    got = serving(plan, graph, nodes, LINK, origin="n2")
    send = INPUT / 1e6 + LINK.latency_s
    stages = [WORK / 2 / SPEED + 200_000 / 1e6 + LINK.latency_s,
              WORK / 2 / SPEED + 4000 / 1e6 + LINK.latency_s]  # fmt: skip
    assert got.latency_s == pytest.approx(send + sum(stages))
    assert got.throughput_rps == pytest.approx(min(1 / max(stages), 1 / send))


def test_the_origin_must_be_a_member() -> None:
    graph, nodes = model(), members(2)
    plan = plan_cluster(graph, nodes, LINK, manifest_digest="m")
    with pytest.raises(PlanError, match="not a member"):
        serving(plan, graph, nodes, LINK, origin="stranger")


def test_a_model_without_inputs_to_send_is_not_link_bound() -> None:
    graph = CostGraph(ops=(OpCost(name="p", work=WORK),), tensors=())
    nodes = members(2, mbit=1)
    plan = plan_cluster(graph, nodes, LINK, manifest_digest="m")
    got = serving(plan, graph, nodes, LINK, origin="n0")
    assert math.isinf(got.forward_rps)
    assert got.throughput_rps == pytest.approx(sum(got.replica_rates))


def test_the_cpu_a_node_spends_on_requests_counts() -> None:
    cpu = Link(bandwidth_bytes_per_s=1e6, latency_s=1e-3, stage_cpu_s=6e-4, byte_cpu_s=3e-9)
    graph, nodes = model(), members(2)
    plan = plan_cluster(graph, nodes, cpu, manifest_digest="m")
    assert plan.replicas == 2  # 200 kB per hop at 1 MB/s: each node runs it all
    got = serving(plan, graph, nodes, cpu, origin="n0")
    take_in = 3e-9 * (INPUT + 4000)  # the origin receives the image, returns the answer
    own = WORK / SPEED + 6e-4 + take_in
    assert got.latency_s == pytest.approx(own)
    assert got.cpu_s == pytest.approx(own)  # one stage: all of it is CPU
    other = WORK / SPEED + 6e-4 + 2 * 3e-9 * 4000 + 4000 / 1e6 + 1e-3  # its answer, a hop
    assert got.replica_rates[1] == pytest.approx(1 / other)
    forwarded = min(1 / other, 1 / (INPUT / 1e6 + 1e-3))
    away = take_in + 2 * 3e-9 * INPUT + 6e-4  # the origin's CPU per request sent away
    assert got.throughput_rps == pytest.approx((1 - forwarded * away) / own + forwarded)
    free = serving(plan, graph, nodes, LINK, origin="n0")  # the same, without the CPU
    assert got.throughput_rps < free.throughput_rps
