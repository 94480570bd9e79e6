"""Tests of the pipeline planner: tables, brute force on small graphs, determinism, errors."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence

import pytest

from edgenode.errors import PlanError
from edgenode.planning import (
    MAX_EXACT_NODES,
    CostGraph,
    Link,
    NodeSpec,
    OpCost,
    Plan,
    TensorCost,
    boundary_tensors,
    crossing_bytes,
    equal_cuts,
    narrow_cuts,
    plan_parts,
    plan_pipeline,
    stage_cost,
    stage_memory_bytes,
)

FAST_LINK = Link(bandwidth_bytes_per_s=1e12, latency_s=0.0)
BIG_MEMORY_BYTES = 10**12
REL = 1e-9


def chain(
    works: Sequence[float],
    sizes: Sequence[int] | None = None,
    params: Sequence[int] | None = None,
    final_bytes: int = 1,
) -> CostGraph:
    """Ops in a line, op i feeding op i + 1; the input feeds op 0 and the last output is final."""
    n = len(works)
    sizes = [1] * (n - 1) if sizes is None else sizes
    params = [0] * n if params is None else params
    ops = tuple(
        OpCost(name=f"op{i}", work=w, param_bytes=p)
        for i, (w, p) in enumerate(zip(works, params, strict=True))
    )
    tensors = [TensorCost(name="x", producer=-1, consumers=(0,), nbytes=1)]
    tensors += [
        TensorCost(name=f"t{i}", producer=i, consumers=(i + 1,), nbytes=s)
        for i, s in enumerate(sizes)
    ]
    tensors.append(TensorCost(name="y", producer=n - 1, nbytes=final_bytes, final=True))
    return CostGraph(ops=ops, tensors=tuple(tensors))


def node(node_id: str, speed: float = 1.0, memory_bytes: int = BIG_MEMORY_BYTES) -> NodeSpec:
    return NodeSpec(node_id=node_id, speed=speed, memory_bytes=memory_bytes)


def op_counts(plan: Plan) -> dict[str, int]:
    return {s.node_id: s.stop - s.start for s in plan.stages}


def bounds(plan: Plan) -> tuple[int, ...]:
    return (0, *(s.stop for s in plan.stages))


# Reference implementations, written from the spec independently of the planner's tables.


def ref_send_bytes(graph: CostGraph, a: int, b: int) -> int:
    total = 0
    for t in graph.tensors:
        if a <= t.producer < b:
            total += t.nbytes if any(c >= b for c in t.consumers) else 0
            total += t.nbytes if t.final else 0
    return total


def ref_memory(graph: CostGraph, a: int, b: int) -> int:
    """Parameters plus the largest working set (all inputs + all outputs) of one op."""

    def held(op: int) -> int:
        return sum(t.nbytes for t in graph.tensors if t.producer == op or op in t.consumers)

    return sum(o.param_bytes for o in graph.ops[a:b]) + max(held(op) for op in range(a, b))


def brute_force(
    graph: CostGraph, nodes: Sequence[NodeSpec], link: Link, max_parts: int | None = None
) -> tuple[float, int, float] | None:
    """(best bottleneck, fewest stages at it, least summed time among those), or None."""
    n = len(graph.ops)
    limit = len(nodes) if max_parts is None else min(max_parts, len(nodes))
    time = {
        (v.node_id, a, b): stage_cost(graph, a, b, v, link).time_s
        for v in nodes
        for a in range(n)
        for b in range(a + 1, n + 1)
        if ref_memory(graph, a, b) <= v.memory_bytes
    }
    plans = []
    for k in range(1, min(limit, n) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            parts = list(itertools.pairwise((0, *cuts, n)))
            for chosen in itertools.permutations(nodes, k):
                found = [
                    time.get((v.node_id, a, b)) for v, (a, b) in zip(chosen, parts, strict=True)
                ]
                times = [t for t in found if t is not None]
                if len(times) == k:
                    plans.append((max(times), k, sum(times)))
    if not plans:
        return None
    best = min(p[0] for p in plans)
    near = [p for p in plans if p[0] <= best * (1 + REL)]
    fewest = min(p[1] for p in near)
    return best, fewest, min(p[2] for p in near if p[1] == fewest)


def assert_valid(
    plan: Plan,
    graph: CostGraph,
    nodes: Sequence[NodeSpec],
    link: Link,
    max_parts: int | None = None,
) -> None:
    by_id = {v.node_id: v for v in nodes}
    n = len(graph.ops)
    assert plan.stages[0].start == 0
    assert plan.stages[-1].stop == n
    for before, after in itertools.pairwise(plan.stages):
        assert before.stop == after.start
    assert all(s.start < s.stop for s in plan.stages)
    assert len({s.node_id for s in plan.stages}) == len(plan.stages)
    assert len(plan.stages) <= (len(nodes) if max_parts is None else max_parts)
    for s in plan.stages:
        v = by_id[s.node_id]
        assert ref_memory(graph, s.start, s.stop) <= v.memory_bytes
        assert s == stage_cost(graph, s.start, s.stop, v, link)
    assert plan.bottleneck_s == max(s.time_s for s in plan.stages)
    assert plan.latency_s == pytest.approx(sum(s.time_s for s in plan.stages), rel=REL)
    fits = [v for v in nodes if ref_memory(graph, 0, n) <= v.memory_bytes]
    if fits:
        best = min(stage_cost(graph, 0, n, v, link).time_s for v in fits)
        assert plan.single_node_s == best
        single = by_id[plan.single_node_id]
        assert stage_cost(graph, 0, n, single, link).time_s == best
    else:
        assert (plan.single_node_id, plan.single_node_s) == ("", math.inf)


def random_graph(rng: random.Random, n_ops: int) -> CostGraph:
    ops = tuple(
        OpCost(
            name=f"op{i}",
            work=rng.choice([0.0, float(rng.randint(1, 4)), rng.uniform(0.0, 5.0)]),
            param_bytes=rng.choice([0, rng.randint(0, 100)]),
        )
        for i in range(n_ops)
    )
    tensors = []
    for j in range(rng.randint(0, 2)):
        readers = sorted(rng.sample(range(n_ops), rng.randint(0, min(2, n_ops))))
        tensors.append(TensorCost(name=f"in{j}", producer=-1, consumers=tuple(readers), nbytes=9))
    for i in range(n_ops):
        later = range(i + 1, n_ops)
        for j in range(rng.randint(0, 2)):
            readers = sorted(rng.sample(later, rng.randint(0, min(3, len(later)))))
            tensors.append(
                TensorCost(
                    name=f"t{i}.{j}",
                    producer=i,
                    consumers=tuple(readers),
                    nbytes=rng.choice([0, rng.randint(1, 100)]),
                    final=rng.random() < 0.2,
                )
            )
    return CostGraph(ops=ops, tensors=tuple(tensors))


def random_nodes(rng: random.Random, count: int) -> list[NodeSpec]:
    ids = rng.sample([f"n{i:02d}" for i in range(20)], count)
    return [
        node(i, rng.choice([1.0, 2.0, rng.uniform(0.3, 4.0)]), rng.randint(60, 500)) for i in ids
    ]


def random_case(seed: int) -> tuple[CostGraph, list[NodeSpec], Link, int | None]:
    rng = random.Random(seed)
    graph = random_graph(rng, rng.randint(1, 9))
    nodes = random_nodes(rng, rng.randint(1, 4))
    link = Link(
        bandwidth_bytes_per_s=rng.choice([10.0, 100.0, 1000.0]),
        latency_s=rng.choice([0.0, 0.01, 0.5]),
        stage_cpu_s=rng.choice([0.0, 0.0, 0.02]),
        byte_cpu_s=rng.choice([0.0, 0.0, 1e-3]),
    )
    return graph, nodes, link, rng.choice([None, None, None, 1, 2, 3])


# Tables.


@pytest.mark.parametrize(
    ("speeds", "expected_counts", "expected_s"),
    [
        ((1.0, 1.0), {"a": 2, "b": 2}, 2.0),
        ((3.0, 1.0), {"a": 3, "b": 1}, 1.0),
        ((1.0, 3.0), {"a": 1, "b": 3}, 1.0),
        ((2.0, 1.0, 1.0), {"a": 2, "b": 1, "c": 1}, 1.0),
        ((1.0, 1.0, 1.0, 1.0), {"a": 1, "b": 1, "c": 1, "d": 1}, 1.0),
        ((4.0, 1.0), {"a": 4}, 1.0),
    ],
)
def test_uneven_speeds_share_work_by_speed(
    speeds: tuple[float, ...], expected_counts: dict[str, int], expected_s: float
) -> None:
    graph = chain([1.0] * 4)
    nodes = [node(i, s) for i, s in zip("abcd", speeds, strict=False)]
    plan = plan_pipeline(graph, nodes, FAST_LINK)
    assert op_counts(plan) == expected_counts
    assert plan.bottleneck_s == pytest.approx(expected_s, rel=1e-6)
    assert_valid(plan, graph, nodes, FAST_LINK)


@pytest.mark.parametrize(
    ("works", "n_nodes", "heavy_part"),
    [
        ((1.0, 1.0, 8.0, 1.0, 1.0), 3, (2, 3)),
        ((8.0, 1.0, 1.0, 1.0), 2, (0, 1)),
        ((1.0, 1.0, 1.0, 9.0), 2, (3, 4)),
    ],
)
def test_heavy_op_stands_alone(
    works: tuple[float, ...], n_nodes: int, heavy_part: tuple[int, int]
) -> None:
    graph = chain(works)
    plan = plan_pipeline(graph, [node(f"n{i}") for i in range(n_nodes)], FAST_LINK)
    assert heavy_part in {(s.start, s.stop) for s in plan.stages}
    assert plan.bottleneck_s == pytest.approx(max(works), rel=1e-6)


@pytest.mark.parametrize(
    ("memory_bytes", "expected_stages", "expected_single_s"),
    [(150, 2, math.inf), (250, 1, 0.2 + 1e-12)],
)
def test_memory_limits_force_a_split(
    memory_bytes: int, expected_stages: int, expected_single_s: float
) -> None:
    graph = chain([1.0, 1.0], params=[100, 100])
    nodes = [node("fast", 10.0, memory_bytes), node("slow", 1.0, memory_bytes)]
    plan = plan_pipeline(graph, nodes, FAST_LINK)
    assert len(plan.stages) == expected_stages
    assert plan.single_node_s == pytest.approx(expected_single_s, rel=1e-6)
    assert_valid(plan, graph, nodes, FAST_LINK)


def test_node_too_small_for_any_op_stays_unused() -> None:
    graph = chain([1.0, 1.0, 1.0], params=[10, 10, 10])
    nodes = [node("big"), node("tiny", speed=100.0, memory_bytes=5), node("mid")]
    plan = plan_pipeline(graph, nodes, FAST_LINK)
    assert "tiny" not in {s.node_id for s in plan.stages}
    assert plan.single_node_id == "big"
    assert_valid(plan, graph, nodes, FAST_LINK)


@pytest.mark.parametrize(
    ("bandwidth_bytes_per_s", "expected_stages"),
    [(1e6, 1), (1e9, 2)],
)
def test_expensive_cut_keeps_fewer_stages(
    bandwidth_bytes_per_s: float, expected_stages: int
) -> None:
    graph = chain([1.0, 1.0], sizes=[2_000_000])
    link = Link(bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=0.0005)
    plan = plan_pipeline(graph, [node("a"), node("b")], link)
    assert len(plan.stages) == expected_stages


def test_narrow_cut_wins_over_wide_cut_of_equal_work() -> None:
    # Either cut leaves the final stage (sending a big output) as the bottleneck; the narrow cut
    # after op1 gives a smaller total time than the wide one after op0.
    graph = chain([1.0, 0.0, 1.0], sizes=[1000, 10], final_bytes=5000)
    link = Link(bandwidth_bytes_per_s=1000.0, latency_s=0.0)
    nodes = [node("a"), node("b")]
    plan = plan_pipeline(graph, nodes, link)
    assert bounds(plan) == (0, 2, 3)
    assert plan.bottleneck_s == pytest.approx(6.0)
    assert plan.latency_s == pytest.approx(7.01)
    assert_valid(plan, graph, nodes, link)


def test_max_parts_caps_the_number_of_stages() -> None:
    graph = chain([1.0] * 4)
    nodes = [node(i) for i in "abcd"]
    assert len(plan_pipeline(graph, nodes, FAST_LINK).stages) == 4
    plan = plan_pipeline(graph, nodes, FAST_LINK, max_parts=2)
    assert bounds(plan) == (0, 2, 4)


def test_fewest_stages_among_equal_bottlenecks() -> None:
    # The heavy op sets the bottleneck; splitting the light ops further would not lower it.
    graph = chain([1.0, 1.0, 5.0, 1.0, 1.0])
    plan = plan_pipeline(graph, [node(f"n{i}") for i in range(5)], FAST_LINK)
    assert bounds(plan) == (0, 2, 3, 5)


def test_fastest_nodes_among_equally_good_sets() -> None:
    # a+b, a+c and b+c all reach the bottleneck 2.0 with two stages; c is the fastest.
    graph = chain([2.0, 2.0])
    nodes = [node("a"), node("b"), node("c", 1.5)]
    plan = plan_pipeline(graph, nodes, FAST_LINK)
    assert plan.bottleneck_s == pytest.approx(2.0)
    assert {s.node_id for s in plan.stages} == {"a", "c"}


def test_slow_link_makes_the_pipeline_slower_than_one_node() -> None:
    graph = chain([1.0, 1.0], sizes=[100])
    link = Link(bandwidth_bytes_per_s=1000.0, latency_s=0.0)
    plan = plan_pipeline(graph, [node("a"), node("b")], link)
    assert len(plan.stages) == 2
    assert plan.bottleneck_s == pytest.approx(1.1)
    assert plan.single_node_s == pytest.approx(2.001)
    assert plan.slower_than_single_node
    assert plan.speedup == pytest.approx(2.001 / 1.1)


def test_single_node_is_the_fastest_that_holds_the_model() -> None:
    graph = chain([1.0, 1.0], params=[100, 100])
    nodes = [node("a", 4.0, 150), node("b", 2.0, 1000), node("c", 1.0, 1000)]
    plan = plan_pipeline(graph, nodes, FAST_LINK)
    assert plan.single_node_id == "b"
    assert plan.single_node_s == stage_cost(graph, 0, 2, nodes[1], FAST_LINK).time_s
    assert_valid(plan, graph, nodes, FAST_LINK)


def test_no_node_holds_the_model() -> None:
    graph = chain([1.0, 1.0], params=[100, 100])
    plan = plan_pipeline(graph, [node("a", 1.0, 150), node("b", 1.0, 150)], FAST_LINK)
    assert (plan.single_node_id, plan.single_node_s) == ("", math.inf)
    assert not plan.slower_than_single_node
    assert plan.speedup == math.inf


def test_latency_is_paid_only_by_stages_that_send() -> None:
    graph = CostGraph(ops=(OpCost(name="a", work=2.0), OpCost(name="b", work=2.0)))
    link = Link(bandwidth_bytes_per_s=10.0, latency_s=0.5)
    assert stage_cost(graph, 0, 1, node("v", 2.0), link).time_s == 1.0
    with_output = chain([2.0], final_bytes=10)
    stage = stage_cost(with_output, 0, 1, node("v", 2.0), link)
    assert (stage.compute_s, stage.send_bytes, stage.send_s, stage.time_s) == (1.0, 10, 1.0, 2.5)


def test_the_link_charges_cpu_per_request_and_per_byte_at_both_ends() -> None:
    graph = chain([2.0, 2.0], final_bytes=10)
    link = Link(bandwidth_bytes_per_s=10.0, latency_s=0.5, stage_cpu_s=0.25, byte_cpu_s=0.01)
    stage = stage_cost(graph, 1, 2, node("v", 2.0), link)
    assert stage.cpu_s == 1.0 + 0.25 + 2 * 0.01 * 10
    assert stage.time_s == stage.cpu_s + 1.0 + 0.5
    # the planner's tables do the same arithmetic
    plan = plan_pipeline(graph, [node("v", 2.0)], link)
    assert plan.stages[0].time_s == stage_cost(graph, 0, 2, node("v", 2.0), link).time_s
    with pytest.raises(PlanError, match="byte_cpu_s must be finite and >= 0"):
        plan_pipeline(graph, [node("v")], Link(byte_cpu_s=-1.0))


# Brute force.


@pytest.mark.parametrize("seed", range(150))
def test_matches_brute_force(seed: int) -> None:
    graph, nodes, link, max_parts = random_case(seed)
    expected = brute_force(graph, nodes, link, max_parts)
    if expected is None:
        with pytest.raises(PlanError, match=r"^no feasible plan: "):
            plan_pipeline(graph, nodes, link, max_parts=max_parts)
        return
    plan = plan_pipeline(graph, nodes, link, max_parts=max_parts)
    assert_valid(plan, graph, nodes, link, max_parts)
    best, fewest, least_total = expected
    assert plan.bottleneck_s == pytest.approx(best, rel=REL)
    assert len(plan.stages) == fewest
    assert plan.latency_s >= least_total * (1 - REL)


def test_brute_force_cases_are_mostly_feasible() -> None:
    cases = [random_case(seed) for seed in range(150)]
    feasible = [brute_force(*case) is not None for case in cases]
    assert 100 <= sum(feasible) < 150


@pytest.mark.parametrize("seed", range(20))
def test_many_nodes_fall_back_to_a_fixed_order(seed: int) -> None:
    rng = random.Random(1000 + seed)
    graph = random_graph(rng, rng.randint(1, 3))
    nodes = random_nodes(rng, MAX_EXACT_NODES + rng.randint(1, 2))
    link = Link(bandwidth_bytes_per_s=100.0, latency_s=0.01)
    expected = brute_force(graph, nodes, link)
    if expected is None:
        with pytest.raises(PlanError):
            plan_pipeline(graph, nodes, link)
        return
    plan = plan_pipeline(graph, nodes, link)
    assert_valid(plan, graph, nodes, link)
    assert plan.bottleneck_s >= expected[0] * (1 - REL)


@pytest.mark.parametrize("seed", range(10))
def test_many_equal_nodes_are_still_optimal(seed: int) -> None:
    rng = random.Random(2000 + seed)
    graph = random_graph(rng, rng.randint(4, 8))
    link = Link(bandwidth_bytes_per_s=100.0, latency_s=0.01)
    many = plan_pipeline(graph, [node(f"n{i:02d}") for i in range(12)], link)
    few = plan_pipeline(graph, [node(f"n{i:02d}") for i in range(len(graph.ops))], link)
    assert many.bottleneck_s == pytest.approx(few.bottleneck_s, rel=REL)
    assert len(many.stages) == len(few.stages)


@pytest.mark.parametrize("seed", range(40))
def test_stage_cost_matches_the_reference(seed: int) -> None:
    rng = random.Random(3000 + seed)
    graph = random_graph(rng, rng.randint(1, 9))
    n = len(graph.ops)
    v = node("v", rng.uniform(0.5, 3.0))
    for a in range(n):
        for b in range(a + 1, n + 1):
            stage = stage_cost(graph, a, b, v, FAST_LINK)
            assert stage.send_bytes == ref_send_bytes(graph, a, b)
            assert stage.work == pytest.approx(sum(op.work for op in graph.ops[a:b]))
            assert stage.param_bytes == sum(op.param_bytes for op in graph.ops[a:b])
            assert stage_memory_bytes(graph, a, b) == ref_memory(graph, a, b)


@pytest.mark.parametrize("seed", range(40))
def test_plan_parts_matches_brute_force(seed: int) -> None:
    rng = random.Random(4000 + seed)
    graph = random_graph(rng, rng.randint(1, 8))
    n = len(graph.ops)
    link = Link(bandwidth_bytes_per_s=rng.choice([10.0, 1000.0]), latency_s=0.01)
    parts = rng.randint(1, n)
    cuts = plan_parts(graph, parts, link)
    assert len(cuts) == parts - 1
    assert list(cuts) == sorted(set(cuts))
    assert all(0 < c < n for c in cuts)
    v = node("v")

    def bottleneck(cuts: Sequence[int]) -> float:
        edges = itertools.pairwise((0, *cuts, n))
        return max(stage_cost(graph, a, b, v, link).time_s for a, b in edges)

    best = min(bottleneck(c) for c in itertools.combinations(range(1, n), parts - 1))
    assert bottleneck(cuts) == pytest.approx(best, rel=REL)


# Determinism.


@pytest.mark.parametrize("seed", range(30))
def test_node_order_does_not_change_the_plan(seed: int) -> None:
    graph, nodes, link, max_parts = random_case(seed)
    if brute_force(graph, nodes, link, max_parts) is None:
        return
    plan = plan_pipeline(graph, nodes, link, max_parts=max_parts)
    for shuffle_seed in range(3):
        shuffled = list(nodes)
        random.Random(shuffle_seed).shuffle(shuffled)
        assert plan_pipeline(graph, tuple(shuffled), link, max_parts=max_parts) == plan


def test_equal_nodes_tie_break_by_node_id() -> None:
    graph = chain([1.0] * 4)
    nodes = [node(i) for i in "dcba"]
    plan = plan_pipeline(graph, nodes, FAST_LINK, max_parts=2)
    assert plan == plan_pipeline(
        graph, sorted(nodes, key=lambda v: v.node_id), FAST_LINK, max_parts=2
    )
    assert {s.node_id for s in plan.stages} == {"a", "b"}


# Errors.

GRAPH = chain([1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan_pipeline(GRAPH, [], FAST_LINK), "no nodes to plan on"),
        (lambda: plan_pipeline(CostGraph(ops=()), [node("a")], FAST_LINK), "graph has no ops"),
        (
            lambda: plan_pipeline(GRAPH, [node("a", 0.0)], FAST_LINK),
            "node 'a' has speed 0.0; need a finite value > 0",
        ),
        (
            lambda: stage_cost(GRAPH, 0, 1, node("a", math.inf), FAST_LINK),
            "node 'a' has speed inf; need a finite value > 0",
        ),
        (
            lambda: plan_pipeline(GRAPH, [node("a"), node("b"), node("a", 2.0)], FAST_LINK),
            "duplicate node id 'a'",
        ),
        (
            lambda: plan_pipeline(GRAPH, [node("a")], FAST_LINK, max_parts=0),
            "max_parts must be at least 1, got 0",
        ),
        (
            lambda: plan_pipeline(
                chain([1.0, 1.0], params=[10, 999]),
                [node("a", 1.0, 500), node("b", 1.0, 100)],
                FAST_LINK,
            ),
            (
                "no feasible plan: op 'op1' needs 1001 bytes but the largest node 'a' holds"
                " 500 bytes for parts"
            ),
        ),
        (
            lambda: plan_pipeline(
                chain([1.0] * 3, params=[98] * 3),
                [node("a", 1.0, 100), node("b", 1.0, 100)],
                FAST_LINK,
            ),
            "no feasible plan: the model needs 300 bytes in at least 3 nodes of 100 bytes for"
            " parts (the largest budget less its node's baseline); the cluster has 2",
        ),
        (
            lambda: plan_pipeline(GRAPH, [node("a")], Link(bandwidth_bytes_per_s=0.0)),
            "link bandwidth must be positive, got 0.0",
        ),
        (
            lambda: plan_pipeline(GRAPH, [node("a")], Link(latency_s=-1.0)),
            "link latency must be finite and >= 0, got -1.0",
        ),
        (
            lambda: plan_pipeline(
                CostGraph(ops=(OpCost(name="a", work=-1.0),)), [node("a")], FAST_LINK
            ),
            "op 'a' has work -1.0; need a finite value >= 0",
        ),
        (
            lambda: plan_pipeline(
                CostGraph(
                    ops=GRAPH.ops,
                    tensors=(TensorCost(name="t", producer=1, consumers=(0,), nbytes=1),),
                ),
                [node("a")],
                FAST_LINK,
            ),
            "tensor 't' has consumer 0 outside 2..2",
        ),
        (lambda: plan_parts(GRAPH, 0), "parts must be between 1 and the number of ops 3, got 0"),
        (lambda: plan_parts(GRAPH, 4), "parts must be between 1 and the number of ops 3, got 4"),
        (lambda: narrow_cuts(GRAPH, 4), "parts must be between 1 and the number of ops 3, got 4"),
        (
            lambda: narrow_cuts(GRAPH, 2, balance=-0.1),
            "balance must be finite and >= 0, got -0.1",
        ),
        (lambda: equal_cuts(3, 0), "parts must be between 1 and the number of ops 3, got 0"),
        (lambda: equal_cuts(0, 1), "parts must be between 1 and the number of ops 0, got 1"),
        (
            lambda: stage_cost(GRAPH, 2, 2, node("a"), FAST_LINK),
            "part [2, 2) is not a non-empty range of 3 ops",
        ),
        (lambda: crossing_bytes(GRAPH, 4), "cut 4 is outside 0..3"),
        (
            lambda: boundary_tensors(GRAPH, -1, 2),
            "part [-1, 2) is not a non-empty range of 3 ops",
        ),
    ],
)
def test_plan_errors_name_the_problem(call: Callable[[], object], message: str) -> None:
    with pytest.raises(PlanError) as info:
        call()
    assert str(info.value) == message


def test_memory_split_infeasible_although_the_parameters_fit_in_total() -> None:
    graph = chain([1.0] * 3, params=[60] * 3)
    nodes = [node("a", 1.0, 100), node("b", 1.0, 100)]
    assert len(plan_pipeline(graph, [*nodes, node("c", 1.0, 100)], FAST_LINK).stages) == 3
    with pytest.raises(PlanError) as info:
        plan_pipeline(graph, nodes, FAST_LINK)
    assert str(info.value) == (
        "no feasible plan: the model needs 186 bytes in at least 3 nodes of 100 bytes for"
        " parts (the largest budget less its node's baseline); the cluster has 2"
    )
    with pytest.raises(PlanError, match=r"the cluster has 3, at most 2 parts$"):
        plan_pipeline(graph, [*nodes, node("c", 1.0, 100)], FAST_LINK, max_parts=2)


# Cuts.

SKIP_GRAPH = CostGraph(
    ops=tuple(OpCost(name=f"op{i}", work=1.0) for i in range(4)),
    tensors=(
        TensorCost(name="x", producer=-1, consumers=(0, 2), nbytes=1),
        TensorCost(name="t0", producer=0, consumers=(1, 3), nbytes=10, final=True),
        TensorCost(name="t1", producer=1, consumers=(2,), nbytes=100),
        TensorCost(name="aux", producer=1, nbytes=1000, final=True),
        TensorCost(name="t2", producer=2, consumers=(3,), nbytes=10_000),
        TensorCost(name="y", producer=3, nbytes=100_000, final=True),
    ),
)


@pytest.mark.parametrize(
    ("start", "stop", "inputs", "outputs", "send_bytes"),
    [
        (0, 1, ("x",), ("t0",), 20),
        (1, 3, ("x", "t0"), ("aux", "t2"), 11_000),
        (0, 4, ("x",), ("t0", "aux", "y"), 101_010),
        (3, 4, ("t0", "t2"), ("y",), 100_000),
    ],
)
def test_boundary_tensors_and_send_bytes(
    start: int, stop: int, inputs: tuple[str, ...], outputs: tuple[str, ...], send_bytes: int
) -> None:
    assert boundary_tensors(SKIP_GRAPH, start, stop) == (inputs, outputs)
    assert stage_cost(SKIP_GRAPH, start, stop, node("v"), FAST_LINK).send_bytes == send_bytes


@pytest.mark.parametrize(("cut", "expected"), [(0, 1), (1, 11), (2, 111), (3, 10_010), (4, 0)])
def test_crossing_bytes(cut: int, expected: int) -> None:
    assert crossing_bytes(SKIP_GRAPH, cut) == expected


@pytest.mark.parametrize(
    ("sizes", "balance", "expected"),
    [
        ((100, 100, 5, 100, 100), 0.5, (3,)),
        ((1, 100, 50, 100, 100), 0.5, (3,)),
        ((1, 100, 50, 100, 100), 5.0, (1,)),
        ((7, 7, 7, 7, 7), 0.5, (2,)),
        ((100, 100, 100, 100, 100), 0.0, (3,)),
    ],
)
def test_narrow_cuts_pick_the_narrow_point(
    sizes: tuple[int, ...], balance: float, expected: tuple[int, ...]
) -> None:
    graph = chain([1.0] * 6, sizes=list(sizes))
    assert narrow_cuts(graph, 2, balance=balance) == expected
    assert all(crossing_bytes(graph, c) == sizes[c - 1] for c in expected)


def test_narrow_cuts_three_parts() -> None:
    graph = chain([1.0] * 9, sizes=[50, 50, 3, 50, 50, 2, 50, 50])
    assert narrow_cuts(graph, 3) == (3, 6)


def test_narrow_cuts_relax_an_impossible_balance() -> None:
    graph = chain([10.0, 0.0, 0.0, 0.0], sizes=[9, 5, 7])
    assert narrow_cuts(graph, 2, balance=0.0) == (2,)
    assert narrow_cuts(graph, 4, balance=0.0) == (1, 2, 3)


@pytest.mark.parametrize("seed", range(20))
def test_cut_functions_return_valid_positions(seed: int) -> None:
    rng = random.Random(5000 + seed)
    graph = random_graph(rng, rng.randint(1, 9))
    n = len(graph.ops)
    for parts in range(1, n + 1):
        for cuts in (
            narrow_cuts(graph, parts, balance=rng.choice([0.0, 0.5, 2.0])),
            plan_parts(graph, parts),
            equal_cuts(n, parts),
        ):
            assert len(cuts) == parts - 1
            assert list(cuts) == sorted(set(cuts))
            assert all(0 < c < n for c in cuts)


@pytest.mark.parametrize(
    ("n_ops", "parts", "expected"),
    [(10, 3, (3, 6)), (4, 4, (1, 2, 3)), (5, 1, ()), (5, 2, (2,)), (7, 3, (2, 4))],
)
def test_equal_cuts(n_ops: int, parts: int, expected: tuple[int, ...]) -> None:
    assert equal_cuts(n_ops, parts) == expected


def test_plan_parts_forces_every_part_even_when_fewer_would_do() -> None:
    graph = chain([1.0] * 4, sizes=[10**9] * 3)
    link = Link(bandwidth_bytes_per_s=1.0, latency_s=0.0)
    assert len(plan_pipeline(graph, [node(i) for i in "abc"], link).stages) == 1
    cuts = plan_parts(graph, 3, link)
    assert len(cuts) == 2
    assert plan_parts(chain([1.0] * 4), 2, FAST_LINK) == (2,)
