"""measure_link: this node's link, measured with peers, rounded, published only on change.

The membership is the real one; the prober is a complete in-memory stand-in (a rate per
peer, or a failure); sleeping is a step the test drives, so no time passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest

from edgenode.errors import PeerUnavailable
from edgenode.mesh import Endpoint, PeerEvent, PeerEventKind, PeerInfo
from edgenode.mesh.membership import Membership
from edgenode.runtime.linkmeter import PROBE_ATTEMPTS, PROBES_PER_ROUND, RETRY_S, measure_link
from tests.runtime.fakes import chain_manifest, peer_info

MANIFEST = chain_manifest(2)
GIGABIT = 125e6  # bytes/s: the cluster's link
MBIT = 1e6 / 8


@dataclass
class Rig:
    membership: Membership
    rates: dict[int, float | None] = field(default_factory=dict)  # by port; None: fails
    probed: list[int] = field(default_factory=list)
    published: list[PeerInfo] = field(default_factory=list)
    naps: asyncio.Queue[float] = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    now: float = 0.0  # the meter's clock: moved by its naps only

    async def probe(self, endpoint: Endpoint) -> float:
        self.probed.append(endpoint.port)
        rate = self.rates[endpoint.port]
        if rate is None:
            raise PeerUnavailable(f"{endpoint}: connection refused")
        return rate

    async def publish(self, info: PeerInfo) -> None:
        self.published.append(info)
        self.membership = self.membership.with_local(info)

    async def sleep(self, seconds: float) -> None:
        await self.naps.put(seconds)
        await self.wake.wait()
        self.wake.clear()
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def join(self, node_id: str, port: int, rate: float | None) -> None:
        self.rates[port] = rate
        peer = peer_info(node_id, port, MANIFEST)
        peer = replace(peer, addresses=(f"198.18.0.{port}",))  # another host of the lab range
        self.membership = self.membership.apply(PeerEvent(PeerEventKind.JOINED, peer))

    async def nap(self) -> float:
        """Until the meter sleeps: how long it asked for."""
        return await asyncio.wait_for(self.naps.get(), 5)

    def go_on(self) -> None:
        self.wake.set()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig(Membership.of(peer_info("me", 1, MANIFEST)))
    task = asyncio.create_task(
        measure_link(
            membership=lambda: rig.membership,
            publish=rig.publish,
            prober=rig,
            cap_bytes_per_s=GIGABIT,
            refresh_s=600.0,
            sleep=rig.sleep,
            clock=rig.clock,
            jitter=lambda: 1.0,
        )
    )
    yield rig
    task.cancel()


def link_of(info: PeerInfo) -> float:
    return info.capacity.link_bytes_per_s


async def test_alone_it_waits_then_measures_the_first_peer(rig: Rig) -> None:
    assert await rig.nap() == 0.5 and rig.probed == []
    rig.join("b", 2, 31 * MBIT)  # Wi-Fi: 31 Mbit/s measured
    rig.go_on()
    assert await rig.nap() == 0.5  # then it waits for peers it has not measured
    assert rig.probed == [2]
    assert [link_of(p) for p in rig.published] == [32 * MBIT]  # rounded: 32 Mbit/s
    assert link_of(rig.membership.local) == 32 * MBIT


async def test_each_new_peer_is_measured_and_the_fastest_counts(rig: Rig) -> None:
    """A transfer runs at the slower end's speed: a first peer on a slow link must not pin
    this node's link for ten minutes."""
    await rig.nap()
    rig.join("b", 2, 7.5 * MBIT)  # b's own link is slow
    rig.go_on()
    await rig.nap()
    assert [link_of(p) for p in rig.published] == [8 * MBIT]
    rig.join("c", 3, 29 * MBIT)
    rig.join("d", 4, None)  # does not answer
    rig.go_on()
    await rig.nap()
    assert rig.probed == [2, 3, 4]
    assert [link_of(p) for p in rig.published] == [8 * MBIT, 32 * MBIT]
    rig.rates.update({2: 33 * MBIT, 3: 30 * MBIT})  # jitter: not measured again ...
    rig.go_on()
    await rig.nap()
    assert rig.probed == [2, 3, 4] and len(rig.published) == 2
    rig.now = 600.0  # ... until the period ends: then every peer again
    rig.rates.update({2: 90 * MBIT, 3: 100 * MBIT, 4: 95 * MBIT})
    rig.go_on()
    await rig.nap()
    assert sorted(rig.probed[3:]) == [2, 3, 4]
    assert [link_of(p) for p in rig.published] == [8 * MBIT, 32 * MBIT, 128 * MBIT]


async def test_a_link_as_fast_as_the_clusters_is_not_published(rig: Rig) -> None:
    await rig.nap()
    rig.join("b", 2, 9.4e9 / 8)  # loopback
    rig.go_on()
    assert await rig.nap() == 0.5
    assert rig.probed == [2]
    assert rig.published == [] and link_of(rig.membership.local) == 0


async def test_a_failed_probe_is_tried_again_later_and_given_up_on(rig: Rig) -> None:
    """A busy peer (measuring another node's link) is asked again after RETRY_S times the
    tries so far, while the others' rates stand; after PROBE_ATTEMPTS, not this period."""
    await rig.nap()
    rig.join("b", 2, None)  # busy
    rig.join("c", 3, 7 * MBIT)
    rig.go_on()
    await rig.nap()
    assert rig.probed == [2, 3] and [link_of(p) for p in rig.published] == [8 * MBIT]
    rig.rates[2] = 30 * MBIT  # free now
    waited = 0.5
    while rig.probed.count(2) < 2:  # naps of WAIT_FOR_PEER_S until b is due again
        rig.go_on()
        waited += await rig.nap()
    assert waited == pytest.approx(RETRY_S + 0.5)
    assert [link_of(p) for p in rig.published] == [8 * MBIT, 32 * MBIT]
    rig.join("d", 4, None)  # never answers
    for _ in range(100):
        rig.go_on()
        await rig.nap()
    assert rig.probed.count(4) == PROBE_ATTEMPTS
    rig.now += 600.0  # a new period: tried again
    rig.go_on()
    await rig.nap()
    assert rig.probed.count(4) == PROBE_ATTEMPTS + 1


async def test_nodes_started_together_probe_around_a_ring(rig: Rig) -> None:
    """Peers are probed in node-id order starting after this node's own id ("me"): each
    node of a cluster started at once probes a different peer first."""
    await rig.nap()
    for name, port in (("a", 2), ("x", 3), ("n", 4)):
        rig.join(name, port, 20 * MBIT)
    rig.go_on()
    await rig.nap()
    assert rig.probed == [4, 3, 2]


async def test_a_round_measures_a_few_new_peers(rig: Rig) -> None:
    await rig.nap()
    for i in range(5):
        rig.join(f"p{i}", 10 + i, 20 * MBIT)
    rig.go_on()
    await rig.nap()
    assert len(rig.probed) == PROBES_PER_ROUND + (5 - PROBES_PER_ROUND)  # two rounds, no nap
    assert sorted(rig.probed) == list(range(10, 15))


async def test_a_peer_on_this_host_is_not_measured(rig: Rig) -> None:
    """Reached over loopback, a peer shares this machine: no link between them to measure."""
    await rig.nap()
    rig.rates[7] = 1 * MBIT
    peer = peer_info("here", 7, MANIFEST)  # fakes' records are on 127.0.0.1
    rig.membership = rig.membership.apply(PeerEvent(PeerEventKind.JOINED, peer))
    rig.go_on()
    assert await rig.nap() == 0.5
    assert rig.probed == [] and rig.published == []
