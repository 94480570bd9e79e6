"""Spatial plans: which nodes run the stripes of a tiled model, for the lowest latency.

A tiled graph (``CostGraph.tiles``, from ``edgenode split --spatial``) has ops before its
stripes, the stripes (consecutive, each some rows of one local region, independent of
each other) and, from the gather op on, the ops after them. A plan gives each of ``k``
nodes a contiguous run of ops as usual: the first node also runs the ops before the
stripes (it is where requests enter), the last also the gather and what follows, and
the stripes are spread over the ``k`` nodes, so they run at once.

Pipeline costs (``_costs``) add a plan's stages up; here a request's time is what
:func:`schedule` simulates: each node runs its ops in order as soon as their inputs are
there, a tensor reaches another node after the hop (latency, bytes over the sender's
bandwidth, and the CPU both ends spend per byte; a node's sends queue on its link),
and the request ends when its final outputs are back at the node it entered. Every
``k`` from 1 (the whole model on the fastest node, stripes one after the other) to the
stripe count and every way of spreading the stripes over the ``k`` fastest nodes is
tried; the fastest plan wins, ties going to fewer nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from edgenode.errors import PlanError
from edgenode.planning._costs import (
    CostGraph,
    Link,
    NodeSpec,
    StageCost,
    check_graph,
    check_link,
    check_speed,
    stage_cost,
    stage_memory_bytes,
)

__all__ = ["TiledPlan", "plan_tiles", "schedule"]

_TIE_REL_TOL = 1e-9


def schedule(graph: CostGraph, stages: Sequence[tuple[NodeSpec, int, int]], link: Link) -> float:
    """Seconds from a request entering the first stage's node until its final outputs are
    back there, when each ``(node, start, stop)`` runs ops ``[start, stop)``."""
    owner: dict[int, NodeSpec] = {}
    for node, first, stop in stages:
        owner.update(dict.fromkeys(range(first, stop), node))
    if sorted(owner) != list(range(len(graph.ops))):
        raise PlanError("the stages do not cover every op exactly once")
    origin = stages[0][0]
    ready: dict[tuple[str, str], float] = {}  # (tensor, node id) -> when it is there
    link_free: dict[str, float] = {}
    node_free: dict[str, float] = {}
    by_producer: dict[int, list[int]] = {}
    for i, t in enumerate(graph.tensors):
        by_producer.setdefault(t.producer, []).append(i)

    def send(index: int, sender: NodeSpec, at: float) -> None:
        t = graph.tensors[index]
        targets = {owner[c].node_id for c in t.consumers}
        if t.final:
            targets.add(origin.node_id)
        for target in sorted(targets):
            if target == sender.node_id:
                ready[(t.name, target)] = at
                continue
            begin = max(at, link_free.get(sender.node_id, 0.0))
            link_free[sender.node_id] = begin + t.nbytes / sender.bandwidth(link)
            cpu = 2 * link.byte_cpu_s * t.nbytes
            ready[(t.name, target)] = link_free[sender.node_id] + link.latency_s + cpu

    for index in by_producer.get(-1, ()):
        send(index, origin, 0.0)
    for op in range(len(graph.ops)):
        node = owner[op]
        inputs = [ready[(t.name, node.node_id)] for t in graph.tensors if op in t.consumers]
        if node.node_id not in node_free:
            node_free[node.node_id] = link.stage_cpu_s
        begin = max([node_free[node.node_id], *inputs])
        end = begin + graph.ops[op].work / node.speed
        node_free[node.node_id] = end
        for index in by_producer.get(op, ()):
            send(index, node, end)
    finals = [ready[(t.name, origin.node_id)] for t in graph.tensors if t.final]
    return max(finals, default=max(node_free.values()))


@dataclass(frozen=True, slots=True)
class TiledPlan:
    """The chosen stages in op order and the simulated latency of one request."""

    stages: tuple[StageCost, ...]
    latency_s: float

    @property
    def bottleneck_s(self) -> float:
        """The slowest stage's pipeline cost (for throughput, as ``partition.Plan``)."""
        return max(s.time_s for s in self.stages)


def _spreads(stripes: int, nodes: int) -> Iterator[tuple[int, ...]]:
    """Every way to give ``nodes`` nodes consecutive runs of at least one stripe each."""
    for cuts in itertools.combinations(range(1, stripes), nodes - 1):
        bounds = (0, *cuts, stripes)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def plan_tiles(graph: CostGraph, nodes: Sequence[NodeSpec], link: Link) -> TiledPlan:
    """The fastest plan of a tiled graph over ``nodes`` (see the module's doc); PlanError
    when no node, or no set of nodes, can hold its share."""
    check_graph(graph)
    check_link(link)
    tiles = graph.tiles
    if tiles is None:
        raise PlanError("the graph has no stripes to plan")
    if not nodes:
        raise PlanError("no nodes to plan on")
    for node in nodes:
        check_speed(node)
    ordered = sorted(nodes, key=lambda v: (-v.speed, v.node_id))
    first, count, n = tiles.stripes[0], len(tiles.stripes), len(graph.ops)
    best: tuple[float, int, list[tuple[NodeSpec, int, int]]] | None = None
    for k in range(1, min(count, len(ordered)) + 1):
        chosen = ordered[:k]
        for spread in _spreads(count, k):
            ends = itertools.accumulate(spread[:-1], initial=first)
            bounds = [0, *list(ends)[1:], n]
            stages = [(v, a, b) for v, a, b in zip(chosen, bounds[:-1], bounds[1:], strict=True)]
            if any(
                stage_memory_bytes(graph, a, b, v.memory) > v.memory_bytes for v, a, b in stages
            ):
                continue
            latency = schedule(graph, stages, link)
            if best is None or latency < best[0] * (1 - _TIE_REL_TOL):
                best = (latency, k, stages)
    if best is None:
        raise PlanError(
            f"no feasible plan: no {min(count, len(ordered))} or fewer of the {len(nodes)} "
            "nodes can hold the stripes and the parts around them"
        )
    latency, _, stages = best
    return TiledPlan(tuple(stage_cost(graph, a, b, v, link) for v, a, b in stages), latency)
