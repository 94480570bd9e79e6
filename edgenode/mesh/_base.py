"""What every discovery implementation shares: the peer table, filtering, lifecycle."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from types import TracebackType
from typing import Self

from edgenode.errors import UsageError
from edgenode.mesh._peer import NodeId, PeerInfo, incompatibility, other_cluster
from edgenode.mesh._table import PeerEvents, PeerTable

__all__ = ["DiscoveryBase", "OnceLog", "check_same_member"]

logger = logging.getLogger(__name__)

_ONCE_LOG_MAX_KEYS = 4096  # forget what was logged past this, so a noisy network cannot grow it


class OnceLog:
    """Logs a message at the given level the first time per key, then at DEBUG."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._seen: set[Hashable] = set()

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> None:
        """Log `msg % args` at `level` the first time `key` is seen, later at DEBUG."""
        if key in self._seen:
            level = logging.DEBUG
        else:
            if len(self._seen) >= _ONCE_LOG_MAX_KEYS:
                self._seen.clear()
            self._seen.add(key)
        self._log.log(level, msg, *args)


def check_same_member(old: PeerInfo, new: PeerInfo) -> None:
    """Raise UsageError unless `new` may replace `old` as the same member's record."""
    for field in ("node_id", "incarnation", "cluster", "protocol", "manifest_identity"):
        if getattr(old, field) != getattr(new, field):
            raise UsageError(
                f"announce() cannot change {field} ({getattr(old, field)!r} -> "
                f"{getattr(new, field)!r}); close the discovery and start a new one"
            )


class DiscoveryBase:
    """Lifecycle and peer table; subclasses implement _start, _close and _announce."""

    def __init__(self, local: PeerInfo) -> None:
        self._local = local
        self._table = PeerTable()
        self._ignored = OnceLog(logger)
        self._started = False
        self._closed = False

    @property
    def local(self) -> PeerInfo:
        """This node's record as currently announced."""
        return self._local

    async def start(self) -> None:
        """Announce the local record and begin looking for peers."""
        if self._closed:
            raise UsageError("discovery was closed; create a new one")
        if self._started:
            return
        self._started = True
        await self._start()

    async def close(self) -> None:
        """Say goodbye, stop looking, end every events() iterator; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                await self._close()
        finally:
            self._table.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def announce(self, info: PeerInfo) -> None:
        """Replace the local record and re-announce it (see Discovery.announce)."""
        check_same_member(self._local, info)
        self._check_local(info)
        if info == self._local:
            return
        self._local = info
        if self._started and not self._closed:
            await self._announce(info)

    def peers(self) -> Mapping[NodeId, PeerInfo]:
        """A snapshot of the compatible peers seen now (without this node)."""
        return self._table.snapshot()

    def events(self) -> PeerEvents:
        """Subscribe: JOINED for every current peer, then each change, until close()."""
        return self._table.subscribe()

    def _accept(self, info: PeerInfo, source: str) -> bool:
        """Add or update `info` unless it is ours or incompatible; True when accepted."""
        reason = incompatibility(self._local, info)
        if reason is None:
            self._table.upsert(info)
            return True
        if (
            info.node_id == self._local.node_id
            and info.incarnation != self._local.incarnation
            and other_cluster(self._local, info) is None
        ):
            self._ignored.log(
                (source, "duplicate id"),
                logging.INFO,
                "a record at %s claims our node id %s (run %x): asking who answers there",
                info.endpoint,
                info.node_id,
                info.incarnation,
            )
            self._table.twin(info)
        else:
            level = logging.DEBUG if info.node_id == self._local.node_id else logging.INFO
            self._ignored.log(
                (source, reason), level, "ignoring peer %s (%s): %s", info.node_id, source, reason
            )
        # A known peer that became incompatible is gone as far as this cluster is concerned.
        if info.node_id != self._local.node_id:
            self._table.remove(info.node_id)
        return False

    def _check_local(self, info: PeerInfo) -> None:
        """Raise UsageError if this implementation cannot announce `info`."""

    async def _start(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _announce(self, info: PeerInfo) -> None:
        raise NotImplementedError
