"""The cluster as one node sees it, and when to re-plan after it changes. Pure: no I/O, no clock.

Every node orders members by node id, so all nodes that see the same records feed the planner
the same input and compute the same plan.

Liveness comes from outside (the gRPC layer calls mark_dead when streams or health checks fail)
because a killed node's mDNS record lingers for many minutes. A peer marked dead stays out while
its record keeps the same incarnation; a record with another incarnation is a new run of that
node and joins again. revive() undoes a mark_dead when the same run turns out to be alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from edgenode.errors import UsageError
from edgenode.mesh._peer import NodeId, PeerEvent, PeerEventKind, PeerInfo
from edgenode.planning import MEMORY_MODELS, NodeSpec, room_bytes

__all__ = ["REPLAN_MAX_DELAY_S", "REPLAN_QUIET_S", "Debounce", "Membership", "PeerChange",
           "peer_changes"]  # fmt: skip

REPLAN_QUIET_S = 0.15  # re-plan once membership has been stable this long...
REPLAN_MAX_DELAY_S = 0.6  # ...but never later than this after the first change


def _find(peers: tuple[PeerInfo, ...], node_id: NodeId) -> PeerInfo | None:
    return next((p for p in peers if p.node_id == node_id), None)


def _without(peers: tuple[PeerInfo, ...], node_id: NodeId) -> tuple[PeerInfo, ...]:
    return tuple(p for p in peers if p.node_id != node_id)


def _with(peers: tuple[PeerInfo, ...], info: PeerInfo) -> tuple[PeerInfo, ...]:
    return tuple(sorted((*_without(peers, info.node_id), info), key=lambda p: p.node_id))


def _check_sorted(what: str, peers: tuple[PeerInfo, ...]) -> None:
    ids = [p.node_id for p in peers]
    if ids != sorted(set(ids)):
        raise UsageError(f"{what} must be sorted by node id without duplicates, got {ids}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """This node plus the live compatible peers it knows, and the peers it was told are dead."""

    local: PeerInfo
    alive: tuple[PeerInfo, ...] = ()  # peers, sorted by node id, never `local`
    dead: tuple[PeerInfo, ...] = ()  # last records of peers marked dead, sorted by node id

    def __post_init__(self) -> None:
        _check_sorted("alive", self.alive)
        _check_sorted("dead", self.dead)
        alive_ids = {p.node_id for p in self.alive}
        if self.local.node_id in alive_ids | {p.node_id for p in self.dead}:
            raise UsageError(f"local node {self.local.node_id!r} listed among its peers")
        if alive_ids & {p.node_id for p in self.dead}:
            raise UsageError("a peer cannot be both alive and dead")

    @classmethod
    def of(cls, local: PeerInfo, peers: Iterable[PeerInfo] = ()) -> Membership:
        """A membership of `local` and `peers` (in any order; `local`'s id is skipped)."""
        alive: tuple[PeerInfo, ...] = ()
        for peer in peers:
            if peer.node_id != local.node_id:
                alive = _with(alive, peer)
        return cls(local=local, alive=alive)

    @property
    def members(self) -> tuple[PeerInfo, ...]:
        """Self and the live peers, sorted by node id: the planner's input."""
        return tuple(sorted((self.local, *self.alive), key=lambda p: p.node_id))

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        """Node ids of `members`."""
        return tuple(p.node_id for p in self.members)

    def node_specs(self) -> tuple[NodeSpec, ...]:
        """`members` as the planner's node specs, in the same order."""
        return tuple(
            NodeSpec(
                node_id=p.node_id,
                speed=p.capacity.speed,
                memory_bytes=room_bytes(p.capacity.memory_bytes, p.capacity.baseline_bytes),
                link_bytes_per_s=p.capacity.link_bytes_per_s,
                memory=MEMORY_MODELS.get(p.capacity.backend),
            )
            for p in self.members
        )

    def get(self, node_id: NodeId) -> PeerInfo | None:
        """The record of a member (self or a live peer), if any."""
        if node_id == self.local.node_id:
            return self.local
        return _find(self.alive, node_id)

    def record(self, node_id: NodeId) -> PeerInfo | None:
        """The record of a peer this node counts, alive or marked dead, if any."""
        return _find(self.alive, node_id) or _find(self.dead, node_id)

    def is_dead(self, node_id: NodeId) -> bool:
        """True when the peer was marked dead and no new run of it has appeared since."""
        return _find(self.dead, node_id) is not None

    def apply(self, event: PeerEvent) -> Membership:
        """The membership after a discovery event."""
        peer = event.peer
        if peer.node_id == self.local.node_id:
            return self
        if event.kind is PeerEventKind.LEFT:
            alive = tuple(p for p in self.alive if not p.same_run(peer))
            dead = tuple(p for p in self.dead if not p.same_run(peer))
            return self._replace(alive, dead)
        corpse = _find(self.dead, peer.node_id)
        if corpse is not None and corpse.incarnation == peer.incarnation:
            # A lingering or refreshed record of the run we were told is dead.
            return self._replace(self.alive, _with(self.dead, peer))
        return self._replace(_with(self.alive, peer), _without(self.dead, peer.node_id))

    def mark_dead(self, node_id: NodeId, incarnation: int | None = None) -> Membership:
        """Drop a live peer until a new run of it appears. With `incarnation`, only that run:
        a failure seen on a stream to an older run must not evict the node's new run."""
        peer = _find(self.alive, node_id)
        if peer is None or incarnation not in (None, peer.incarnation):
            return self
        return self._replace(_without(self.alive, node_id), _with(self.dead, peer))

    def revive(self, node_id: NodeId, incarnation: int | None = None) -> Membership:
        """Undo mark_dead: the same run answered again."""
        peer = _find(self.dead, node_id)
        if peer is None or incarnation not in (None, peer.incarnation):
            return self
        return self._replace(_with(self.alive, peer), _without(self.dead, node_id))

    def with_local(self, info: PeerInfo) -> Membership:
        """The membership after this node's own record changed (e.g. its capacity)."""
        if info.node_id != self.local.node_id:
            raise UsageError(f"local node id cannot change ({self.local.node_id!r})")
        return self if info == self.local else replace(self, local=info)

    def _replace(self, alive: tuple[PeerInfo, ...], dead: tuple[PeerInfo, ...]) -> Membership:
        if alive == self.alive and dead == self.dead:
            return self
        return replace(self, alive=alive, dead=dead)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerChange:
    """What happened to one peer between two memberships: ``state`` is "joined", "left",
    "unreachable" (marked dead), "back" (the same run revived), "restarted" (a new run)
    or "moved" (another endpoint); ``peer`` is its record after (before, when it left)."""

    state: str
    peer: PeerInfo


def peer_changes(before: Membership, after: Membership) -> tuple[PeerChange, ...]:
    """The changes of every peer from ``before`` to ``after``, by node id. A record that
    changed nothing but its capacity (a measured link) and the record of a dead peer
    refreshed are no change: an operator reads one line per change of a peer's state."""
    ids = {p.node_id for m in (before, after) for p in (*m.alive, *m.dead)}
    changes: list[PeerChange] = []
    for node_id in sorted(ids):
        was_alive, was_dead = _find(before.alive, node_id), _find(before.dead, node_id)
        now_alive, now_dead = _find(after.alive, node_id), _find(after.dead, node_id)
        old = was_alive or was_dead
        state = ""
        if now_alive is not None:
            if old is None:
                state = "joined"
            elif not old.same_run(now_alive):
                state = "restarted"
            elif was_dead is not None:
                state = "back"
            elif old.endpoint != now_alive.endpoint:
                state = "moved"
        elif now_dead is not None:
            if was_alive is not None:
                state = "unreachable"
        elif old is not None:
            state = "left"
        record = now_alive or now_dead or old
        if state and record is not None:
            changes.append(PeerChange(state=state, peer=record))
    return tuple(changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Debounce:
    """When to re-plan: after changes stop for `quiet_s`, at most `max_delay_s` after the first.

    Pure; the caller passes the time (any monotonic clock, in seconds):

        debounce = debounce.changed(now)          # on every membership change
        if debounce.ready(now): replan(); debounce = debounce.done()
        # else wake up at debounce.due_s
    """

    quiet_s: float = REPLAN_QUIET_S
    max_delay_s: float = REPLAN_MAX_DELAY_S
    first_change_s: float | None = None  # oldest change not yet handled
    last_change_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.quiet_s <= self.max_delay_s:
            raise UsageError(
                f"need 0 <= quiet_s <= max_delay_s, got {self.quiet_s} and {self.max_delay_s}"
            )

    @property
    def pending(self) -> bool:
        """True when a change has not been handled yet."""
        return self.first_change_s is not None

    @property
    def due_s(self) -> float | None:
        """When the pending change should be handled, or None when nothing is pending."""
        if self.first_change_s is None or self.last_change_s is None:
            return None
        return min(self.last_change_s + self.quiet_s, self.first_change_s + self.max_delay_s)

    def changed(self, now_s: float) -> Debounce:
        """Note a change at `now_s`."""
        first = now_s if self.first_change_s is None else self.first_change_s
        return replace(self, first_change_s=first, last_change_s=now_s)

    def ready(self, now_s: float) -> bool:
        """True when a change is pending and due at `now_s`."""
        due = self.due_s
        return due is not None and now_s >= due

    def done(self) -> Debounce:
        """Forget the pending changes (after re-planning)."""
        return replace(self, first_change_s=None, last_change_s=None)
