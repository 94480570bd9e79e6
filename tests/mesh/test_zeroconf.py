"""ZeroconfDiscovery on the loopback interface: rogue records, timing, interfaces, processes."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edgenode.errors import UsageError
from edgenode.mesh import (
    SERVICE_TYPE,
    DiscoveryError,
    Membership,
    PeerEvent,
    PeerEventKind,
    ZeroconfDiscovery,
    encode_txt,
    local_addresses,
    new_incarnation,
)
from edgenode.mesh.discovery import host_label

from .conftest import LOOPBACK, eventually, next_event

ROOT = Path(__file__).resolve().parents[2]
JOIN_DEADLINE_S = 2.0  # DESIGN.md: a node that joins is serving within 2 s
# For tests of what happens, not how fast: child processes start (Python, zeroconf) in
# ~1 s on an idle machine but several times that beside a loaded test run.
PROCESS_DEADLINE_S = 30.0


@pytest.fixture
async def rogue():
    """A bare zeroconf instance that advertises whatever TXT bytes a test gives it."""
    aiozc = AsyncZeroconf(interfaces=[LOOPBACK])
    try:
        yield aiozc
    finally:
        await aiozc.async_close()


def raw_service(label: str, text: bytes, port: int = 47999) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=port,
        properties=text,
        server=f"{label}.local.",
        parsed_addresses=[LOOPBACK],
    )


def warnings_about(logs, name):
    return [r for r in logs.records if r.levelno == logging.WARNING and name in r.getMessage()]


async def test_malformed_records_are_ignored_and_warned_once(zc_backend, rogue, mesh_logs):
    a = await zc_backend.start(zc_backend.info(0))
    good = zc_backend.info(1)
    impostor = zc_backend.info(2)  # a valid record, advertised under someone else's name
    bad = {
        f"rogue-frame-{zc_backend.suffix}": b"\x40id=cut short",
        f"rogue-keys-{zc_backend.suffix}": b"\x05hello",
        f"rogue-utf8-{zc_backend.suffix}": encode_txt(good).replace(b"n=node 1", b"n=node\xff1"),
        f"rogue-name-{zc_backend.suffix}": encode_txt(impostor),
    }
    for label, text in bad.items():
        await rogue.async_register_service(raw_service(label, text), cooperating_responders=True)
    await zc_backend.start(good)
    await eventually(lambda: good.node_id in a.peers(), "the good peer")
    for label in bad:
        await eventually(lambda n=label: warnings_about(mesh_logs, n), f"warning about {label}")
    assert set(a.peers()) == {good.node_id}

    # The same rogue again, with different garbage: ignored, logged at DEBUG only.
    label = f"rogue-frame-{zc_backend.suffix}"
    mesh_logs.clear()
    await rogue.async_update_service(raw_service(label, b"\x03v=1\x40again"))
    await eventually(
        lambda: any(label in r.getMessage() for r in mesh_logs.records), "the repeated log"
    )
    assert not warnings_about(mesh_logs, label)
    assert set(a.peers()) == {good.node_id}


async def test_known_peer_whose_record_turns_malformed_leaves(zc_backend, rogue, mesh_logs):
    a = await zc_backend.start(zc_backend.info(0))
    events = a.events()
    peer = zc_backend.info(1)
    label = host_label(peer.node_id, peer.cluster)
    await rogue.async_register_service(
        raw_service(label, encode_txt(peer), port=peer.port), cooperating_responders=True
    )
    assert await next_event(events) == PeerEvent(PeerEventKind.JOINED, peer)
    await rogue.async_update_service(raw_service(label, b"\x04id=x", port=peer.port))
    assert await next_event(events) == PeerEvent(PeerEventKind.LEFT, peer)
    assert warnings_about(mesh_logs, peer.node_id)


async def test_other_protocol_with_unknown_keys_is_ignored_not_malformed(
    zc_backend, rogue, mesh_logs
):
    a = await zc_backend.start(zc_backend.info(0))
    label = f"future-{zc_backend.suffix}"
    await rogue.async_register_service(
        raw_service(label, b"\x03v=9\x0enew-schema=yes"), cooperating_responders=True
    )
    await eventually(
        lambda: any(
            r.levelno == logging.INFO and label in r.getMessage() and "version 9" in r.getMessage()
            for r in mesh_logs.records
        ),
        "the ignore log",
    )
    assert not warnings_about(mesh_logs, label)
    assert a.peers() == {}


async def test_join_time_on_loopback(zc_backend):
    """Both directions within JOIN_DEADLINE_S; typically well under 0.5 s (see the report)."""
    a = await zc_backend.start(zc_backend.info(0))
    b_info = zc_backend.info(1)
    started = time.monotonic()
    b = await zc_backend.start(b_info)
    await eventually(
        lambda: b_info.node_id in a.peers() and a.local.node_id in b.peers(),
        "discovery both ways",
        timeout=JOIN_DEADLINE_S,
    )
    logging.getLogger(__name__).info("joined in %.0f ms", (time.monotonic() - started) * 1000)


def test_interfaces_are_validated(zc_backend):
    info = zc_backend.info(0)
    for interfaces in ("127.0.0.1", [], ["eth0"], ["127.0.0.1", "nope"]):
        with pytest.raises(UsageError, match="interfaces"):
            ZeroconfDiscovery(info, interfaces=interfaces)
    with pytest.raises(UsageError, match="IP addresses only"):
        ZeroconfDiscovery(info.__class__(**{**_fields(info), "addresses": ("pi.local",)}))


def _fields(info):
    return {f: getattr(info, f) for f in info.__dataclass_fields__}


async def test_an_interface_that_does_not_exist_fails_start_cleanly(zc_backend):
    discovery = ZeroconfDiscovery(zc_backend.info(0), interfaces=["198.51.100.7"])
    with pytest.raises(DiscoveryError, match="no interface has address"):
        await discovery.start()
    await discovery.close()


def test_local_addresses():
    assert local_addresses(["127.0.0.1", "::1"]) == ("127.0.0.1", "::1")
    found = local_addresses("all")
    assert found
    assert all(not a.startswith("127.") for a in found) or found == ("127.0.0.1",)


class Child:
    """An advertiser process (tests/mesh/_advertiser.py) and the JSON lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []

    @classmethod
    async def spawn(cls, node_id: str, cluster: str, port: int) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.mesh._advertiser",
            f"--node-id={node_id}",
            f"--cluster={cluster}",
            f"--port={port}",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, **fields) -> dict:
        """Read lines until one has all `fields`; fail at the deadline."""
        for line in self.lines:
            if fields.items() <= line.items():
                return line
        async with asyncio.timeout(PROCESS_DEADLINE_S):
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, f"child exited early with {await self.proc.wait()}"
                line = json.loads(raw)
                self.lines.append(line)
                if fields.items() <= line.items():
                    return line

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        rest = await self.proc.stdout.read()
        self.lines += [json.loads(line) for line in rest.splitlines()]
        return await self.proc.wait()


@pytest.fixture
async def children():
    spawned: list[Child] = []
    try:
        yield spawned
    finally:
        for child in spawned:
            await child.stop(signal.SIGKILL)


@pytest.mark.slow
async def test_separate_processes(zc_backend, children):
    """Real processes: discovery both ways, SIGTERM is a goodbye, SIGKILL leaves the record
    behind until the membership marks it dead, and a restart is a new incarnation."""
    cluster = f"test-{zc_backend.suffix}"
    parent_info = zc_backend.info(0)
    parent = await zc_backend.start(parent_info)
    events = parent.events()
    ids = [f"c{i}-{zc_backend.suffix}" for i in (1, 2)]
    for i, node_id in enumerate(ids, start=1):
        children.append(await Child.spawn(node_id, cluster, 47100 + i))
    first, second = children
    for child in children:
        await child.expect(event="ready")
    await eventually(
        lambda: set(parent.peers()) == set(ids), "parent sees both children", PROCESS_DEADLINE_S
    )
    await first.expect(event="joined", node_id=ids[1])
    await first.expect(event="joined", node_id=parent_info.node_id)
    await second.expect(event="joined", node_id=ids[0])
    await second.expect(event="joined", node_id=parent_info.node_id)
    membership = Membership.of(parent_info)
    for _ in ids:
        membership = membership.apply(await next_event(events, PROCESS_DEADLINE_S))
    assert membership.node_ids == tuple(sorted([parent_info.node_id, *ids]))

    assert await first.stop(signal.SIGTERM) == 0
    assert first.lines[-1] == {"event": "closed"}
    event = await next_event(events, PROCESS_DEADLINE_S)
    assert (event.kind, event.peer.node_id) == (PeerEventKind.LEFT, ids[0])
    membership = membership.apply(event)

    await second.stop(signal.SIGKILL)
    old_incarnation = parent.peers()[ids[1]].incarnation  # no goodbye: the record lingers
    membership = membership.mark_dead(ids[1], incarnation=old_incarnation)
    assert membership.node_ids == (parent_info.node_id,)

    children.append(await Child.spawn(ids[1], cluster, 47102))
    reborn = await children[-1].expect(event="ready")
    while membership.node_ids != tuple(sorted([parent_info.node_id, ids[1]])):
        membership = membership.apply(await next_event(events, PROCESS_DEADLINE_S))
    assert membership.get(ids[1]).incarnation == reborn["incarnation"] != old_incarnation
    await children[-1].expect(event="joined", node_id=parent_info.node_id)


async def test_a_record_claiming_our_id_is_a_twin_event_never_a_peer(zc_backend) -> None:
    """Two devices given one name: each hears the other's record as a TWIN, which the
    vetting checks (edgenode/mesh/vetting.py); neither lists it among its peers."""
    a_info = zc_backend.info(0)
    a = await zc_backend.start(a_info)
    events = a.events()
    twin = replace(a_info, port=a_info.port + 100, incarnation=new_incarnation())
    b = await zc_backend.start(twin)
    event = await next_event(events)
    assert (event.kind, event.peer.port, event.peer.incarnation) == (
        PeerEventKind.TWIN,
        twin.port,
        twin.incarnation,
    )
    assert a.peers() == {}
    # The later one asked for its own name before announcing it, so it knows of the first
    # for certain (after both announce, their records share one name and mix in caches);
    # a subscriber that comes after start() still hears of it.
    first = await next_event(b.events())
    assert (first.kind, first.peer.port, first.peer.incarnation) == (
        PeerEventKind.TWIN,
        a_info.port,
        a_info.incarnation,
    )
    assert b.peers() == {}
