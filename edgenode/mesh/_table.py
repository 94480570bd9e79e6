"""The peers one discovery currently sees, and the subscribers to their changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from edgenode.mesh._peer import NodeId, PeerEvent, PeerEventKind, PeerInfo

__all__ = ["PeerEvents", "PeerTable"]

logger = logging.getLogger(__name__)

_TWINS_KEPT = 8


class PeerEvents:
    """One subscriber's events, starting with JOINED for every peer already known.

    Iteration ends when the discovery closes or the subscriber calls close().
    """

    def __init__(self, table: PeerTable) -> None:
        self._table = table
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue()
        self._closed = False

    def _put(self, event: PeerEvent | None) -> None:
        if not self._closed:
            self._queue.put_nowait(event)
            self._closed = event is None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> PeerEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    @property
    def queued(self) -> int:
        """How many events wait to be taken."""
        return self._queue.qsize()

    def pending(self) -> list[PeerEvent]:
        """Take the events already queued, without waiting."""
        taken: list[PeerEvent] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                break
            taken.append(event)
        return taken

    def close(self) -> None:
        """Stop receiving; iteration ends after the events already queued."""
        self._table.unsubscribe(self)
        self._put(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PeerTable:
    """Known peers by node id; turns upserts and removals into JOINED/UPDATED/LEFT events."""

    def __init__(self) -> None:
        self._peers: dict[NodeId, PeerInfo] = {}
        self._twins: list[PeerInfo] = []  # records that claimed the local node's id
        self._subscribers: set[PeerEvents] = set()
        self._closed = False

    def snapshot(self) -> Mapping[NodeId, PeerInfo]:
        """A copy of the current peers."""
        return dict(self._peers)

    def get(self, node_id: NodeId) -> PeerInfo | None:
        """The current record of a peer, if known."""
        return self._peers.get(node_id)

    def subscribe(self) -> PeerEvents:
        """A new subscriber, primed with JOINED for the peers known now."""
        events = PeerEvents(self)
        for info in sorted(self._peers.values(), key=lambda p: p.node_id):
            events._put(PeerEvent(PeerEventKind.JOINED, info))
        for info in self._twins:
            events._put(PeerEvent(PeerEventKind.TWIN, info))
        if self._closed:
            events._put(None)
        else:
            self._subscribers.add(events)
        return events

    def unsubscribe(self, events: PeerEvents) -> None:
        """Forget a subscriber."""
        self._subscribers.discard(events)

    def upsert(self, info: PeerInfo) -> None:
        """Record a peer's latest record; a new incarnation is a LEFT then a JOINED."""
        if self._closed:
            return
        old = self._peers.get(info.node_id)
        if old == info:
            return
        self._peers[info.node_id] = info
        if old is None:
            self._publish(PeerEvent(PeerEventKind.JOINED, info))
        elif old.incarnation != info.incarnation:
            self._publish(PeerEvent(PeerEventKind.LEFT, old))
            self._publish(PeerEvent(PeerEventKind.JOINED, info))
        else:
            self._publish(PeerEvent(PeerEventKind.UPDATED, info))

    def twin(self, info: PeerInfo) -> None:
        """Publish TWIN for a record claiming the local node's id (not a peer: kept apart,
        and replayed to later subscribers, the latest _TWINS_KEPT of them)."""
        if self._closed:
            return
        kept = [t for t in self._twins if t != info][-(_TWINS_KEPT - 1) :]
        self._twins = [*kept, info]
        self._publish(PeerEvent(PeerEventKind.TWIN, info))

    def remove(self, node_id: NodeId) -> None:
        """Forget a peer, publishing LEFT if it was known."""
        old = self._peers.pop(node_id, None)
        if old is not None and not self._closed:
            self._publish(PeerEvent(PeerEventKind.LEFT, old))

    def close(self) -> None:
        """End every subscriber's iteration; later changes are ignored."""
        self._closed = True
        self._peers.clear()
        for events in list(self._subscribers):
            events._put(None)
        self._subscribers.clear()

    def _publish(self, event: PeerEvent) -> None:
        logger.debug("peer %s: %s", event.kind.value, event.peer.node_id)
        for events in self._subscribers:
            events._put(event)
