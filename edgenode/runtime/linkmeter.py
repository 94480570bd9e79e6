"""This node's own link, measured for the planner.

A node whose link is not configured (``node.link_mbps = 0``) measures it with each peer as
it appears (a timed transfer, the Probe RPC, up to ``PROBES_PER_ROUND`` peers at a time),
and with all of them again every ``LINK_REFRESH_S``. A probe that fails (the peer is busy
with another node's probe, which would share its link) is tried again after about
``RETRY_S`` times the attempts so far, jittered so that nodes started together drift apart,
up to ``PROBE_ATTEMPTS`` times a period. A transfer is as slow as the slower
end, so the fastest so far is taken as this node's link, rounded to a power of two in
Mbit/s (``quantize_link``) so that jitter changes nothing. A link at least as fast as the
cluster's (the manifest's: what the cluster was cut for, gigabit by default) is recorded
as 0, "the cluster's link": a loopback or 10-gigabit host plans, and announces, exactly as
before. A new value goes into this node's record (Hello answers it; mDNS announces it, and
the peers ask Hello again), which re-plans the cluster.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from edgenode.errors import EdgenodeError
from edgenode.mesh import Endpoint, PeerInfo
from edgenode.mesh.membership import Membership
from edgenode.planning import quantize_link

__all__ = ["LINK_REFRESH_S", "PROBES_PER_ROUND", "PROBE_ATTEMPTS", "LinkProber", "measure_link"]

logger = logging.getLogger(__name__)

LINK_REFRESH_S = 600.0  # the link is measured again this often
PROBES_PER_ROUND = 3  # peers a measurement tries, the fastest counting
WAIT_FOR_PEER_S = 0.5  # while alone, look for a peer this often
RETRY_S = 1.0  # a failed probe is tried again after about this times the attempts so far ...
PROBE_ATTEMPTS = 5  # ... up to this many times a period


def _jitter() -> float:
    return random.uniform(0.5, 1.5)


def _on_this_host(peer: PeerInfo) -> bool:
    try:
        return ipaddress.ip_address(peer.endpoint.host).is_loopback
    except ValueError:
        return False  # a host name: measure it


class LinkProber(Protocol):
    """A timed transfer to a peer (ControlClient implements it)."""

    async def probe(self, endpoint: Endpoint) -> float:
        """Bytes per second sent to the node at ``endpoint``; PeerUnavailable if it fails."""
        ...


async def measure_link(
    *,
    membership: Callable[[], Membership],
    publish: Callable[[PeerInfo], Awaitable[None]],
    prober: LinkProber,
    cap_bytes_per_s: float,
    refresh_s: float = LINK_REFRESH_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = _jitter,
) -> None:
    """Measure this node's link to peers it has not measured yet, as they appear (up to
    PROBES_PER_ROUND at a time), and to all of them again every ``refresh_s``; publish
    this node's record when the rounded fastest rate changes. Runs until cancelled."""
    rates: dict[str, float] = {}  # peer -> rate measured since the period began
    tried: set[str] = set()  # measured, or given up on, this period
    failures: dict[str, int] = {}
    not_before: dict[str, float] = {}  # a failed peer is tried again from then
    period_began = clock()
    while True:
        if clock() - period_began >= refresh_s:
            rates.clear()
            tried.clear()
            failures.clear()
            not_before.clear()
            period_began = clock()
        # A peer reached over loopback runs on this host: there is no link to measure.
        # In node-id order starting after this node's own: nodes started together probe
        # around a ring first, each peer probed by one node at a time.
        view = membership()
        peers = [p for p in view.alive if not _on_this_host(p)]
        peers.sort(key=lambda p: (p.node_id <= view.local.node_id, p.node_id))
        now = clock()
        fresh = [
            p for p in peers if p.node_id not in tried and not_before.get(p.node_id, now) <= now
        ][:PROBES_PER_ROUND]
        if not fresh:
            await sleep(WAIT_FOR_PEER_S)
            continue
        for peer in fresh:
            name = peer.node_id
            try:
                rates[name] = await prober.probe(peer.endpoint)
                tried.add(name)
            except EdgenodeError as exc:
                failures[name] = attempt = failures.get(name, 0) + 1
                if attempt >= PROBE_ATTEMPTS:
                    tried.add(name)  # until the period ends
                not_before[name] = clock() + RETRY_S * attempt * jitter()
                logger.info("could not measure the link to %s (try %d): %s", name, attempt, exc)
        if not rates:
            continue
        measured = max(rates.values())
        value = quantize_link(measured)
        if value >= cap_bytes_per_s:
            value = 0.0  # as fast as the cluster's link: nothing to tell the planner
        local = membership().local
        if value != local.capacity.link_bytes_per_s:
            logger.info(
                "link measured at %.1f Mbit/s (the fastest of %s): planning with %s",
                measured * 8 / 1e6,
                ", ".join(sorted(rates)),
                f"{value * 8 / 1e6:g} Mbit/s" if value else "the cluster's link",
            )
            await publish(replace(local, capacity=replace(local.capacity, link_bytes_per_s=value)))
