"""The cluster plan: which member owns which manifest parts, and its digest.

Every node runs ``plan_cluster`` on the same manifest and the same membership and
gets the same plan; nodes then compare ``ClusterPlan.digest`` over gRPC and serve
only a plan all owners agree on. Speeds come from each node's own short benchmark,
so they are rounded to two significant digits first: measurement noise must not
flip a plan between two nodes that see slightly different numbers.

Members the best pipeline leaves out (more nodes than parts, or nodes whose extra hop
would slow it) form further pipelines over the same parts: replicas. Each request runs
on one replica, chosen by its origin; a stage forwards within its own replica.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from edgenode.errors import PlanError
from edgenode.planning._costs import CostGraph, Link, NodeSpec
from edgenode.planning.partition import Plan, plan_pipeline
from edgenode.planning.tiles import TiledPlan, plan_tiles

__all__ = ["Assignment", "ClusterPlan", "plan_cluster", "quantize_speed"]

SPEED_DIGITS = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """A node and the consecutive manifest parts it runs, in one replica pipeline."""

    node_id: str
    start: int
    stop: int
    replica: int = 0

    @property
    def parts(self) -> range:
        """Indices of the manifest parts."""
        return range(self.start, self.stop)


@dataclass(frozen=True, kw_only=True)
class ClusterPlan:
    """Assignments by replica, each in pipeline order; members without a part are idle."""

    manifest_digest: str
    members: tuple[str, ...]
    assignments: tuple[Assignment, ...]
    idle: tuple[str, ...]
    bottleneck_s: float  # of replica 0, the best pipeline
    latency_s: float

    @cached_property
    def digest(self) -> str:
        """sha256 of what nodes must agree on: manifest, members and assignments."""
        canonical = json.dumps(
            {
                "manifest": self.manifest_digest,
                "members": list(self.members),
                "stages": [[a.node_id, a.start, a.stop, a.replica] for a in self.assignments],
            },
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @cached_property
    def replicas(self) -> int:
        """How many pipelines run the whole model."""
        return 1 + max((a.replica for a in self.assignments), default=0)

    def owner(self, part: int, replica: int = 0) -> str:
        """The node running manifest part ``part`` in pipeline ``replica``."""
        for a in self.assignments:
            if a.replica == replica and a.start <= part < a.stop:
                return a.node_id
        raise PlanError(f"part {part} is not in replica {replica} of the plan")

    def replica_of(self, node_id: str) -> int | None:
        """The pipeline ``node_id`` belongs to (None when idle or unknown)."""
        for a in self.assignments:
            if a.node_id == node_id:
                return a.replica
        return None

    def parts_of(self, node_id: str) -> range:
        """The parts ``node_id`` runs (empty when idle or unknown)."""
        for a in self.assignments:
            if a.node_id == node_id:
                return a.parts
        return range(0)


def quantize_speed(speed: float) -> float:
    """``speed`` rounded to SPEED_DIGITS significant digits."""
    return float(f"{speed:.{SPEED_DIGITS}g}")


def quantize_link(bytes_per_s: float) -> float:
    """A measured link bandwidth rounded to the nearest power of two in Mbit/s (1, 2, 4, ...
    1024 ...; 0 stays 0, unknown): measurements of one link vary by some percent, and a plan
    should change only when the link really does (Wi-Fi 30 Mbit/s -> 32, gigabit -> 1024)."""
    if bytes_per_s <= 0:
        return 0.0
    mbit = bytes_per_s * 8 / 1e6
    return 2.0 ** round(math.log2(max(mbit, 1.0))) * 1e6 / 8


def _plan_replica(graph: CostGraph, nodes: Sequence[NodeSpec], link: Link) -> Plan | TiledPlan:
    """One replica: the fastest pipeline, or for a tiled model the fastest spatial plan."""
    if graph.tiles is not None:
        return plan_tiles(graph, nodes, link)
    return plan_pipeline(graph, nodes, link)


def plan_cluster(
    graph: CostGraph, members: Sequence[NodeSpec], link: Link, *, manifest_digest: str
) -> ClusterPlan:
    """The plan over manifest parts (``graph.ops`` are the parts) for these members.

    Replica 0 is the best pipeline over all members (for a tiled model, the plan with
    the lowest latency, ``planning.tiles``); each further replica is the best one over
    the members still left out, until none are left or they cannot hold
    the model (memory), in which case they stay idle.
    """
    if not members:
        raise PlanError("no members to plan for")
    ordered = sorted(members, key=lambda m: m.node_id)
    spare = [
        NodeSpec(
            node_id=m.node_id,
            speed=quantize_speed(m.speed),
            memory_bytes=m.memory_bytes,
            link_bytes_per_s=quantize_link(m.link_bytes_per_s),
            memory=m.memory,
        )
        for m in ordered
    ]
    best = _plan_replica(graph, spare, link)
    assignments: list[Assignment] = []
    plan = best
    while True:
        replica = len({a.replica for a in assignments})
        assignments += [
            Assignment(node_id=s.node_id, start=s.start, stop=s.stop, replica=replica)
            for s in plan.stages
        ]
        busy = {s.node_id for s in plan.stages}
        spare = [n for n in spare if n.node_id not in busy]
        if not spare:
            break
        try:
            plan = _plan_replica(graph, spare, link)
        except PlanError:  # the rest cannot hold the model: they stay idle
            break
    busy = {a.node_id for a in assignments}
    return ClusterPlan(
        manifest_digest=manifest_digest,
        members=tuple(m.node_id for m in ordered),
        assignments=tuple(assignments),
        idle=tuple(m.node_id for m in ordered if m.node_id not in busy),
        bottleneck_s=best.bottleneck_s,
        latency_s=best.latency_s,
    )
