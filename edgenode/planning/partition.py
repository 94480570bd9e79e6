"""Pipeline planning: which nodes run which contiguous parts, minimising the slowest stage.

plan_pipeline finds the exact optimal bottleneck T* by binary search over the bit patterns of
non-negative doubles (whose integer order is their numeric order, so at most 64 steps and the
result is exactly the cost of some stage). Feasibility of a bottleneck T is a DP over subsets of
nodes: reach[S] = max over v in S of furthest_v(reach[S - {v}], T), where furthest_v(a, T) is the
largest b with cost_v(a, b) <= T. Because cost_v(a, b) never grows with a, furthest_v is
non-decreasing in a and the greedy reach is exact. With more than MAX_EXACT_NODES nodes the node
order is fixed instead (speed descending, then node_id) and the DP picks a subsequence of it, so
the result is optimal for that order only. Among plans within TIE_REL_TOL of T*, the plan has the
fewest stages (with the fastest such set of nodes), then, for that node order, the cuts minimise
the sum of stage times. The cost model is described in edgenode.planning._costs.

Time and memory are O(k n^2) for n ops and k distinct (speed, memory) node kinds.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edgenode.errors import PlanError
from edgenode.planning._costs import (
    CostGraph,
    CostTables,
    Link,
    NodeSpec,
    StageCost,
    build_tables,
    check_graph,
    check_link,
    check_speed,
    make_stage,
    node_link,
    work_prefix,
)
from edgenode.planning.memory import MemoryModel

__all__ = [
    "MAX_EXACT_NODES",
    "TIE_REL_TOL",
    "Plan",
    "equal_cuts",
    "narrow_cuts",
    "plan_parts",
    "plan_pipeline",
]

MAX_EXACT_NODES = 10  # beyond this many nodes the node order is fixed, not searched
TIE_REL_TOL = 1e-9  # plans within this relative bottleneck count as optimal
_MAX_MEMORY_BYTES = int(np.iinfo(np.int64).max) - 1  # below the tables' "cannot fit" mark
_FIRST_RELAXED_BALANCE = 0.25
_DEFAULT_LINK = node_link()


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Stages in pipeline order, their slowest and summed times, and the best single node."""

    stages: tuple[StageCost, ...]
    bottleneck_s: float
    latency_s: float
    single_node_id: str  # "" when no node can hold the whole model
    single_node_s: float  # inf when no node can hold the whole model

    @property
    def slower_than_single_node(self) -> bool:
        """True when one request takes longer through the pipeline than on the best node."""
        return self.latency_s > self.single_node_s

    @property
    def speedup(self) -> float:
        """Throughput relative to the best single node: single_node_s / bottleneck_s."""
        if self.bottleneck_s > 0:
            return self.single_node_s / self.bottleneck_s
        return 1.0 if self.single_node_s == 0 else math.inf


def _check_nodes(nodes: Sequence[NodeSpec]) -> tuple[NodeSpec, ...]:
    if not nodes:
        raise PlanError("no nodes to plan on")
    ordered = tuple(sorted(nodes, key=lambda v: v.node_id))
    for before, node in itertools.pairwise(ordered):
        if before.node_id == node.node_id:
            raise PlanError(f"duplicate node id {node.node_id!r}")
    for node in ordered:
        check_speed(node)
        if node.memory_bytes < 0:
            raise PlanError(f"node {node.node_id!r} has negative memory_bytes {node.memory_bytes}")
        if not (math.isfinite(node.link_bytes_per_s) and node.link_bytes_per_s >= 0):
            raise PlanError(
                f"node {node.node_id!r} has link_bytes_per_s {node.link_bytes_per_s!r}: "
                "finite and >= 0 (0: the cluster's link)"
            )
    return ordered


def _check_parts(n_ops: int, parts: int) -> None:
    if not 1 <= parts <= n_ops:
        raise PlanError(f"parts must be between 1 and the number of ops {n_ops}, got {parts}")


def _flipped_costs(
    tables: CostTables, link: Link, kinds: Sequence[NodeSpec]
) -> list[NDArray[np.float64]]:
    # cost[a, j] = time of part [a, n - j) on a node of each kind; inf where empty or won't fit.
    # Stops run backwards so that the furthest stop within a limit is a row's first match.
    prefix = tables.work_prefix
    work = prefix[None, ::-1] - prefix[:, None]
    send = tables.send_bytes[:, ::-1]
    hops = np.where(send > 0, link.latency_s, 0.0)
    overhead = link.stage_cpu_s + 2 * link.byte_cpu_s * send
    comms: dict[float, NDArray[np.float64]] = {}
    costs = []
    for kind in kinds:
        bandwidth = kind.bandwidth(link)
        if bandwidth not in comms:
            comms[bandwidth] = send / bandwidth
            comms[bandwidth] += hops
        speed, memory_bytes = kind.speed, kind.memory_bytes
        cost = work / speed
        cost += overhead
        cost += comms[bandwidth]
        memory = tables.memory_bytes(kind)[:, ::-1]
        np.putmask(cost, memory > min(memory_bytes, _MAX_MEMORY_BYTES), np.inf)
        costs.append(cost)
    return costs


class _Furthest:
    """Largest stop b with cost(start, b) <= limit (start itself if none), per start on demand."""

    __slots__ = ("_flipped", "_limit", "known")

    def __init__(self, flipped: NDArray[np.float64], limit: float) -> None:
        self._flipped = flipped
        self._limit = limit
        self.known = [-1] * flipped.shape[0]  # -1: not computed yet

    def __call__(self, start: int) -> int:
        stop = self.known[start]
        if stop < 0:
            ok = self._flipped[start] <= self._limit
            first = int(ok.argmax())
            stop = self.known[start] = len(self.known) - 1 - first if ok[first] else start
        return stop


def _subset_reach(
    furthest: Sequence[_Furthest], max_parts: int, goal: int | None = None
) -> tuple[list[int], list[int]]:
    # reach[S]: furthest position the nodes in bit set S cover; last[S]: the node that ends there.
    # With a goal, stops at the first subset that reaches it (enough to answer "feasible?").
    size = 1 << len(furthest)
    reach = [0] * size
    last = [-1] * size
    known = [f.known for f in furthest]
    for subset in range(1, size):
        if subset.bit_count() > max_parts:
            continue
        best, best_v, rest = -1, -1, subset
        while rest:
            bit = rest & -rest
            rest ^= bit
            v = bit.bit_length() - 1
            start = reach[subset ^ bit]
            here = known[v][start]
            if here < 0:
                here = furthest[v](start)
            if here > best:
                best, best_v = here, v
        reach[subset], last[subset] = best, best_v
        if best == goal:
            break
    return reach, last


def _ordered_reach(furthest: Sequence[_Furthest], max_parts: int) -> list[list[int]]:
    # rows[i][j]: furthest position j stages reach using a subsequence of the first i nodes.
    width = min(len(furthest), max_parts) + 1
    rows = [[0] + [-1] * (width - 1)]
    for ahead in furthest:
        before = rows[-1]
        row = list(before)
        for j in range(1, width):
            if before[j - 1] >= 0:
                row[j] = max(row[j], ahead(before[j - 1]))
        rows.append(row)
    return rows


def _exact_order(
    furthest: Sequence[_Furthest], max_parts: int, n: int, speeds: Sequence[float]
) -> list[int]:
    reach, last = _subset_reach(furthest, max_parts)
    done = [s for s in range(1, len(reach)) if reach[s] == n]
    fewest = min(s.bit_count() for s in done)
    members = {s: [v for v in range(len(speeds)) if s >> v & 1] for s in done}
    subset = min(
        (s for s in done if s.bit_count() == fewest),
        key=lambda s: (-sum(speeds[v] for v in members[s]), members[s]),
    )
    order = []
    while subset:
        order.append(last[subset])
        subset ^= 1 << last[subset]
    return order[::-1]


def _fixed_order(furthest: Sequence[_Furthest], max_parts: int, n: int) -> list[int]:
    rows = _ordered_reach(furthest, max_parts)
    j = rows[-1].index(n)
    order = []
    for i in range(len(furthest), 0, -1):
        if j > 0 and rows[i][j] != rows[i - 1][j]:
            order.append(i - 1)
            j -= 1
    return order[::-1]


def _min_latency_bounds(costs: Sequence[NDArray[np.float64]], limit: float) -> list[int]:
    # Cuts minimising the summed stage times with one non-empty stage per cost, each <= limit.
    size = costs[0].shape[0]
    columns = np.arange(size)
    total = np.full(size, np.inf)
    total[0] = 0.0
    choices = []
    for cost in costs:
        options = total[:, None] + np.where(cost <= limit, cost, np.inf)
        choice = np.argmin(options, axis=0)
        total = options[choice, columns]
        choices.append(choice)
    bounds = [size - 1]
    for choice in reversed(choices):
        bounds.append(int(choice[bounds[-1]]))
    return bounds[::-1]


def _bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", x))[0])


def _from_bits(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", bits))[0])


def _smallest_feasible(feasible: Callable[[float], bool], high: float) -> float:
    # Non-negative doubles sort like their bit patterns: bisect those, exactly, in <= 64 steps.
    low_bits, high_bits = -1, _bits(high)
    while high_bits - low_bits > 1:
        mid = (low_bits + high_bits) // 2
        if feasible(_from_bits(mid)):
            high_bits = mid
        else:
            low_bits = mid
    return _from_bits(high_bits)


def _no_plan(
    graph: CostGraph, tables: CostTables, nodes: Sequence[NodeSpec], max_parts: int
) -> PlanError:
    largest = max(nodes, key=lambda v: v.memory_bytes)
    budget = largest.memory_bytes
    memory = tables.memory_bytes(largest)
    needs = [int(memory[k, k + 1]) for k in range(tables.n)]
    worst = max(range(tables.n), key=lambda k: needs[k])
    if needs[worst] > budget:
        return PlanError(
            f"no feasible plan: op {graph.ops[worst].name!r} needs {_size(needs[worst])}"
            f" but the largest node {largest.node_id!r} holds {_size(budget)} for parts"
        )
    # Fewest parts that each fit the largest budget: from each start, the furthest stop
    # that fits (a part's need never shrinks as it grows, so this greedy count is the least).
    count, need, start = 0, 0, 0
    while start < tables.n:
        stop = start + 1
        while stop < tables.n and memory[start, stop + 1] <= budget:
            stop += 1
        count, need, start = count + 1, need + int(memory[start, stop]), stop
    have = str(len(nodes))
    if max_parts < len(nodes):
        have += f", at most {max_parts} part{'' if max_parts == 1 else 's'}"
    return PlanError(
        f"no feasible plan: the model needs {_size(need)} in at least {count} nodes of"
        f" {_size(budget)} for parts (the largest budget less its node's baseline); the"
        f" cluster has {have}"
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _table_stage(
    tables: CostTables, node: NodeSpec, start: int, stop: int, link: Link
) -> StageCost:
    work = float(tables.work_prefix[stop] - tables.work_prefix[start])
    params = int(tables.param_prefix[stop] - tables.param_prefix[start])
    send = int(tables.send_bytes[start, stop])
    return make_stage(node, start, stop, work, send, params, link)


def plan_pipeline(
    graph: CostGraph, nodes: Sequence[NodeSpec], link: Link, *, max_parts: int | None = None
) -> Plan:
    """Optimal pipeline over node subsets, orders and cuts, with at most max_parts stages."""
    check_graph(graph)
    check_link(link)
    ordered = _check_nodes(nodes)
    if max_parts is not None and max_parts < 1:
        raise PlanError(f"max_parts must be at least 1, got {max_parts}")
    parts = len(ordered) if max_parts is None else min(max_parts, len(ordered))
    tables = build_tables(graph)
    n = tables.n
    kinds: dict[tuple[float, int, float, MemoryModel | None], int] = {}
    specs: list[NodeSpec] = []
    kind_of = []
    for v in ordered:
        key = (v.speed, v.memory_bytes, v.bandwidth(link), v.memory)
        if key not in kinds:
            kinds[key] = len(kinds)
            specs.append(v)
        kind_of.append(kinds[key])
    flipped = _flipped_costs(tables, link, specs)
    exact = len(ordered) <= MAX_EXACT_NODES
    seq = list(range(len(ordered)))
    if not exact:
        seq.sort(key=lambda i: (-ordered[i].speed, i))

    def furthest(limit: float) -> list[_Furthest]:
        per_kind = [_Furthest(cost, limit) for cost in flipped]
        return [per_kind[kind_of[i]] for i in seq]

    def feasible(limit: float) -> bool:
        if exact:
            return n in _subset_reach(furthest(limit), parts, goal=n)[0]
        return n in _ordered_reach(furthest(limit), parts)[-1]

    high = max(float(np.max(cost, where=np.isfinite(cost), initial=0.0)) for cost in flipped)
    if not feasible(high):
        raise _no_plan(graph, tables, ordered, parts)
    limit = _smallest_feasible(feasible, high) * (1.0 + TIE_REL_TOL)
    if exact:
        picked = _exact_order(furthest(limit), parts, n, [v.speed for v in ordered])
    else:
        picked = _fixed_order(furthest(limit), parts, n)
    chain = [seq[i] for i in picked]
    bounds = _min_latency_bounds([flipped[kind_of[i]][:, ::-1] for i in chain], limit)
    stages = tuple(
        _table_stage(tables, ordered[i], a, b, link)
        for i, a, b in zip(chain, bounds[:-1], bounds[1:], strict=True)
    )
    single_id, single_s = "", math.inf
    for node in ordered:
        if int(tables.memory_bytes(node)[0, n]) <= node.memory_bytes:
            time_s = _table_stage(tables, node, 0, n, link).time_s
            if time_s < single_s:
                single_id, single_s = node.node_id, time_s
    return Plan(
        stages=stages,
        bottleneck_s=max(s.time_s for s in stages),
        latency_s=math.fsum(s.time_s for s in stages),
        single_node_id=single_id,
        single_node_s=single_s,
    )


def plan_parts(graph: CostGraph, parts: int, link: Link = _DEFAULT_LINK) -> tuple[int, ...]:
    """Cut positions for exactly `parts` non-empty stages on equal nodes of unlimited memory."""
    check_graph(graph)
    check_link(link)
    _check_parts(len(graph.ops), parts)
    tables = build_tables(graph)
    unit = NodeSpec(node_id="unit", speed=1.0, memory_bytes=_MAX_MEMORY_BYTES)
    cost = _flipped_costs(tables, link, [unit])[0][:, ::-1]
    # Equal nodes make the subset search moot; bottleneck[b] is the best for [0, b) in j parts.
    bottleneck = cost[0]
    for _ in range(parts - 1):
        bottleneck = np.min(np.maximum(bottleneck[:, None], cost), axis=0)
    limit = float(bottleneck[-1]) * (1.0 + TIE_REL_TOL)
    return tuple(_min_latency_bounds([cost] * parts, limit)[1:-1])


def _narrowest(ok: NDArray[np.bool_], crossing: NDArray[np.float64], parts: int) -> list[int]:
    # least[a]: fewest crossing bytes splitting [a, n) into j allowed parts; earliest cuts win.
    size = ok.shape[0]
    rows = np.arange(size)
    least = np.where(ok[:, -1], 0.0, np.inf)
    choices = []
    for _ in range(parts - 1):
        options = np.where(ok, (crossing + least)[None, :], np.inf)
        choice = np.argmin(options, axis=1)
        least = options[rows, choice]
        choices.append(choice)
    if not math.isfinite(least[0]):
        return []
    cuts = [0]
    for choice in reversed(choices):
        cuts.append(int(choice[cuts[-1]]))
    return cuts


def narrow_cuts(graph: CostGraph, parts: int, *, balance: float = 0.5) -> tuple[int, ...]:
    """Cuts with the fewest crossing bytes whose parts each do (1 +- balance) x average work."""
    check_graph(graph)
    n = len(graph.ops)
    _check_parts(n, parts)
    if not (math.isfinite(balance) and balance >= 0):
        raise PlanError(f"balance must be finite and >= 0, got {balance!r}")
    step = np.zeros(n + 2, dtype=np.int64)
    for t in graph.tensors:
        last = max(t.consumers, default=-1)
        if last > t.producer:
            step[t.producer + 1] += t.nbytes
            step[last + 1] -= t.nbytes
    crossing = np.cumsum(step)[: n + 1].astype(np.float64)
    prefix = work_prefix(graph)
    work = prefix[None, :] - prefix[:, None]
    nonempty = np.triu(np.ones((n + 1, n + 1), dtype=np.bool_), k=1)
    average = prefix[-1] / parts
    slack = TIE_REL_TOL * prefix[-1]
    # Once balance >= parts every non-empty part is allowed, so the loop ends.
    while True:
        low, high = (1 - balance) * average - slack, (1 + balance) * average + slack
        cuts = _narrowest(nonempty & (work >= low) & (work <= high), crossing, parts)
        if cuts:
            return tuple(cuts[1:])
        balance = max(2 * balance, _FIRST_RELAXED_BALANCE)


def equal_cuts(n_ops: int, parts: int) -> tuple[int, ...]:
    """Cut positions splitting n_ops ops into parts of equal count (later parts take extras)."""
    _check_parts(n_ops, parts)
    return tuple(i * n_ops // parts for i in range(1, parts))
