"""Where tensors go under a plan: a node's role (its stage) and who receives its outputs.

Pure functions of the manifest and the plan, so the request path (``requests.py``) keeps
only its state and its I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from edgenode.model.manifest import Manifest
from edgenode.planning import ClusterPlan

__all__ = ["Consumers", "NodeRole", "consumers_of", "pick_replica", "recipients", "role_of"]

Consumers = Mapping[str, tuple[int, ...]]  # tensor name -> indices of the parts reading it


@dataclass(frozen=True, slots=True)
class NodeRole:
    """What one node does under one plan: its parts, what they read from outside, what they send."""

    plan: ClusterPlan
    replica: int
    parts: range
    needs: frozenset[str]  # tensors the range reads from outside it
    sends: tuple[str, ...]  # tensors the range produces for other parts or the origin


def consumers_of(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """For every tensor a part reads, the parts that read it, in order."""
    out: dict[str, list[int]] = {}
    for part in manifest.parts:
        for t in part.inputs:
            out.setdefault(t.name, []).append(part.index)
    return {name: tuple(parts) for name, parts in out.items()}


def role_of(plan: ClusterPlan, node_id: str, manifest: Manifest, consumers: Consumers) -> NodeRole:
    """``node_id``'s parts under ``plan``, what they read from outside, what they send."""
    parts = plan.parts_of(node_id)
    produced = {o.name for i in parts for o in manifest.parts[i].outputs}
    needs = {t.name for i in parts for t in manifest.parts[i].inputs if t.name not in produced}
    sends = tuple(
        o.name
        for i in parts
        for o in manifest.parts[i].outputs
        if o.final or any(c not in parts for c in consumers.get(o.name, ()))
    )
    return NodeRole(
        plan=plan,
        replica=plan.replica_of(node_id) or 0,
        parts=parts,
        needs=frozenset(needs),
        sends=sends,
    )


def recipients(
    plan: ClusterPlan,
    replica: int,
    name: str,
    *,
    consumers: Consumers,
    finals: Iterable[str],
    origin: str,
    producer_parts: range,
) -> list[str]:
    """The nodes of ``replica`` that need tensor ``name`` from a stage of
    ``producer_parts``, sorted: the owners of the other parts reading it, and the
    request's origin for a final output."""
    nodes = {plan.owner(c, replica) for c in consumers.get(name, ()) if c not in producer_parts}
    if name in finals:
        nodes.add(origin)
    return sorted(nodes)


def pick_replica(
    plan: ClusterPlan,
    me: str,
    load: Mapping[int, int],
    avoid: Set[int],
    turn: int,
    part_s: Mapping[int, float],
    send_s: float,
) -> int:
    """The replica a request entering at ``me`` goes to: the one with the fewest attempts in
    flight (``load``, by replica), not in ``avoid``, ties taken in turn. When sending the
    request's inputs away takes ``send_s`` (> 0: ``me`` is on a link slower than the
    cluster's), a replica that starts at ``me`` is taken instead while the wait for it
    (its load times its parts' recent run times ``part_s``) is no longer than that."""
    candidates = [r for r in load if r not in avoid] or list(load)
    here = [a for a in plan.assignments if a.node_id == me and a.start == 0]
    for a in here if send_s > 0 else ():
        wait_s = load[a.replica] * sum(part_s.get(p, 0.0) for p in a.parts)
        if a.replica in candidates and wait_s <= send_s:
            return a.replica
    return min(candidates, key=lambda r: (load[r], (r - turn) % plan.replicas))
