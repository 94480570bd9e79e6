"""What only the in-memory and static discoveries do: crashes, probing, several endpoints."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from edgenode.errors import PeerUnavailable, UsageError
from edgenode.mesh import (
    Capacity,
    Endpoint,
    InMemoryNetwork,
    Membership,
    PeerEvent,
    PeerEventKind,
    PeerInfo,
    StaticDiscovery,
    new_incarnation,
)

from .conftest import eventually, make_info, next_event

JOINED, UPDATED, LEFT = PeerEventKind.JOINED, PeerEventKind.UPDATED, PeerEventKind.LEFT


@pytest.fixture
async def network():
    net = InMemoryNetwork()
    opened = []

    def start(info):
        discovery = net.discovery(info)
        opened.append(discovery)
        return discovery

    net.open = start
    try:
        yield net
    finally:
        for discovery in opened:
            await discovery.close()


async def test_crash_leaves_the_record_until_marked_dead(network):
    a_info, b_info = make_info("m", 0), make_info("m", 1)
    a = network.open(a_info)
    await a.start()
    events = a.events()
    b = network.open(b_info)
    await b.start()
    b_events = b.events()
    membership = Membership.of(a_info).apply(await next_event(events))

    network.crash(b_info.node_id)
    assert [e async for e in b_events] == [PeerEvent(JOINED, a_info)]  # b's view just ends
    assert b_info.node_id in a.peers()  # like a zeroconf cache after kill -9
    assert network.node_ids == (a_info.node_id,)
    membership = membership.mark_dead(b_info.node_id)
    assert membership.node_ids == (a_info.node_id,)

    reborn = replace(b_info, incarnation=new_incarnation())
    await network.open(reborn).start()
    assert await next_event(events) == PeerEvent(LEFT, b_info)
    assert await next_event(events) == PeerEvent(JOINED, reborn)
    for event in (PeerEvent(LEFT, b_info), PeerEvent(JOINED, reborn)):
        membership = membership.apply(event)
    assert membership.members == (a_info, reborn)


async def test_memory_refuses_a_duplicate_node_id(network):
    info = make_info("m", 0)
    await network.open(info).start()
    with pytest.raises(UsageError, match="already announced"):
        await network.open(replace(info, incarnation=new_incarnation())).start()
    with pytest.raises(UsageError):
        network.crash("nobody")


async def test_memory_probe_answers_like_a_hello(network):
    info = make_info("m", 0)
    assert network.node_ids == ()
    await network.open(info).start()
    assert await network.probe(info.endpoint) == info
    with pytest.raises(PeerUnavailable):
        await network.probe(Endpoint(host="127.0.0.1", port=1))


class Answers:
    """A prober with canned answers per endpoint: a PeerInfo, an exception, or a delay."""

    def __init__(self) -> None:
        self.at: dict[Endpoint, PeerInfo | BaseException | float] = {}
        self.calls = 0

    async def __call__(self, endpoint: Endpoint) -> PeerInfo:
        self.calls += 1
        answer = self.at.get(endpoint, PeerUnavailable(f"nobody at {endpoint}"))
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            raise AssertionError("the probe should have timed out")
        if isinstance(answer, BaseException):
            raise answer
        return answer


E1, E2, E3 = (Endpoint(host=f"10.0.0.{i}", port=50051) for i in (1, 2, 3))


@pytest.fixture
async def static():
    """Start a StaticDiscovery of node 0 over E1..E3 after its first probe round."""
    opened = []

    async def start(answers, local=None, **kwargs):
        local = local or make_info("s", 0)
        discovery = StaticDiscovery(
            local, [str(E1), E2, "10.0.0.3:50051", E1], answers, interval_s=3600, **kwargs
        )
        opened.append(discovery)
        events = discovery.events()
        await discovery.start()
        await eventually(lambda: answers.calls >= 3, "the first probe round")
        return discovery, events

    try:
        yield start
    finally:
        for discovery in opened:
            await discovery.close()


async def test_static_candidates_are_parsed_and_deduplicated(static):
    discovery, _ = await static(Answers())
    assert discovery.candidates == (E1, E2, E3)


async def test_static_peer_under_two_endpoints_stays_put(static):
    answers = Answers()
    peer = make_info("s", 1, addresses=("192.168.9.9",))
    answers.at = {E1: peer, E2: peer}
    discovery, events = await static(answers)
    at_e1 = replace(peer, addresses=(E1.host,), port=E1.port)
    assert await next_event(events) == PeerEvent(JOINED, at_e1)
    await discovery.refresh()
    assert events.pending() == []  # no flapping between E1 and E2

    answers.at[E1] = PeerUnavailable("gone")
    await discovery.refresh()
    await discovery.refresh()  # left_after_misses = 2
    at_e2 = replace(peer, addresses=(E2.host,), port=E2.port)
    await discovery.refresh()
    assert events.pending() == [PeerEvent(UPDATED, at_e2)]


async def test_static_silence_is_left_and_unreachable_is_logged_once(static, mesh_logs):
    answers = Answers()
    peer = make_info("s", 1)
    answers.at = {E1: peer}
    discovery, events = await static(answers, left_after_misses=2, timeout_s=0.05)
    at_e1 = replace(peer, addresses=(E1.host,), port=E1.port)
    assert await next_event(events) == PeerEvent(JOINED, at_e1)
    answers.at[E1] = 5.0  # hangs: the probe times out
    await discovery.refresh()
    assert events.pending() == []
    await discovery.refresh()
    assert events.pending() == [PeerEvent(LEFT, at_e1)]
    about_e3 = [r.levelno for r in mesh_logs.records if str(E3) in r.getMessage()]
    assert about_e3[0] == logging.INFO
    assert set(about_e3[1:]) == {logging.DEBUG}
    about_e1 = [r.levelno for r in mesh_logs.records if f"peer {E1} does not" in r.getMessage()]
    assert about_e1[0] == logging.WARNING  # it used to answer


async def test_static_another_node_at_the_same_endpoint(static):
    answers = Answers()
    old, new = make_info("s", 1), make_info("s", 2)
    answers.at = {E1: old}
    discovery, events = await static(answers)
    assert (await next_event(events)).kind is JOINED
    answers.at[E1] = new
    await discovery.refresh()
    kinds = [(e.kind, e.peer.node_id) for e in events.pending()]
    assert kinds == [(LEFT, old.node_id), (JOINED, new.node_id)]


async def test_static_ignores_itself_and_incompatible_answers(static):
    answers = Answers()
    local = make_info("s", 0)
    answers.at = {
        E1: local,  # ourselves: every node may share one list
        E2: make_info("s", 1, cluster="elsewhere"),
        E3: make_info("s", 2, capacity=Capacity(speed=2.0, memory_bytes=5)),
    }
    discovery, _ = await static(answers, local=local)
    await eventually(lambda: len(discovery.peers()) == 1, "the compatible peer")
    assert [p.node_id for p in discovery.peers().values()] == [make_info("s", 2).node_id]


def test_static_rejects_bad_settings():
    async def never(endpoint):
        raise AssertionError

    local = make_info("s", 0)
    with pytest.raises(UsageError):
        StaticDiscovery(local, ["no-port"], never)
    with pytest.raises(UsageError):
        StaticDiscovery(local, [], never, interval_s=0)
    with pytest.raises(UsageError):
        StaticDiscovery(local, [], never, left_after_misses=0)
