"""Negotiation with in-memory discovery: every node agrees on one plan, joins and deaths."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from edgenode import logfields
from edgenode.mesh import Debounce, Endpoint, InMemoryNetwork, NodeId, PeerInfo
from edgenode.model.manifest import LinkSpec
from edgenode.planning import stage_memory_bytes
from edgenode.runtime.negotiation import Negotiator, PlanPeers, PlanState, link_of
from tests.runtime.fakes import InMemoryPlanPeers, chain_manifest, peer_info

DEADLINE_S = 5.0
FAST = Debounce(quiet_s=0.01, max_delay_s=0.05)


class Cluster:
    def __init__(self, parts: int = 6) -> None:
        self.manifest = chain_manifest(parts)
        self.network = InMemoryNetwork()
        self.peers = InMemoryPlanPeers()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.discoveries: dict = {}
        self.tag_logs = False  # each node's records carry its NODE_ID (logfields.bind_node)

    async def start(
        self,
        node_id: str,
        port: int,
        speed: float = 1e9,
        clock: Callable[[], float] = time.monotonic,
        peers: PlanPeers | None = None,
        link_bytes_per_s: float = 0.0,
        memory_bytes: int | None = None,
    ) -> Negotiator:
        info = peer_info(node_id, port, self.manifest, speed)
        capacity = dataclasses.replace(
            info.capacity,
            link_bytes_per_s=link_bytes_per_s,
            memory_bytes=info.capacity.memory_bytes if memory_bytes is None else memory_bytes,
        )
        discovery = self.network.discovery(dataclasses.replace(info, capacity=capacity))
        await discovery.start()
        negotiator = Negotiator(
            discovery=discovery,
            graph=self.manifest.cost_graph(),
            manifest_digest=self.manifest.identity,
            link=link_of(self.manifest),
            peers=peers or self.peers,
            debounce=FAST,
            ask_timeout_s=0.2,
            check_interval_s=0.05,
            revive_first_s=0.05,
            revive_max_s=0.2,
            clock=clock,
        )
        self.peers.negotiators[node_id] = negotiator
        self.discoveries[node_id] = discovery
        context = None
        if self.tag_logs:
            context = contextvars.copy_context()
            context.run(logfields.bind_node, node_id)
            self.peers.contexts[node_id] = context
        self.tasks[node_id] = asyncio.create_task(negotiator.run(), context=context)
        return negotiator

    async def stop(self, node_id: str, *, crash: bool = False) -> None:
        if crash:
            self.network.crash(node_id)
            self.peers.down.add(node_id)
        else:  # as a node stops: Leave over the control plane, then the mDNS goodbye
            await self.peers.negotiators[node_id].leave()
            await self.discoveries[node_id].close()
        task = self.tasks.pop(node_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.peers.negotiators.pop(node_id)
        await self.discoveries.pop(node_id).close()

    async def agreed(self, members: set[str]) -> list[PlanState]:
        def ok(state: PlanState) -> bool:
            return state.settled and set(state.members) == members

        return [await self.peers.negotiators[n].wait(ok, DEADLINE_S) for n in sorted(members)]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        for node_id in list(c.tasks):
            await c.stop(node_id)


async def test_a_lone_node_agrees_with_itself(cluster: Cluster) -> None:
    await cluster.start("a", 1)
    (state,) = await cluster.agreed({"a"})
    assert [(x.node_id, x.start, x.stop) for x in state.agreed.assignments] == [("a", 0, 6)]


async def test_all_nodes_agree_on_the_same_plan(cluster: Cluster) -> None:
    for i, node in enumerate("abc"):
        await cluster.start(node, i + 1, speed=(i + 1) * 1e9)
    states = await cluster.agreed({"a", "b", "c"})
    digests = {s.agreed.digest for s in states}
    assert len(digests) == 1
    plan = states[0].agreed
    assert plan.assignments[0].start == 0 and plan.assignments[-1].stop == 6
    # the fastest node gets the most parts
    assert max(plan.assignments, key=lambda a: a.stop - a.start).node_id == "c"


async def test_a_joining_node_gets_a_share_and_old_plan_is_served_meanwhile(
    cluster: Cluster,
) -> None:
    a = await cluster.start("a", 1)
    await cluster.start("b", 2)
    (first, _) = await cluster.agreed({"a", "b"})
    await cluster.start("c", 3)
    states = await cluster.agreed({"a", "b", "c"})
    assert {s.agreed.digest for s in states} != {first.agreed.digest}
    assert "c" in {x.node_id for x in states[0].agreed.assignments}
    # the served plan never went back to None during the switch
    assert a.state.agreed is not None


async def test_members_whose_budgets_cannot_hold_the_model_say_why_until_one_joins(
    cluster: Cluster,
) -> None:
    graph = cluster.manifest.cost_graph()
    tight = max(stage_memory_bytes(graph, k, k + 1) for k in range(len(graph.ops)))
    a = await cluster.start("a", 1, memory_bytes=tight)
    b = await cluster.start("b", 2, memory_bytes=tight)

    def stuck(state: PlanState) -> bool:
        return set(state.members) == {"a", "b"} and bool(state.problem)

    states = [await n.wait(stuck, DEADLINE_S) for n in (a, b)]
    assert states[0].problem == states[1].problem  # every member says the same
    found = re.fullmatch(
        r"no feasible plan: the model needs \d+ bytes in at least (\d+) nodes of (\d+) bytes"
        r" for parts \(the largest budget less its node's baseline\); the cluster has 2",
        states[0].problem,
    )
    assert found, states[0].problem
    assert int(found[1]) > 2 and int(found[2]) == tight
    assert all(s.computed is None and s.agreed is None for s in states)  # serves nothing
    await cluster.start("c", 3, memory_bytes=1 << 40)  # a node that can hold it joins
    joined = await cluster.agreed({"a", "b", "c"})
    assert all(s.agreed is not None and not s.problem for s in joined)


async def test_members_left_that_cannot_hold_the_model_stop_serving_the_old_plan(
    cluster: Cluster,
) -> None:
    """Three nodes hold two parts each; when one leaves, the two left cannot hold three
    each: they say why and serve nothing (not the old plan, which routes through the one
    gone), until a node joins."""
    graph = cluster.manifest.cost_graph()
    room = stage_memory_bytes(graph, 0, 2)
    assert stage_memory_bytes(graph, 0, 3) > room  # six parts: three nodes needed
    for i, node in enumerate("abc"):
        await cluster.start(node, i + 1, memory_bytes=room)
    states = await cluster.agreed({"a", "b", "c"})
    assert {x.node_id for x in states[0].agreed.assignments} == {"a", "b", "c"}
    await cluster.stop("c")

    def stuck(state: PlanState) -> bool:
        return set(state.members) == {"a", "b"} and bool(state.problem)

    for node in "ab":
        state = await cluster.peers.negotiators[node].wait(stuck, DEADLINE_S)
        assert state.agreed is None and state.computed is None
    await cluster.start("d", 4, memory_bytes=room)
    joined = await cluster.agreed({"a", "b", "d"})
    assert all(s.agreed is not None and not s.problem for s in joined)


async def test_a_crashed_node_is_marked_dead_and_the_rest_replan(cluster: Cluster) -> None:
    for i, node in enumerate("abc"):
        await cluster.start(node, i + 1)
    await cluster.agreed({"a", "b", "c"})
    await cluster.stop("c", crash=True)  # no goodbye: its record lingers, like kill -9
    for node in "ab":  # the survivors find out from failed digest requests
        cluster.peers.negotiators[node].mark_dead("c")
    states = await cluster.agreed({"a", "b"})
    assert {x.node_id for x in states[0].agreed.assignments} == {"a", "b"}


async def test_a_silent_peer_is_found_dead_by_the_liveness_checks(cluster: Cluster) -> None:
    for i, node in enumerate("ab"):
        await cluster.start(node, i + 1)
    await cluster.agreed({"a", "b"})
    cluster.peers.down.add("b")  # b still announces (a lingering record) but never answers
    a = cluster.peers.negotiators["a"]
    state = await a.wait(lambda s: s.settled and set(s.members) == {"a"}, DEADLINE_S)
    assert [x.node_id for x in state.agreed.assignments] == ["a"]
    assert a.membership.is_dead("b")


async def test_a_frozen_peer_is_dropped_then_rejoins_when_it_answers_again(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.runtime.negotiation")
    for i, node in enumerate("ab"):
        await cluster.start(node, i + 1)
    await cluster.agreed({"a", "b"})
    a = cluster.peers.negotiators["a"]
    caplog.clear()
    cluster.peers.down.add("b")  # SIGSTOP: same run, same record, no answers
    await a.wait(lambda s: s.settled and set(s.members) == {"a"}, DEADLINE_S)
    before = cluster.peers.asked["b"]
    async with asyncio.timeout(DEADLINE_S):  # a keeps asking, less and less often
        while cluster.peers.asked["b"] < before + 3:
            await asyncio.sleep(0.02)
    cluster.peers.down.discard("b")  # SIGCONT
    states = await cluster.agreed({"a", "b"})
    assert {x.node_id for x in states[0].agreed.assignments} == {"a", "b"}
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "peer b" in r.getMessage()]
    # the first failure, then one line per change of b's state
    short = [(lv, re.sub(r"(: | at ).*", "", m.removeprefix("membership: "))) for lv, m in said]
    assert short == [
        ("WARNING", "peer b does not answer"),
        ("WARNING", "peer b unreachable, marked dead (1 node)"),
        ("INFO", "peer b back"),
    ]
    assert said[-1][1].endswith(" (2 nodes)")


class PausingPeers:
    """One node's view of the others, whose asks of some peers straddle a pause of that
    node: its clock jumps by ``pause_s`` and the ask times out, as ``asyncio.timeout`` does
    once a SIGSTOPped node is continued (the answer waits in the socket, behind the expired
    timer). Asks in flight together straddle one pause together."""

    def __init__(self, peers: InMemoryPlanPeers, pause_s: float) -> None:
        self.peers = peers
        self.pause_s = pause_s
        self.offset = 0.0
        self.pausing: dict[str, int] = {}  # peer -> asks still to straddle a pause
        self.asked: Counter[str] = Counter()

    def clock(self) -> float:
        return time.monotonic() + self.offset

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        return await self.peers.hello(endpoint)

    async def leave(self, peer: PeerInfo, local: PeerInfo) -> None:
        await self.peers.leave(peer, local)

    async def plan_digest(self, peer: PeerInfo) -> str:
        self.asked[peer.node_id] += 1
        if self.pausing.get(peer.node_id, 0) > 0:
            self.pausing[peer.node_id] -= 1
            offset = self.offset
            await asyncio.sleep(0)  # let the other asks of this round start
            if self.offset == offset:
                self.offset += self.pause_s
            raise TimeoutError
        return await self.peers.plan_digest(peer)


async def paused_cluster(cluster: Cluster, others: str) -> tuple[PausingPeers, Negotiator]:
    """Node a, whose asks may straddle pauses, with ``others`` (plain nodes), agreed."""
    peers = PausingPeers(cluster.peers, pause_s=3.0)
    a = await cluster.start("a", 1, clock=peers.clock, peers=peers)
    for i, node in enumerate(others):
        await cluster.start(node, i + 2)
    await cluster.agreed({"a", *others})
    return peers, a


async def test_a_paused_node_does_not_blame_its_peers_for_its_own_pause(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.runtime.negotiation")
    peers, a = await paused_cluster(cluster, "b")
    caplog.clear()  # b joined
    before = peers.asked["b"]
    peers.pausing["b"] = 4  # more asks in a row than DEAD_AFTER_FAILURES
    async with asyncio.timeout(DEADLINE_S):
        while peers.asked["b"] < before + 6:  # the 4 paused asks and answered ones after
            await asyncio.sleep(0.02)
    assert not a.membership.is_dead("b")
    assert set(a.state.members) == {"a", "b"}
    said = [r.getMessage() for r in caplog.records if "peer b" in r.getMessage()]
    assert said == []
    paused = [r.getMessage() for r in caplog.records if "paused" in r.getMessage()]
    assert len(paused) == 4  # once per pause
    # The same silence without the pause still counts: b is dropped.
    cluster.peers.down.add("b")
    await a.wait(lambda s: s.settled and set(s.members) == {"a"}, DEADLINE_S)


async def test_one_pause_is_logged_once_for_all_the_asks_it_spoiled(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.runtime.negotiation")
    peers, a = await paused_cluster(cluster, "bc")
    caplog.clear()  # b and c joined
    before = dict(peers.asked)
    peers.pausing.update(b=2, c=2)  # two pauses, each spoiling the asks of b and c
    async with asyncio.timeout(DEADLINE_S):
        while min(peers.asked[n] - before[n] for n in "bc") < 3:
            await asyncio.sleep(0.02)
    assert set(a.state.members) == {"a", "b", "c"}
    assert not [r for r in caplog.records if "peer " in r.getMessage()]
    assert len([r for r in caplog.records if "paused" in r.getMessage()]) == 2


async def test_graceful_leave_replans(cluster: Cluster) -> None:
    for i, node in enumerate("abc"):
        await cluster.start(node, i + 1)
    await cluster.agreed({"a", "b", "c"})
    await cluster.stop("b")
    await cluster.agreed({"a", "c"})


async def test_more_nodes_than_parts_form_replicas() -> None:
    c = Cluster(parts=2)
    try:
        for i, node in enumerate("abcd"):
            await c.start(node, i + 1)
        states = await c.agreed(set("abcd"))
        plan = states[0].agreed
        assert plan.replicas == 2 and plan.idle == ()
        assert {plan.replica_of(n) for n in "abcd"} == {0, 1}
    finally:
        for node_id in list(c.tasks):
            await c.stop(node_id)


async def test_the_negotiation_plans_for_the_manifests_link() -> None:
    """Each of the 3 stages computes 0.2 s and sends 1 KiB: on gigabit the sends are
    negligible, on a 1 kB/s link with 0.5 s per hop each costs ~1.5 s."""
    bottlenecks = []
    for link in (None, LinkSpec(bandwidth_bytes_per_s=1e3, latency_s=0.5)):
        c = Cluster(parts=6)
        c.manifest = dataclasses.replace(c.manifest, link=link)
        try:
            for i, node in enumerate("abc"):
                await c.start(node, i + 1)
            plan = (await c.agreed(set("abc")))[0].agreed
            assert len(plan.assignments) == 3
            bottlenecks.append(plan.bottleneck_s)
        finally:
            for node_id in list(c.tasks):
                await c.stop(node_id)
    assert bottlenecks[0] == pytest.approx(0.2, abs=0.01)
    assert bottlenecks[1] == pytest.approx(0.2 + 1024 / 1e3 + 0.5, abs=0.01)


async def test_a_record_that_is_not_confirmed_does_not_make_members_replan(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.mesh.vetting")
    for i, node in enumerate("ab"):
        await cluster.start(node, i + 1)
    before = await cluster.agreed({"a", "b"})
    # An outsider publishes a record for port 9, where no member answers.
    rogue = cluster.network.discovery(peer_info("x", 9, cluster.manifest))
    await rogue.start()
    at = Endpoint(host="127.0.0.1", port=9)
    try:
        async with asyncio.timeout(DEADLINE_S):
            while cluster.peers.greeted[at] < 6:  # each member keeps asking, backing off
                await asyncio.sleep(0.02)
        for node, state in zip("ab", before, strict=True):
            now = cluster.peers.negotiators[node].state
            assert now.version == state.version and "x" not in now.members
        warnings = [r for r in caplog.records if "ignoring the record of x" in r.getMessage()]
        assert len(warnings) == 2  # once per member
    finally:
        await rogue.close()
    # A real node x starts there: its record (the same one) now answers, and it joins.
    await cluster.start("x", 9)
    states = await cluster.agreed({"a", "b", "x"})
    assert "x" in states[0].agreed.members


class SlowPeers:
    """Answers from some nodes take ``delay_s``: a control call queued behind tensors on a
    slow link."""

    def __init__(self, peers: InMemoryPlanPeers, slow: set[str], delay_s: float) -> None:
        self.peers, self.slow, self.delay_s = peers, slow, delay_s
        self.asked: Counter[str] = Counter()

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        return await self.peers.hello(endpoint)

    async def leave(self, peer: PeerInfo, local: PeerInfo) -> None:
        await self.peers.leave(peer, local)

    async def plan_digest(self, peer: PeerInfo) -> str:
        self.asked[peer.node_id] += 1
        if peer.node_id in self.slow:
            await asyncio.sleep(self.delay_s)
        return await self.peers.plan_digest(peer)


@pytest.mark.parametrize(("link", "kept"), [(2_000.0, True), (0.0, False)])
async def test_a_peer_on_a_slow_link_gets_longer_to_answer(
    cluster: Cluster, link: float, kept: bool
) -> None:
    """b answers in 0.35 s, past the 0.2 s ask timeout. On a link of 2 kB/s, where one of the
    model's 1 KiB tensors takes half a second, that is no sign of death; on a fast one it is."""
    peers = SlowPeers(cluster.peers, set(), delay_s=0.35)
    a = await cluster.start("a", 1, peers=peers)
    await cluster.start("b", 2, link_bytes_per_s=link)
    await cluster.agreed({"a", "b"})
    peers.slow.add("b")  # from now on, b's answers queue behind tensors
    asked = peers.asked["b"]
    b = a.membership.get(NodeId("b"))
    assert b is not None
    slower = min(link or float("inf"), 125e6)  # b's own link, or the cluster's (gigabit)
    assert a.ask_timeout_s(b) == pytest.approx(0.2 + 2 * 1024 / slower)

    def asked_enough() -> bool:
        return peers.asked["b"] >= asked + 6 or a.membership.is_dead(NodeId("b"))

    deadline = time.monotonic() + DEADLINE_S
    while not asked_enough() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling interval
    assert asked_enough()
    assert (not a.membership.is_dead(NodeId("b"))) == kept


class _JournalFields(logging.Handler):
    """Each record as the journal would file it: its fields (edgenode.logfields), taken
    where it is logged, and its message."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append({**logfields.record_fields(record), "MESSAGE": record.getMessage()})


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, str]]]:
    monkeypatch.setattr(logfields, "_last", [])  # the nodes bound here stay here
    handler = _JournalFields()
    logger = logging.getLogger("edgenode.runtime.negotiation")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_one_line_per_plan_change_and_per_peer_change_tagged_with_its_node(
    cluster: Cluster, journal: list[dict[str, str]]
) -> None:
    cluster.tag_logs = True
    for i, node in enumerate("ab"):
        await cluster.start(node, i + 1)
    (two, _) = await cluster.agreed({"a", "b"})
    await cluster.start("c", 3)
    (three, *_) = await cluster.agreed({"a", "b", "c"})
    await cluster.stop("c")
    (again, _) = await cluster.agreed({"a", "b"})
    assert again.agreed.digest == two.agreed.digest  # the same members plan alike

    def lines_of(node: str) -> list[dict[str, str]]:
        return [line for line in journal if line.get("NODE_ID") == node]

    assert {line.get("NODE_ID") for line in journal} == {"a", "b", "c"}, journal
    for node in "ab":
        lines = lines_of(node)
        peers = [line for line in lines if line["MESSAGE"].startswith("membership: peer ")]
        plans = [line for line in lines if line["MESSAGE"].startswith("plan ")]
        assert len(peers) + len(plans) == len(lines), lines  # nothing else at INFO
        other = "b" if node == "a" else "a"
        assert [(p["PEER_ID"], p["MESSAGE"].split()[3]) for p in peers] == [
            (other, "joined"),  # one line for each, though both sides ask, retry, confirm
            ("c", "joined"),
            ("c", "left"),
        ]
        digests = [p["PLAN_DIGEST"] for p in plans]
        assert all(p["MESSAGE"].startswith(f"plan {p['PLAN_DIGEST']} agreed") for p in plans)
        assert all(x != y for x, y in itertools.pairwise(digests)), digests  # each a change
        short = [s.agreed.digest[: logfields.PLAN_DIGEST_CHARS] for s in (two, three, again)]
        assert digests[-3:] == short
