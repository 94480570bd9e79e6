"""What a plan serves to requests that enter the cluster at one node (their origin).

``plan_cluster`` makes each pipeline the best it can be alone and reports replica 0's
bottleneck and latency. A client, though, hands its requests to one node, and a replica
that does not start there gets each request's inputs over that node's link: on a slow
link, sending a 600 kB image away takes longer than running the whole model at home.
The runtime knows it (``runtime.stages.pick_replica`` keeps a request on the origin's own
replica while waiting for it is shorter than sending the inputs away); this is the same
knowledge as a prediction, for ``plan`` and for the benchmarks that check the planner:

- a single request at an idle cluster runs on the origin's own replica when it has one,
  else goes to replica 0 after its inputs crossed the origin's link;
- under load the origin's replica runs at its own rate, and the other replicas together
  at their rates, but no faster than the origin's link hands them inputs;
- the origin spends CPU on every request it takes in: the link's per-byte CPU for the
  inputs it receives and the answer it returns (and, for a request it sends away, for
  sending its inputs, at both ends); when its own replica ends on it, the answer goes
  straight back to the client rather than over a hop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgenode.errors import PlanError
from edgenode.planning._costs import CostGraph, Link, NodeSpec, StageCost, make_stage, stage_cost
from edgenode.planning.cluster import ClusterPlan, quantize_link, quantize_speed

__all__ = ["Serving", "serving"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Serving:
    """Predicted service of a plan to requests entering at ``origin``."""

    origin: str
    replica_rates: tuple[float, ...]  # requests/s each pipeline runs at (1 / its bottleneck)
    input_bytes: int  # a request's model inputs
    forward_rps: float  # requests/s whose inputs the origin's link can send to other replicas
    throughput_rps: float
    latency_s: float  # one request at an idle cluster, from the origin back to it
    cpu_s: float  # CPU one request costs all nodes together (on the replica it runs on alone)


def serving(
    plan: ClusterPlan, graph: CostGraph, members: Sequence[NodeSpec], link: Link, *, origin: str
) -> Serving:
    """The throughput and latency ``plan`` gives requests that enter at ``origin``; the
    members as given to ``plan_cluster`` (rounded here as there)."""
    specs = {
        m.node_id: NodeSpec(
            node_id=m.node_id,
            speed=quantize_speed(m.speed),
            memory_bytes=m.memory_bytes,
            link_bytes_per_s=quantize_link(m.link_bytes_per_s),
            memory=m.memory,
        )
        for m in members
    }
    if origin not in specs:
        raise PlanError(f"origin {origin!r} is not a member")
    input_bytes = sum(t.nbytes for t in graph.tensors if t.producer < 0)
    answer_bytes = sum(t.nbytes for t in graph.tensors if t.final)
    take_in_s = link.byte_cpu_s * (input_bytes + answer_bytes)  # the origin's, per request
    home = {a.replica for a in plan.assignments if a.node_id == origin and a.start == 0}
    rates: list[float] = []
    latencies: list[float] = []
    cpus: list[float] = []
    for replica in range(plan.replicas):
        stages = [
            _stage(graph, a.start, a.stop, specs[a.node_id], link, home=a.node_id == origin)
            for a in plan.assignments
            if a.replica == replica
        ]
        if replica in home:
            first = stages[0]
            stages[0] = replace(
                first, cpu_s=first.cpu_s + take_in_s, time_s=first.time_s + take_in_s
            )
        bottleneck = max(s.time_s for s in stages)
        rates.append(1 / bottleneck if bottleneck > 0 else math.inf)
        latencies.append(math.fsum(s.time_s for s in stages))
        cpus.append(math.fsum(s.cpu_s for s in stages))
    send_s = input_bytes / specs[origin].bandwidth(link) + (link.latency_s if input_bytes else 0)
    forward = 1 / send_s if send_s > 0 else math.inf
    others = sum(rate for r, rate in enumerate(rates) if r not in home)
    forwarded = min(others, forward)
    # CPU the origin spends on each request it sends away, taken from its own replica
    away_s = take_in_s + 2 * link.byte_cpu_s * input_bytes + link.stage_cpu_s
    own = sum(rates[r] for r in home) * max(0.0, 1 - forwarded * away_s) if home else 0.0
    latency = min(latencies[r] for r in home) if home else send_s + take_in_s + latencies[0]
    cpu = min(cpus[r] for r in home) if home else away_s + cpus[0]
    return Serving(
        origin=origin,
        replica_rates=tuple(rates),
        input_bytes=input_bytes,
        forward_rps=forward,
        throughput_rps=own + forwarded,
        latency_s=latency,
        cpu_s=cpu,
    )


def _stage(
    graph: CostGraph, start: int, stop: int, node: NodeSpec, link: Link, *, home: bool
) -> StageCost:
    """stage_cost, except that a last stage on the origin returns the answer to the client
    itself (in the origin's per-request CPU), not over a hop."""
    cost = stage_cost(graph, start, stop, node, link)
    if not home or stop != len(graph.ops):
        return cost
    answer = sum(t.nbytes for t in graph.tensors if t.final and start <= t.producer < stop)
    return make_stage(
        node, start, stop, cost.work, cost.send_bytes - answer, cost.param_bytes, link
    )
