"""Where tensors go under a plan: a node's role (its stage) and who receives its outputs.

Pure functions of the manifest and the plan, so the request path (``requests.py``) keeps
only its state and its I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgenode.model.manifest import Manifest
from edgenode.planning import ClusterPlan

__all__ = ["Consumers", "NodeRole", "consumers_of", "recipients", "role_of"]

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
