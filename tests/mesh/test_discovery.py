"""Behaviour every Discovery implementation shares: run against memory, static and zeroconf."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from edgenode.errors import UsageError
from edgenode.mesh import Capacity, Membership, PeerEvent, PeerEventKind, new_incarnation

from .conftest import eventually, next_event

JOINED, UPDATED, LEFT = PeerEventKind.JOINED, PeerEventKind.UPDATED, PeerEventKind.LEFT


async def test_peers_find_each_other_and_not_themselves(backend):
    infos = [backend.info(i) for i in range(3)]
    nodes = [await backend.start(info) for info in infos]
    for node in nodes:
        others = {i.node_id: i for i in infos if i.node_id != node.local.node_id}
        await eventually(lambda n=node, o=others: n.peers() == o, f"{node.local.node_id} peers")
    assert all(node.local.node_id not in node.peers() for node in nodes)


async def test_record_round_trips(backend):
    a = await backend.start(backend.info(0))
    b_info = backend.info(1, name="kitchen pi ✓", capacity=Capacity(speed=0.1, memory_bytes=7))
    await backend.start(b_info)
    await eventually(lambda: b_info.node_id in a.peers(), "b seen by a")
    assert a.peers()[b_info.node_id] == b_info


async def test_events_start_with_the_known_peers_then_follow_changes(backend):
    a = await backend.start(backend.info(0))
    early = a.events()
    b_info, c_info = backend.info(1), backend.info(2)
    await backend.start(b_info)
    assert await next_event(early) == PeerEvent(JOINED, b_info)
    late = a.events()
    assert await next_event(late) == PeerEvent(JOINED, b_info)
    await backend.start(c_info)
    assert await next_event(early) == PeerEvent(JOINED, c_info)
    assert await next_event(late) == PeerEvent(JOINED, c_info)
    late.close()
    assert [e async for e in late] == []


async def test_incompatible_peers_are_ignored(backend, mesh_logs):
    a = await backend.start(backend.info(0))
    odd = {
        "other cluster": backend.info(1, cluster="elsewhere"),
        "protocol version 2": backend.info(2, protocol=2),
        "model cdcd": backend.info(3, manifest_identity="cd" * 32),
    }
    for info in odd.values():
        await backend.start(info)
    good = backend.info(4)
    await backend.start(good)

    def logged(node_id, reason):
        return any(
            r.levelno == logging.INFO and f"ignoring peer {node_id}" in m and reason in m
            for r in mesh_logs.records
            for m in [r.getMessage()]
        )

    await eventually(lambda: good.node_id in a.peers(), "the compatible peer")
    for reason, info in odd.items():
        await eventually(lambda i=info, r=reason: logged(i.node_id, r), f"log of {reason}")
    assert set(a.peers()) == {good.node_id}
    ours = [r for r in mesh_logs.records if backend.suffix in r.getMessage()]
    assert not [r for r in ours if r.levelno >= logging.WARNING]


async def test_an_ignored_peer_is_logged_once_at_info(backend, mesh_logs):
    a = await backend.start(backend.info(0))
    odd_info = backend.info(1, cluster="elsewhere")
    odd = await backend.start(odd_info)
    about_odd = f"ignoring peer {odd_info.node_id}"

    def levels():
        return [r.levelno for r in mesh_logs.records if about_odd in r.getMessage()]

    await eventually(lambda: logging.INFO in levels(), "the first log")
    await odd.announce(replace(odd_info, capacity=Capacity(speed=3.0, memory_bytes=1)))
    await eventually(lambda: logging.DEBUG in levels(), "the repeated log")
    assert levels().count(logging.INFO) == 1
    assert a.peers() == {}


async def test_graceful_departure_is_left(backend):
    a = await backend.start(backend.info(0))
    events = a.events()
    b_info = backend.info(1)
    b = await backend.start(b_info)
    assert await next_event(events) == PeerEvent(JOINED, b_info)
    await b.close()
    assert await next_event(events) == PeerEvent(LEFT, b_info)
    assert a.peers() == {}


async def test_announced_change_is_updated(backend):
    a = await backend.start(backend.info(0))
    events = a.events()
    b_info = backend.info(1)
    b = await backend.start(b_info)
    assert await next_event(events) == PeerEvent(JOINED, b_info)
    for speed in (5.5, 7.25):  # twice: the second update follows the first closely
        b_info = replace(b_info, capacity=Capacity(speed=speed, memory_bytes=123))
        await b.announce(b_info)
        assert await next_event(events) == PeerEvent(UPDATED, b_info)
    assert a.peers()[b_info.node_id] == b_info


async def test_announce_cannot_change_identity(backend):
    info = backend.info(0)
    a = await backend.start(info)
    for change in (
        {"cluster": "other"},
        {"protocol": 9},
        {"manifest_identity": "ef" * 32},
        {"incarnation": new_incarnation()},
    ):
        with pytest.raises(UsageError, match=next(iter(change))):
            await a.announce(replace(info, **change))
    assert a.local == info


async def test_marked_dead_stays_out_until_a_new_incarnation(backend):
    a_info, b_info = backend.info(0), backend.info(1)
    a = await backend.start(a_info)
    events = a.events()
    b = await backend.start(b_info)
    membership = Membership.of(a_info).apply(await next_event(events))
    assert membership.node_ids == (a_info.node_id, b_info.node_id)

    membership = membership.mark_dead(b_info.node_id)  # the gRPC layer saw b's streams fail
    assert membership.node_ids == (a_info.node_id,)
    refreshed = replace(b_info, capacity=Capacity(speed=9.0, memory_bytes=1))
    await b.announce(refreshed)  # same run: a lingering or refreshed record does not revive it
    event = await next_event(events)
    assert event == PeerEvent(UPDATED, refreshed)
    membership = membership.apply(event)
    assert membership.node_ids == (a_info.node_id,)
    assert membership.is_dead(b_info.node_id)

    await b.close()
    reborn = replace(b_info, incarnation=new_incarnation())
    await backend.start(reborn)
    while membership.node_ids != (a_info.node_id, b_info.node_id):
        membership = membership.apply(await next_event(events))
    assert membership.get(b_info.node_id) == reborn
    assert not membership.is_dead(b_info.node_id)


async def test_close_ends_iteration_and_is_idempotent(backend):
    a = await backend.start(backend.info(0))
    events = a.events()
    await a.close()
    await a.close()
    assert [e async for e in events] == []
    assert [e async for e in a.events()] == []
    assert a.peers() == {}
    with pytest.raises(UsageError):
        await a.start()


async def test_context_manager_starts_and_closes(backend):
    a = await backend.start(backend.info(0))
    b_info = backend.info(1)
    async with backend.create(b_info) as b:
        await eventually(lambda: b_info.node_id in a.peers(), "b seen")
        assert b.local == b_info
    await eventually(lambda: a.peers() == {}, "b gone")


async def test_announce_before_start_is_what_starts(backend):
    a = await backend.start(backend.info(0))
    b_info = backend.info(1)
    b = backend.create(b_info)
    changed = replace(b_info, name="renamed", capacity=Capacity(speed=4.0, memory_bytes=9))
    await b.announce(changed)
    await b.start()
    await eventually(lambda: a.peers().get(b_info.node_id) == changed, "the changed record")
