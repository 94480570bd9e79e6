"""Discovery from configured addresses, for networks without multicast.

An address alone says nothing about who listens there, so every candidate endpoint is probed
with an injected Prober (the gRPC layer's hello, which returns the peer's PeerInfo) every
PROBE_INTERVAL_S. A peer that answers joins (if compatible); one that stops answering for
LEFT_AFTER_MISSES probes in a row leaves. Own endpoints answer with our own node id and are
ignored, so every node can share one list of all nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace

from edgenode.errors import EdgenodeError, UsageError
from edgenode.mesh._base import DiscoveryBase, OnceLog
from edgenode.mesh._peer import Endpoint, NodeId, PeerInfo, incompatibility
from edgenode.mesh._protocols import Prober

__all__ = ["LEFT_AFTER_MISSES", "PROBE_INTERVAL_S", "PROBE_TIMEOUT_S", "StaticDiscovery"]

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 1.0
LEFT_AFTER_MISSES = 2


class StaticDiscovery(DiscoveryBase):
    """Peers at configured "host:port" endpoints, identified by probing them."""

    def __init__(
        self,
        local: PeerInfo,
        peers: Sequence[Endpoint | str],
        prober: Prober,
        *,
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
        left_after_misses: int = LEFT_AFTER_MISSES,
    ) -> None:
        super().__init__(local)
        endpoints = [p if isinstance(p, Endpoint) else Endpoint.parse(p) for p in peers]
        self._candidates = tuple(dict.fromkeys(endpoints))  # unique, in the given order
        if interval_s <= 0 or timeout_s <= 0 or left_after_misses < 1:
            raise UsageError("interval_s and timeout_s must be > 0, left_after_misses >= 1")
        self._prober = prober
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._left_after_misses = left_after_misses
        self._at: dict[Endpoint, NodeId] = {}  # endpoint -> the compatible peer answering there
        self._misses: dict[Endpoint, int] = {}
        self._failures = OnceLog(logger)
        self._task: asyncio.Task[None] | None = None

    @property
    def candidates(self) -> tuple[Endpoint, ...]:
        """The configured endpoints, whether anyone answers there or not."""
        return self._candidates

    async def refresh(self) -> None:
        """Probe every candidate once now."""
        await asyncio.gather(*(self._probe(endpoint) for endpoint in self._candidates))

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="edgenode-static-discovery")

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)

    async def _close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _announce(self, info: PeerInfo) -> None:
        """Nothing to send: peers learn the new record from their next probe of us."""

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                info = await self._prober(endpoint)
        except (EdgenodeError, TimeoutError) as e:
            self._missed(endpoint, e)
            return
        if self._closed:
            return
        self._misses[endpoint] = 0
        if self._at.get(endpoint) not in (None, info.node_id):
            self._vacate(endpoint)  # another node answers there now
        if incompatibility(self._local, info) is not None:
            self._accept(info, source=str(endpoint))  # logs why, drops it if it was known
            self._vacate(endpoint)
            return
        self._at[endpoint] = info.node_id
        # A peer configured under several endpoints is reached at the first that answers.
        primary = next(e for e in self._candidates if self._at.get(e) == info.node_id)
        self._accept(replace(info, addresses=(primary.host,), port=primary.port), str(endpoint))

    def _missed(self, endpoint: Endpoint, error: BaseException) -> None:
        misses = self._misses.get(endpoint, 0) + 1
        self._misses[endpoint] = misses
        self._failures.log(
            (endpoint, type(error)),
            logging.WARNING if endpoint in self._at else logging.INFO,
            "static peer %s does not answer: %s",
            endpoint,
            str(error) or type(error).__name__,
        )
        if misses >= self._left_after_misses:
            self._vacate(endpoint)

    def _vacate(self, endpoint: Endpoint) -> None:
        node_id = self._at.pop(endpoint, None)
        if node_id is not None and node_id not in self._at.values():
            self._table.remove(node_id)
