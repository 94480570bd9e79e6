"""Where tensors go under a plan: a node's role (its stage) and who receives its outputs.

Pure functions of the manifest and the plan, so the request path (``requests.py``) keeps
only its state and its I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from edgenode.model.manifest import Manifest, RowSlice
from edgenode.planning import ClusterPlan

__all__ = [
    "Consumers",
    "NodeRole",
    "Segment",
    "consumers_of",
    "pick_replica",
    "recipients",
    "role_of",
]

Consumers = Mapping[str, tuple[int, ...]]  # tensor name -> indices of the parts reading it


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive parts of a node's range that run in one go: they start once ``needs``
    (and what earlier segments made) are there, and ``sends`` leave as soon as they end."""

    parts: range
    needs: frozenset[str]  # tensors from outside the node first read here
    sends: tuple[str, ...]  # tensors made here for other nodes or the origin


@dataclass(frozen=True, slots=True)
class NodeRole:
    """What one node does under one plan: its parts, what they read from outside, what they
    send, and the segments it runs them in (one, except for a tiled model: there a node
    sends a stripe's input rows or its output before running its next part, and starts a
    stripe before a later part's inputs are there)."""

    plan: ClusterPlan
    replica: int
    parts: range
    needs: frozenset[str]  # tensors the range reads from outside it
    sends: tuple[str, ...]  # tensors the range produces for other parts or the origin
    segments: tuple[Segment, ...]


def consumers_of(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """For every tensor a part reads, the parts that read it, in order."""
    out: dict[str, list[int]] = {}
    for part in manifest.parts:
        for t in part.inputs:
            out.setdefault(t.name, []).append(part.index)
    return {name: tuple(parts) for name, parts in out.items()}


def _made_by(manifest: Manifest, index: int, slices: Mapping[str, list[RowSlice]]) -> list[str]:
    """The tensors part ``index`` makes: its outputs and the row slices cut from them."""
    outputs = [o.name for o in manifest.parts[index].outputs]
    return [*outputs, *(s.name for o in outputs for s in slices.get(o, ()))]


def role_of(plan: ClusterPlan, node_id: str, manifest: Manifest, consumers: Consumers) -> NodeRole:
    """``node_id``'s parts under ``plan``, what they read from outside, what they send."""
    parts = plan.parts_of(node_id)
    slices: dict[str, list[RowSlice]] = {}
    for s in manifest.tiles.slices if manifest.tiles is not None else ():
        slices.setdefault(s.source, []).append(s)
    made = {i: _made_by(manifest, i, slices) for i in parts}
    produced = {name for names in made.values() for name in names}
    finals = set(manifest.model.outputs)
    reads = {i: [t.name for t in manifest.parts[i].inputs if t.name not in produced] for i in parts}
    needs = {name for names in reads.values() for name in names}
    sent = {
        name
        for names in made.values()
        for name in names
        if name in finals or any(c not in parts for c in consumers.get(name, ()))
    }
    segments: list[Segment] = []
    if manifest.tiles is None:  # one go: a pipeline stage waits for all, sends at the end
        segments.append(
            Segment(parts, frozenset(needs), tuple(n for i in parts for n in made[i] if n in sent))
        )
    else:
        # Which part makes each tensor (-1: the request's origin, with the model's inputs).
        maker = {t.name: -1 for t in manifest.model.inputs}
        for part in manifest.parts:
            maker.update(dict.fromkeys(_made_by(manifest, part.index, slices), part.index))
        first, awaited, pending = parts.start, set[int](), set[str]()
        for i in parts:
            makers = {maker.get(name, -1) for name in reads[i]}
            if not makers <= awaited and i > first:  # input from a later sender: go on first
                segments.append(_segment(range(first, i), made, sent, pending))
                first = i
            awaited |= makers
            pending |= set(reads[i])
            if any(n in sent for n in made[i]) and i + 1 < parts.stop:
                segments.append(_segment(range(first, i + 1), made, sent, pending))
                first = i + 1
        if first < parts.stop:
            segments.append(_segment(range(first, parts.stop), made, sent, pending))
    return NodeRole(
        plan=plan,
        replica=plan.replica_of(node_id) or 0,
        parts=parts,
        needs=frozenset(needs),
        sends=tuple(n for i in parts for n in made[i] if n in sent),
        segments=tuple(segments),
    )


def _segment(
    parts: range, made: Mapping[int, list[str]], sent: Set[str], pending: set[str]
) -> Segment:
    """A segment of ``parts`` that first reads the outside tensors in ``pending`` (emptied)."""
    needs = frozenset(pending)
    pending.clear()
    return Segment(parts, needs, tuple(n for i in parts for n in made[i] if n in sent))


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
