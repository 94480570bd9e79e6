"""The memory model: what a node needs for parts, per backend, in the tables and one by one."""

from __future__ import annotations

import dataclasses
import random

import pytest

from edgenode.errors import PlanError
from edgenode.planning import (
    BASELINE_BYTES,
    MEMORY_MODELS,
    PLAIN,
    CostGraph,
    Link,
    MemoryModel,
    OpCost,
    TensorCost,
    parts_memory_bytes,
    plan_pipeline,
    room_bytes,
    stage_memory_bytes,
)
from edgenode.planning._costs import build_tables
from tests.planning.test_partition import node, random_graph, ref_memory, ref_send_bytes

MIB = 2**20


def ref_received(graph: CostGraph, held: set[int]) -> int:
    """Bytes of the tensors made outside ``held`` (model inputs too) and read inside it."""
    return sum(
        t.nbytes
        for t in graph.tensors
        if t.producer not in held and any(c in held for c in t.consumers)
    )


def ref_need(graph: CostGraph, a: int, b: int) -> int:
    """The memory model's sum, written from its definition."""
    m = graph.memory

    def held(op: int) -> int:
        return sum(t.nbytes for t in graph.tensors if t.producer == op or op in t.consumers)

    each = [max(graph.ops[i].activation_bytes, held(i)) for i in range(a, b)]
    layer = sum(each) if m.activations_add_up else max(each)
    moved = ref_send_bytes(graph, a, b) + ref_received(graph, set(range(a, b)))
    params = sum(op.param_bytes for op in graph.ops[a:b])
    heaviest = max(op.largest_weight_bytes or op.param_bytes for op in graph.ops[a:b])
    return int(
        m.runtime_bytes
        + m.weights * params
        + m.loading * heaviest
        + m.activations * layer
        + m.buffers * moved
    )


def with_model(rng: random.Random, graph: CostGraph) -> CostGraph:
    """The graph with a random memory model and random layer working sets inside its ops."""
    model = MemoryModel(
        backend="test",
        runtime_bytes=rng.randint(0, 50),
        weights=rng.uniform(1.0, 3.0),
        activations=rng.uniform(1.0, 4.0),
        buffers=rng.uniform(0.0, 3.0),
        loading=rng.choice([0.0, rng.uniform(0.0, 2.0)]),
        activations_add_up=rng.random() < 0.5,
    )
    ops = tuple(
        dataclasses.replace(
            op,
            activation_bytes=rng.choice([0, rng.randint(0, 300)]),
            largest_weight_bytes=rng.choice([0, rng.randint(0, op.param_bytes)]),
        )
        for op in graph.ops
    )
    return dataclasses.replace(graph, ops=ops, memory=model)


@pytest.mark.parametrize("seed", range(40))
def test_the_tables_and_each_part_give_the_models_sum(seed: int) -> None:
    rng = random.Random(7000 + seed)
    graph = with_model(rng, random_graph(rng, rng.randint(1, 9)))
    tables = build_tables(graph)
    n = len(graph.ops)
    for a in range(n):
        for b in range(a + 1, n + 1):
            want = ref_need(graph, a, b)
            assert stage_memory_bytes(graph, a, b) == want
            assert int(tables.memory_bytes()[a, b]) == want
            assert parts_memory_bytes(graph, range(a, b)) == want


@pytest.mark.parametrize("seed", range(20))
def test_the_plain_model_is_parameters_plus_the_largest_working_set(seed: int) -> None:
    rng = random.Random(8000 + seed)
    graph = random_graph(rng, rng.randint(1, 9))
    assert graph.memory is PLAIN
    n = len(graph.ops)
    for a in range(n):
        for b in range(a + 1, n + 1):
            assert stage_memory_bytes(graph, a, b) == ref_memory(graph, a, b)


def line(params: list[int], sizes: list[int]) -> CostGraph:
    """x -> op0 -> t0 -> op1 -> ... -> y (final)."""
    n = len(params)
    tensors = [TensorCost(name="x", producer=-1, consumers=(0,), nbytes=sizes[0])]
    tensors += [
        TensorCost(name=f"t{i}", producer=i, consumers=(i + 1,), nbytes=sizes[i + 1])
        for i in range(n - 1)
    ]
    tensors.append(TensorCost(name="y", producer=n - 1, nbytes=sizes[n], final=True))
    ops = tuple(OpCost(name=f"op{i}", work=1.0, param_bytes=p) for i, p in enumerate(params))
    return CostGraph(ops=ops, tensors=tuple(tensors), memory=MEMORY_MODELS["litert"])


def test_a_set_of_parts_counts_what_it_receives_and_sends_and_the_runtime_once() -> None:
    graph = line([100 * MIB, 10 * MIB, 50 * MIB], [4 * MIB, 2 * MIB, 1 * MIB, 8])
    m = graph.memory
    # parts 0 and 2 (an old plan's and a new one's): x in, t0 out; t1 in, y out
    moved = 4 * MIB + 2 * MIB + 1 * MIB + 8
    layers = (4 * MIB + 2 * MIB) + (1 * MIB + 8)  # LiteRT: each part's arena, added up
    want = int(m.runtime_bytes + m.weights * 150 * MIB + m.activations * layers + m.buffers * moved)
    assert parts_memory_bytes(graph, [2, 0, 0]) == want
    assert parts_memory_bytes(graph, []) == 0
    with pytest.raises(PlanError, match="not all among the 3 ops"):
        parts_memory_bytes(graph, [0, 3])


def test_the_planner_gives_no_node_more_than_its_room_by_the_model() -> None:
    graph = line([100 * MIB, 100 * MIB, 100 * MIB], [MIB, MIB, MIB, 4000])
    one = stage_memory_bytes(graph, 0, 1)
    room = room_bytes(one + 120 * MIB, 120 * MIB)  # a budget, less a baseline
    assert room == one > 2 * 100 * MIB  # the raw parameters of two parts would fit
    assert stage_memory_bytes(graph, 0, 2) > room  # the model's 2.1x weights do not
    plan = plan_pipeline(graph, [node(n, 1.0, room) for n in "abc"], Link())
    assert [(s.start, s.stop) for s in plan.stages] == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(PlanError, match=r"at least 3 nodes .* the cluster has 2"):
        plan_pipeline(graph, [node(n, 1.0, room) for n in "ab"], Link())


def test_backends_and_their_baselines() -> None:
    assert set(MEMORY_MODELS) == set(BASELINE_BYTES) == {"keras", "litert"}
    for backend, model in MEMORY_MODELS.items():
        assert model.backend == backend and model.weights + model.loading >= 2.0  # never 1x
    assert room_bytes(100, 300) == 0  # a budget below the baseline leaves nothing


def test_each_node_is_planned_with_its_own_backends_model() -> None:
    """A LiteRT node and a Keras node with the same room: only the LiteRT node holds the
    part (Keras loads a 100 MiB tensor through copies of it, LiteRT keeps 2.12x its
    weights), whatever the graph's own model."""
    graph = dataclasses.replace(line([100 * MIB], [MIB, 4000]), memory=PLAIN)
    litert, keras = MEMORY_MODELS["litert"], MEMORY_MODELS["keras"]
    room = stage_memory_bytes(graph, 0, 1, litert)
    assert stage_memory_bytes(graph, 0, 1, keras) > room > stage_memory_bytes(graph, 0, 1)
    fast_keras = dataclasses.replace(node("a", 5.0, room), memory=keras)
    slow_litert = dataclasses.replace(node("b", 1.0, room), memory=litert)
    plan = plan_pipeline(graph, [fast_keras, slow_litert], Link())
    assert [s.node_id for s in plan.stages] == ["b"]  # the faster node cannot hold it
    tables = build_tables(graph)
    assert int(tables.memory_bytes(fast_keras)[0, 1]) == stage_memory_bytes(graph, 0, 1, keras)
    with pytest.raises(PlanError, match=r"holds .* for parts"):
        plan_pipeline(graph, [fast_keras], Link())
