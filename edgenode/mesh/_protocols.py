"""What the rest of edgenode sees of discovery: small Protocols, several implementations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Protocol, Self

from edgenode.mesh._peer import Endpoint, NodeId, PeerInfo
from edgenode.mesh._table import PeerEvents

__all__ = ["Discovery", "Prober"]

# Asks whoever listens at an endpoint for its PeerInfo (the gRPC layer's hello); raises
# edgenode.errors.PeerUnavailable when nobody answers.
Prober = Callable[[Endpoint], Awaitable[PeerInfo]]


class Discovery(Protocol):
    """Finds compatible peers (same cluster, protocol and model) and reports their changes.

    Implementations: ZeroconfDiscovery (mDNS), StaticDiscovery (configured addresses),
    InMemoryDiscovery (tests). Own records and incompatible peers never appear.
    """

    @property
    def local(self) -> PeerInfo:
        """This node's record as currently announced."""
        ...

    async def start(self) -> None:
        """Announce the local record and begin looking for peers."""
        ...

    async def close(self) -> None:
        """Say goodbye, stop looking, end every events() iterator; safe to call twice."""
        ...

    async def __aenter__(self) -> Self:
        """start()."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """close()."""
        ...

    async def announce(self, info: PeerInfo) -> None:
        """Replace the local record (capacity, name, addresses, port) and re-announce it.

        Node id, incarnation, cluster, protocol and model must stay: a node that changes them
        is a different member and must restart its discovery.
        """
        ...

    def peers(self) -> Mapping[NodeId, PeerInfo]:
        """A snapshot of the compatible peers seen now (without this node)."""
        ...

    def events(self) -> PeerEvents:
        """Subscribe: JOINED for every current peer, then each change, until close()."""
        ...
