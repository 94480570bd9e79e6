"""Fixtures for mesh tests: peer records, one factory per discovery implementation, waiting."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from edgenode.errors import PeerUnavailable
from edgenode.mesh import (
    Capacity,
    Discovery,
    Endpoint,
    InMemoryNetwork,
    NodeId,
    PeerEvent,
    PeerEvents,
    PeerInfo,
    StaticDiscovery,
    ZeroconfDiscovery,
    new_incarnation,
)

DEADLINE_S = 5.0  # generous: discovery on loopback takes milliseconds to ~1.2 s
LOOPBACK = "127.0.0.1"
BASE_PORT = 47000
STATIC_SLOTS = 8  # the static backend lists endpoints of node indexes 0..STATIC_SLOTS-1
MODEL = "ab" * 32
OTHER_MODEL = "cd" * 32


def make_info(suffix: str, index: int, **changes: object) -> PeerInfo:
    """Node `index` of a test: unique id, its own port on 127.0.0.1, the test's cluster."""
    info = PeerInfo(
        node_id=NodeId(f"n{index}-{suffix}"),
        name=f"node {index}",
        addresses=(LOOPBACK,),
        port=BASE_PORT + index,
        protocol=1,
        cluster=f"test-{suffix}",
        manifest_identity=MODEL,
        capacity=Capacity(speed=1.0 + index, memory_bytes=(index + 1) * 2**30),
        incarnation=new_incarnation(),
    )
    return replace(info, **changes)  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], object], what: str, timeout: float = DEADLINE_S):
    """Poll `predicate` until it is true; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def next_event(events: PeerEvents, timeout: float = DEADLINE_S) -> PeerEvent:
    """The next event, or fail after `timeout` seconds."""
    return await asyncio.wait_for(anext(events), timeout)


class Backend:
    """Creates discoveries of one implementation and closes them all at the end."""

    name = ""

    def __init__(self) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.created: list[Discovery] = []

    def info(self, index: int, **changes: object) -> PeerInfo:
        return make_info(self.suffix, index, **changes)

    def create(self, info: PeerInfo) -> Discovery:
        discovery = self._create(info)
        self.created.append(discovery)
        return discovery

    async def start(self, info: PeerInfo) -> Discovery:
        discovery = self.create(info)
        await discovery.start()
        return discovery

    def _create(self, info: PeerInfo) -> Discovery:
        raise NotImplementedError

    async def aclose(self) -> None:
        await asyncio.gather(*(d.close() for d in self.created))


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.network = InMemoryNetwork()

    def _create(self, info: PeerInfo) -> Discovery:
        return self.network.discovery(info)


class ZeroconfBackend(Backend):
    name = "zeroconf"

    def _create(self, info: PeerInfo) -> Discovery:
        return ZeroconfDiscovery(info, interfaces=[LOOPBACK])


class StaticBackend(Backend):
    """StaticDiscovery over a fake hello: a probe of an endpoint returns the record of the
    latest open discovery created for that endpoint, as a node's gRPC server would."""

    name = "static"

    def __init__(self) -> None:
        super().__init__()
        self.listening: dict[Endpoint, StaticDiscovery] = {}
        self.closed: set[int] = set()

    async def probe(self, endpoint: Endpoint) -> PeerInfo:
        node = self.listening.get(endpoint)
        if node is None or id(node) in self.closed:
            raise PeerUnavailable(f"nobody at {endpoint}")
        return node.local

    def _create(self, info: PeerInfo) -> Discovery:
        endpoints = [Endpoint(host=LOOPBACK, port=BASE_PORT + i) for i in range(STATIC_SLOTS)]
        node = _TrackedStatic(self, info, endpoints)
        self.listening[info.endpoint] = node
        return node


class _TrackedStatic(StaticDiscovery):
    def __init__(self, backend: StaticBackend, info: PeerInfo, endpoints: list[Endpoint]):
        super().__init__(
            info, endpoints, backend.probe, interval_s=0.02, timeout_s=0.5, left_after_misses=2
        )
        self._backend = backend

    async def close(self) -> None:
        self._backend.closed.add(id(self))  # stops answering probes, like a stopped server
        await super().close()


BACKENDS = {b.name: b for b in (MemoryBackend, ZeroconfBackend, StaticBackend)}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    made = BACKENDS[request.param]()
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def zc_backend() -> AsyncIterator[ZeroconfBackend]:
    made = ZeroconfBackend()
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
def mesh_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="edgenode.mesh")
    return caplog
