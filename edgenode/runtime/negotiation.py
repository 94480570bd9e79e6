"""Negotiating the plan: every node computes it, then confirms that all owners agree.

There is no coordinator. Each node feeds the same inputs (the manifest's cost graph,
identity and link, and the membership sorted by node id) to the same pure planner, so
nodes that see the same members compute the same plan. A node serves a plan only once
every member has reported the same digest (asked over gRPC through ``PlanPeers``); until
then it keeps serving the previous agreed plan, so a switch is atomic from its point of view.

Membership changes are debounced (a burst of joins gives one re-plan). A member
that cannot be reached several times in a row while confirming is marked dead,
which triggers a re-plan without it: mDNS would keep a killed node's record for
minutes. A dead peer is asked again with exponential backoff; when the same run
answers (it was frozen, or the network was cut), it is revived and joins the plan
again. Each failure and each recovery is logged once. A failed ask that ends long after
its timeout says that this process was paused (SIGSTOP, a suspended VM, a starved CPU),
not that the peer is gone: the peer's answer can wait in the socket behind the expired
timer. Such failures do not count against the peer.

Discovery events are only hints (edgenode/mesh/vetting.py): anyone on the LAN can
publish, change or withdraw an mDNS record, so a node joins, moves, restarts or leaves
the membership only once it has proved it over the control plane (Hello, over
authenticated TLS when the cluster has a key), and the planner's inputs (capacity,
model identity) come from those answers. A stopping node tells its peers with Leave
before its mDNS goodbye, so a graceful leave re-plans at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edgenode.errors import EdgenodeError, PeerUnavailable, PlanError
from edgenode.logfields import PEER_ID, PLAN_DIGEST
from edgenode.mesh import (
    Debounce,
    Discovery,
    Endpoint,
    Membership,
    NodeId,
    PeerInfo,
    peer_changes,
)
from edgenode.mesh.vetting import CHECK_MAX_BACKOFF_S, Vetting
from edgenode.model.manifest import Manifest, planning_link
from edgenode.planning import ClusterPlan, CostGraph, Link, node_link, plan_cluster

__all__ = ["DEFAULT_LINK", "Negotiator", "PlanPeers", "PlanState", "link_of"]

logger = logging.getLogger(__name__)

DEFAULT_LINK = node_link()  # gigabit Ethernet: edgenode.defaults, as `split` and `plan` assume


def link_of(manifest: Manifest) -> Link:
    """The network the cluster plans for: the manifest's, else gigabit Ethernet."""
    return planning_link(manifest.link)


CONFIRM_INTERVAL_S = 0.02  # between rounds of asking peers for their digest
CHECK_INTERVAL_S = 0.5  # once agreed, members are asked again this often (liveness, drift)
ASK_TIMEOUT_S = 0.5  # a peer slower than this to answer counts as unreachable ...
# ... plus the time this many of the model's largest tensors take over the slower of the
# two links (a slow Wi-Fi link busy with a tensor delays a control call behind it)
ASK_QUEUE_TENSORS = 2.0
DEAD_AFTER_FAILURES = 2  # consecutive unreachable answers before a peer is marked dead
PAUSE_SLACK_S = 1.0  # an ask failing this long after its timeout straddled a pause of ours
LEAVE_TIMEOUT_S = 0.5  # a stopping node waits this long at most for peers to hear its Leave
REVIVE_FIRST_S = 1.0  # a dead peer is asked again after this long...
REVIVE_MAX_S = 30.0  # ...doubling up to this


class PlanPeers(Protocol):
    """Asks other nodes over the (authenticated) control plane."""

    async def plan_digest(self, peer: PeerInfo) -> str:
        """The digest ``peer`` computed ("" when none); PeerUnavailable if unreachable."""
        ...

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        """The record of the node answering at ``endpoint`` (authenticated in a secure
        cluster); EdgenodeError when nobody, or no member, answers there."""
        ...

    async def leave(self, peer: PeerInfo, local: PeerInfo) -> None:
        """Tell ``peer`` that this run (``local``) leaves the cluster; EdgenodeError if not."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanState:
    """What this node computed, and what it serves."""

    computed: ClusterPlan | None  # latest plan from the current membership
    agreed: ClusterPlan | None  # latest plan every member confirmed; the one served
    members: tuple[NodeId, ...]
    version: int  # increases on every change of this state
    problem: str = ""  # why the current members have no plan ("" when they have one)

    @property
    def settled(self) -> bool:
        """True when the served plan is the latest computed one."""
        return self.computed is not None and self.agreed is self.computed


def _log_peer_changes(before: Membership, after: Membership) -> None:
    """One line per change of a peer's state: "membership: peer b joined at HOST:PORT
    (3 nodes)"; left, "unreachable, marked dead" (a warning), back, restarted, moved."""
    count = len(after.members)
    for change in peer_changes(before, after):
        peer = change.peer
        where = f" at {peer.endpoint}"
        if change.state in ("left", "unreachable"):
            # "marked dead": the words benchmarks and operators have counted drops by
            where = ", marked dead" if change.state == "unreachable" else ""
        logger.log(
            logging.WARNING if change.state == "unreachable" else logging.INFO,
            "membership: peer %s %s%s (%d node%s)",
            peer.node_id,
            change.state,
            where,
            count,
            "" if count == 1 else "s",
            extra={PEER_ID: peer.node_id},
        )


class Negotiator:
    """Runs the negotiation for one node; ``run()`` until cancelled.

    It plans ``graph`` (the manifest's cost graph) for ``link`` (``link_of(manifest)``);
    ``manifest_digest`` (the manifest's identity) goes into every plan's digest.
    """

    def __init__(
        self,
        *,
        discovery: Discovery,
        graph: CostGraph,
        manifest_digest: str,
        link: Link,
        peers: PlanPeers,
        debounce: Debounce | None = None,
        confirm_interval_s: float = CONFIRM_INTERVAL_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        ask_timeout_s: float = ASK_TIMEOUT_S,
        dead_after_failures: int = DEAD_AFTER_FAILURES,
        revive_first_s: float = REVIVE_FIRST_S,
        revive_max_s: float = REVIVE_MAX_S,
        check_max_backoff_s: float = CHECK_MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._graph = graph
        self._manifest_digest = manifest_digest
        self._peers = peers
        self._link = link
        self._debounce = debounce or Debounce()
        self._confirm_interval_s = confirm_interval_s
        self._check_interval_s = check_interval_s
        self._ask_timeout_s = ask_timeout_s
        self._largest_tensor_bytes = max((t.nbytes for t in graph.tensors), default=0)
        self._dead_after = dead_after_failures
        self._revive_first_s = revive_first_s
        self._revive_max_s = revive_max_s
        self._revive: dict[NodeId, tuple[float, float]] = {}  # dead peer -> (next ask, backoff)
        self._clock = clock
        self._membership = Membership.of(discovery.local)
        self._vetting = Vetting(
            greeter=peers,
            membership=lambda: self._membership,
            update=self._set_membership,
            timeout_s=ask_timeout_s * 2,
            max_backoff_s=check_max_backoff_s,
        )
        self._failures: dict[NodeId, int] = {}
        self._resumed_at = float("-inf")  # when the last pause of this process was noticed
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._state = PlanState(computed=None, agreed=None, members=(), version=0)
        self.members_changed_s = clock()  # when a node last joined or left (this one starting)

    @property
    def state(self) -> PlanState:
        """The current state (immutable snapshot)."""
        return self._state

    @property
    def membership(self) -> Membership:
        """The current membership view."""
        return self._membership

    def plan_digest(self) -> str:
        """The digest this node computed ("" before the first plan): its GetPlan answer."""
        computed = self._state.computed
        return computed.digest if computed is not None else ""

    async def publish_local(self, info: PeerInfo) -> None:
        """This node's record changed (its measured link): announce it and plan with it."""
        await self._discovery.announce(info)
        self._set_membership(self._membership.with_local(info))

    def mark_dead(self, node_id: NodeId, incarnation: int | None = None) -> None:
        """Drop a peer the transport found dead; re-plan without it."""
        self._set_membership(self._membership.mark_dead(node_id, incarnation))

    def peer_left(self, node_id: NodeId, incarnation: int) -> None:
        """A peer said goodbye over the authenticated control plane (its Leave call)."""
        self._vetting.left(node_id, incarnation)

    async def leave(self, timeout_s: float = LEAVE_TIMEOUT_S) -> None:
        """Tell every live peer that this node leaves (before the mDNS goodbye, which peers
        only take as a hint), waiting ``timeout_s`` at most; failures are logged."""
        local = self._membership.local

        async def tell(peer: PeerInfo) -> None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._peers.leave(peer, local)
            except (EdgenodeError, TimeoutError) as exc:
                logger.info("could not tell %s that this node leaves: %s", peer.node_id, exc)

        await asyncio.gather(*(tell(p) for p in self._membership.alive))

    async def wait(self, predicate: Callable[[PlanState], bool], timeout_s: float) -> PlanState:
        """The first state satisfying ``predicate``; TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self._state))
            return self._state

    async def run(self) -> None:
        """Consume discovery events and keep an agreed plan; returns only when cancelled."""
        self._debounce = self._debounce.changed(self._clock())
        self.members_changed_s = self._clock()
        self._wake.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume_events())
            await self._plan_loop()

    # -- internals -------------------------------------------------------------------------

    async def _consume_events(self) -> None:
        await self._vetting.run(self._discovery.events())

    def _set_membership(self, membership: Membership) -> None:
        _log_peer_changes(self._membership, membership)
        if membership.members == self._membership.members:
            self._membership = membership
            return
        before = {p.node_id for p in self._membership.members}
        after = {p.node_id for p in membership.members}
        self._membership = membership
        if before != after:
            self.members_changed_s = self._clock()
        logger.debug(
            "membership: %d node%s (joined %s, left %s)",
            len(after),
            "" if len(after) == 1 else "s",
            sorted(after - before) or "-",
            sorted(before - after) or "-",
        )
        self._debounce = self._debounce.changed(self._clock())
        self._wake.set()

    async def _sleep_or_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._wake.wait()
        self._wake.clear()

    async def _plan_loop(self) -> None:
        while True:
            due = self._debounce.due_s
            if due is None:
                await self._sleep_or_wake(self._check_interval_s)
                if not self._debounce.pending:
                    await self._check_members()
                continue
            if self._clock() < due:
                await self._sleep_or_wake(due - self._clock())
                continue
            self._debounce = self._debounce.done()
            plan, problem = self._compute()
            # No plan for these members: serve nothing (the old plan routes through nodes
            # that left) until one joins; a new plan keeps the old one until agreed.
            agreed = self._state.agreed if plan is not None else None
            await self._publish(computed=plan, agreed=agreed, problem=problem)
            if plan is not None:
                await self._confirm(plan)

    def _compute(self) -> tuple[ClusterPlan | None, str]:
        """The plan for the current members, or None and why there is none (logged once
        per new reason: every member computes the same, so each node says so itself)."""
        members = self._membership.node_specs()
        try:
            plan = plan_cluster(
                self._graph, members, self._link, manifest_digest=self._manifest_digest
            )
        except PlanError as exc:
            problem = str(exc)
            if problem != self._state.problem:
                logger.warning(
                    "no plan for %d node%s, serving nothing until one joins: %s",
                    len(members),
                    "" if len(members) == 1 else "s",
                    problem,
                )
            return None, problem
        return plan, ""

    async def _confirm(self, plan: ClusterPlan) -> None:
        """Ask every other member for its digest until all match or membership changes."""
        local = self._membership.local.node_id
        while not self._debounce.pending:
            others = [p for p in self._membership.members if p.node_id != local]
            # Dead peers are probed here too: a node that alone marked a peer dead must be
            # able to revive it while the others disagree with its plan.
            answers, _ = await asyncio.gather(
                asyncio.gather(*(self._ask(p) for p in others)), self._probe_dead()
            )
            if self._debounce.pending:
                return
            if all(answer == plan.digest for answer in answers):
                stages = ", ".join(f"{a.node_id}:{a.start}-{a.stop - 1}" for a in plan.assignments)
                idle = f"; idle {', '.join(plan.idle)}" if plan.idle else ""
                # One line per plan change: the same plan agreed again (a member that
                # came back) is no change.
                changed = self._state.agreed is None or self._state.agreed.digest != plan.digest
                logger.log(
                    logging.INFO if changed else logging.DEBUG,
                    "plan %s agreed: %s%s",
                    plan.digest[:12],
                    stages,
                    idle,
                    extra={PLAN_DIGEST: plan.digest},
                )
                await self._publish(computed=plan, agreed=plan)
                return
            await self._sleep_or_wake(self._confirm_interval_s)

    async def _check_members(self) -> None:
        """Between changes: ask members again, so a dead one is found and dropped, and a
        member that computed another plan (it saw other records) makes us re-confirm."""
        state = self._state
        local = self._membership.local.node_id
        others = [p for p in self._membership.members if p.node_id != local]
        answers, _ = await asyncio.gather(
            asyncio.gather(*(self._ask(p) for p in others)), self._probe_dead()
        )
        if self._debounce.pending or state.computed is None:
            return
        if any(a is not None and a != state.computed.digest for a in answers):
            logger.debug("a member computed another plan; confirming again")
            await self._confirm(state.computed)

    async def _probe_dead(self) -> None:
        """Ask the dead peers whose backoff has passed; revive those that answer."""
        now = self._clock()
        due = [
            p
            for p in self._membership.dead
            if self._revive.setdefault(p.node_id, (now + self._revive_first_s, 0.0))[0] <= now
        ]
        for node_id in [n for n in self._revive if not self._membership.is_dead(n)]:
            del self._revive[node_id]  # a new run of it appeared, or it left
        if not due:
            return

        async def probe(peer: PeerInfo) -> None:
            try:
                async with asyncio.timeout(self.ask_timeout_s(peer)):
                    await self._peers.plan_digest(peer)
            except (PeerUnavailable, TimeoutError):
                _, backoff = self._revive[peer.node_id]
                backoff = min(max(backoff * 2, self._revive_first_s * 2), self._revive_max_s)
                self._revive[peer.node_id] = (self._clock() + backoff, backoff)
                return
            logger.debug("peer %s answers again: it rejoins", peer.node_id)
            self._revive.pop(peer.node_id, None)
            self._set_membership(self._membership.revive(peer.node_id, peer.incarnation))

        await asyncio.gather(*(probe(p) for p in due))

    def ask_timeout_s(self, peer: PeerInfo) -> float:
        """How long ``peer`` gets to answer a control call: ASK_TIMEOUT_S, plus the time
        ASK_QUEUE_TENSORS of the model's largest tensors take over the slower of the cluster's
        link and the two nodes' own (measured or configured)."""
        links = [
            self._link.bandwidth_bytes_per_s,
            peer.capacity.link_bytes_per_s or math.inf,
            self._membership.local.capacity.link_bytes_per_s or math.inf,
        ]
        queued = ASK_QUEUE_TENSORS * self._largest_tensor_bytes / min(links)
        return self._ask_timeout_s + queued

    async def _ask(self, peer: PeerInfo) -> str | None:
        started = self._clock()
        timeout_s = self.ask_timeout_s(peer)
        try:
            async with asyncio.timeout(timeout_s):
                digest = await self._peers.plan_digest(peer)
        except (PeerUnavailable, TimeoutError) as exc:
            if self._paused_since(started, timeout_s):
                return None
            failures = self._failures.get(peer.node_id, 0) + 1
            self._failures[peer.node_id] = failures
            if failures == 1:
                logger.warning("peer %s does not answer: %s", peer.node_id, exc)
            if failures >= self._dead_after:
                logger.debug(  # the membership line below says it
                    "peer %s marked dead after %d failure%s",
                    peer.node_id,
                    failures,
                    "" if failures == 1 else "s",
                )
                self._failures.pop(peer.node_id, None)
                self.mark_dead(peer.node_id, peer.incarnation)
            return None
        self._failures.pop(peer.node_id, None)
        return digest

    def _paused_since(self, started: float, timeout_s: float) -> bool:
        """True when an ask begun at ``started`` ended far past its timeout: this process
        was not running meanwhile. Logged once per pause, however many asks it spoiled."""
        now = self._clock()
        late = now - started - timeout_s
        if late <= PAUSE_SLACK_S:
            return False
        if started >= self._resumed_at:
            logger.warning(
                "this node was paused for about %.1f s; peers' silence meanwhile not counted",
                late,
            )
            self._resumed_at = now
        return True

    async def _publish(
        self, *, computed: ClusterPlan | None, agreed: ClusterPlan | None, problem: str = ""
    ) -> None:
        async with self._changed:
            self._state = PlanState(
                computed=computed,
                agreed=agreed,
                members=tuple(p.node_id for p in self._membership.members),
                version=self._state.version + 1,
                problem=problem,
            )
            self._changed.notify_all()
