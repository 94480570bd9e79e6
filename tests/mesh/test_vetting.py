"""Vetting: discovery events are hints, the membership follows only what Hello proves.

The greeter here is a complete in-memory control plane: a dict of who answers at which
endpoint (what a forger cannot change), while the events are what anyone can publish."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from edgenode.errors import DuplicateNodeId, PeerUnavailable
from edgenode.mesh import Capacity, Endpoint, Membership, NodeId, PeerInfo
from edgenode.mesh._table import PeerTable
from edgenode.mesh.vetting import Vetting

DEADLINE_S = 5.0
MODEL = "ab" * 32


def record(node_id: str, port: int, inc: int = 1, **changes: object) -> PeerInfo:
    info = PeerInfo(
        node_id=NodeId(node_id),
        name=node_id,
        addresses=("127.0.0.1",),
        port=port,
        protocol=1,
        cluster="home",
        manifest_identity=MODEL,
        capacity=Capacity(speed=1e9, memory_bytes=2**30),
        incarnation=inc,
        started_ms=1000 + inc,
    )
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


def at(port: int) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=port)


class Greeter:
    """Who really answers Hello where: the authenticated truth."""

    def __init__(self) -> None:
        self.nodes: dict[Endpoint, PeerInfo] = {}
        self.calls: Counter[Endpoint] = Counter()

    def listen(self, info: PeerInfo) -> None:
        self.nodes[info.endpoint] = info

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        self.calls[endpoint] += 1
        info = self.nodes.get(endpoint)
        if info is None:
            raise PeerUnavailable(f"nobody answers at {endpoint}")
        return info


class Node:
    """The local node "a" on port 1, its membership, and the hints anyone may publish."""

    def __init__(self) -> None:
        self.local = record("a", 1, inc=5)
        self.membership = Membership.of(self.local)
        self.greeter = Greeter()
        self.greeter.listen(self.local)
        self.table = PeerTable()  # what discovery heard, forged or not
        self.events = self.table.subscribe()
        self.changes = 0
        self.vetting = Vetting(
            greeter=self.greeter,
            membership=lambda: self.membership,
            update=self._update,
            timeout_s=0.5,
            first_backoff_s=0.01,
            max_backoff_s=0.08,
        )
        self.task: asyncio.Task[None] | None = None

    def _update(self, membership: Membership) -> None:
        if membership != self.membership:
            self.changes += 1
        self.membership = membership

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(DEADLINE_S):
                while not predicate():
                    await asyncio.sleep(0.005)
        except TimeoutError:
            pytest.fail(f"not within {DEADLINE_S} s: {what}")

    async def settled(self) -> None:
        await self.until(
            lambda: self.events.queued == 0 and self.vetting.pending == 0, "every hint checked"
        )

    async def asked(self, endpoint: Endpoint, times: int) -> None:
        target = self.greeter.calls[endpoint] + times
        await self.until(lambda: self.greeter.calls[endpoint] >= target, f"{times} asks")

    async def member(self, info: PeerInfo) -> None:
        """Start with ``info`` running and admitted."""
        self.greeter.listen(info)
        self.table.upsert(info)
        await self.until(lambda: self.membership.get(info.node_id) == info, "admitted")


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    n = Node()
    n.task = asyncio.create_task(n.vetting.run(n.events))
    try:
        yield n
    finally:
        if not n.task.done():  # one test ends it on purpose and inspects it
            n.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await n.task


async def test_a_record_joins_as_its_hello_answer_not_as_its_txt(node: Node) -> None:
    true = record("b", 2, capacity=Capacity(speed=3e9, memory_bytes=2**31))
    node.greeter.listen(true)
    node.table.upsert(record("b", 2, capacity=Capacity(speed=1.0, memory_bytes=1)))
    await node.settled()
    assert node.membership.get(NodeId("b")) == true


async def test_a_record_nobody_answers_for_never_joins_and_is_asked_ever_less_often(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.mesh.vetting")
    node.table.upsert(record("x", 9))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await node.asked(at(9), 6)
    # 0.01 + 0.02 + 0.04 + 0.08 + 0.08: the backoff doubles up to its cap
    assert loop.time() - started >= 0.2
    assert node.membership.members == (node.local,)
    logged = [r for r in caplog.records if "ignoring the record of x" in r.getMessage()]
    assert len(logged) == 1


async def test_a_record_answered_by_another_member_does_not_join(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    node.table.upsert(record("x", 2))  # "x" at b's endpoint: b answers as itself
    await node.asked(at(2), 3)
    assert node.membership.node_ids == ("a", "b")


async def test_a_forged_goodbye_of_a_member_that_answers_is_ignored(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    before = node.changes
    node.table.remove(NodeId("b"))  # mDNS goodbye, TTL 0
    await node.settled()
    assert node.membership.alive == (b,) and node.changes == before


async def test_a_goodbye_of_a_member_that_stopped_answering_marks_it_dead(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    del node.greeter.nodes[b.endpoint]
    node.table.remove(NodeId("b"))
    await node.settled()
    assert node.membership.is_dead(NodeId("b"))


async def test_an_authenticated_leave_is_applied_at_once_and_sticks(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    node.vetting.left(NodeId("b"), b.incarnation)
    assert node.membership.node_ids == ("a",)
    node.table.remove(NodeId("b"))
    node.table.upsert(b)  # its record lingers in caches and comes back
    await node.settled()
    assert node.membership.node_ids == ("a",)
    node.vetting.left(NodeId("c"), 7)  # an unknown run: nothing to do
    assert node.membership.node_ids == ("a",)


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"port": 7}, id="other port, nobody there"),
        pytest.param({"port": 1}, id="pointing at the local node"),
        pytest.param({"port": 3}, id="pointing at another member"),
        pytest.param({"addresses": ("198.18.0.9",)}, id="other address"),
    ],
)
async def test_a_member_is_not_moved_by_a_record_it_does_not_answer_at(
    node: Node, forged: dict[str, object]
) -> None:
    b, c = record("b", 2), record("c", 3)
    await node.member(b)
    await node.member(c)
    before = node.changes
    fake = dataclasses.replace(b, **forged)  # type: ignore[arg-type]
    node.table.upsert(fake)
    await node.asked(fake.endpoint, 3)
    assert node.membership.get(NodeId("b")) == b and node.changes == before
    node.table.upsert(b)  # the true record again: checking stops
    await node.settled()


async def test_a_member_that_really_moved_is_followed(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    moved = dataclasses.replace(b, port=8)
    node.greeter.listen(moved)
    node.table.upsert(moved)
    await node.settled()
    assert node.membership.get(NodeId("b")) == moved


async def test_a_forged_run_at_the_members_endpoint_is_ignored(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    before = node.changes
    node.table.upsert(dataclasses.replace(b, incarnation=99))  # b answers with run 1
    await node.settled()
    assert node.membership.get(NodeId("b")) == b and node.changes == before


async def test_a_restarted_member_is_replaced_by_its_new_run(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    del node.greeter.nodes[b.endpoint]
    restarted = record("b", 4, inc=2)
    node.greeter.listen(restarted)
    node.table.upsert(restarted)
    await node.settled()
    assert node.membership.get(NodeId("b")) == restarted


async def test_a_second_node_with_a_members_id_does_not_replace_it(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.mesh.vetting")
    b = record("b", 2)
    await node.member(b)
    twin = record("b", 4, inc=2)  # another device given the name b: it answers too
    node.greeter.listen(twin)
    node.table.upsert(twin)
    await node.asked(twin.endpoint, 3)
    assert node.membership.get(NodeId("b")) == b
    assert sum("two nodes claim node id b" in r.getMessage() for r in caplog.records) == 1
    del node.greeter.nodes[b.endpoint]  # the member goes away: the other takes over
    await node.settled()
    assert node.membership.get(NodeId("b")) == twin


async def test_an_incompatible_record_of_a_member_is_a_goodbye_to_check(node: Node) -> None:
    b = record("b", 2)
    await node.member(b)
    before = node.changes
    # Discovery drops a record of another cluster: to the vetting, b "left".
    node.table.remove(NodeId("b"))
    await node.settled()
    assert node.membership.alive == (b,) and node.changes == before
    other = record("d", 6, cluster="other")
    node.greeter.listen(other)
    node.table.upsert(dataclasses.replace(other, cluster="home"))  # forged TXT, true answer
    await node.asked(other.endpoint, 2)
    assert node.membership.get(NodeId("d")) is None


async def test_a_node_that_started_later_than_its_twin_stops(node: Node) -> None:
    earlier = record("a", 3, inc=4)  # started_ms 1004 < the local node's 1005
    node.greeter.listen(earlier)
    node.table.twin(earlier)
    assert node.task is not None
    with pytest.raises(ExceptionGroup) as raised:
        async with asyncio.timeout(DEADLINE_S):
            await node.task
    (error,) = raised.value.exceptions
    assert isinstance(error, DuplicateNodeId)
    assert "127.0.0.1:3" in str(error) and "'a'" in str(error)


async def test_a_node_that_started_first_keeps_running_beside_a_twin(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgenode.mesh.vetting")
    later = record("a", 3, inc=6)
    node.greeter.listen(later)
    node.table.twin(later)
    await node.settled()
    assert node.task is not None and not node.task.done()
    assert any("it started later and should stop" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("port", [1, 9], ids=["our own endpoint", "nobody there"])
async def test_a_forged_record_of_our_own_id_does_not_stop_us(node: Node, port: int) -> None:
    node.table.twin(record("a", port, inc=1))  # started "earlier", but nobody proves it
    calls = node.greeter.calls
    await node.until(
        lambda: calls[at(port)] >= 3 or node.events.queued == node.vetting.pending == 0, "checked"
    )
    assert node.task is not None and not node.task.done()


async def test_a_node_of_another_cluster_with_our_name_does_not_stop_us(node: Node) -> None:
    stranger = record("a", 3, inc=1, cluster="neighbours")  # started earlier, answers
    node.greeter.listen(stranger)
    node.table.twin(dataclasses.replace(stranger, cluster="home"))  # its TXT says ours
    await node.settled()
    assert node.task is not None and not node.task.done()


async def test_a_member_that_measured_its_link_again_is_asked_and_updated(node: Node) -> None:
    """Its new capacity comes from Hello; a forged capacity changes nothing but one Hello."""
    b = record("b", 2)
    await node.member(b)
    measured = record(
        "b", 2, capacity=Capacity(speed=1e9, memory_bytes=2**30, link_bytes_per_s=4e6)
    )
    node.greeter.listen(measured)
    asked = node.greeter.calls[at(2)]
    node.table.upsert(measured)
    await node.settled()
    assert node.membership.get(NodeId("b")) == measured
    assert node.greeter.calls[at(2)] == asked + 1
    forged = record("b", 2, capacity=Capacity(speed=1e9, memory_bytes=2**30, link_bytes_per_s=1.0))
    node.table.upsert(forged)
    await node.settled()
    assert node.membership.get(NodeId("b")) == measured
    node.table.upsert(dataclasses.replace(measured, name="renamed"))  # nothing the plan uses
    await node.settled()
    assert node.greeter.calls[at(2)] == asked + 2
