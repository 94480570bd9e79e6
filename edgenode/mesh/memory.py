"""A complete in-process discovery for tests: nodes sharing an InMemoryNetwork see each other.

It behaves like ZeroconfDiscovery without sockets: start announces, announce() updates, close
says goodbye, and crash() imitates kill -9 (no goodbye, so the others keep the record, as
zeroconf caches do). probe() answers like a node's gRPC hello, for StaticDiscovery.
"""

from __future__ import annotations

from edgenode.errors import PeerUnavailable, UsageError
from edgenode.mesh._base import DiscoveryBase
from edgenode.mesh._peer import Endpoint, NodeId, PeerInfo

__all__ = ["InMemoryDiscovery", "InMemoryNetwork"]


class InMemoryNetwork:
    """The medium: every started InMemoryDiscovery hears every other one, synchronously."""

    def __init__(self) -> None:
        self._nodes: dict[NodeId, InMemoryDiscovery] = {}

    def discovery(self, local: PeerInfo) -> InMemoryDiscovery:
        """A new (not yet started) discovery for `local` on this network."""
        return InMemoryDiscovery(local, self)

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        """The nodes announcing now, sorted."""
        return tuple(sorted(self._nodes))

    def crash(self, node_id: NodeId) -> None:
        """Make a node vanish without a goodbye, like kill -9: the others keep its record."""
        node = self._nodes.pop(node_id, None)
        if node is None:
            raise UsageError(f"no node {node_id!r} on this network")
        node._crashed()

    async def probe(self, endpoint: Endpoint) -> PeerInfo:
        """The record of the node listening at `endpoint`, like a gRPC hello; a Prober."""
        for node in self._nodes.values():
            if endpoint.port == node.local.port and endpoint.host in node.local.addresses:
                return node.local
        raise PeerUnavailable(f"nobody answers at {endpoint}")

    def _join(self, node: InMemoryDiscovery) -> None:
        node_id = node.local.node_id
        if node_id in self._nodes:
            raise UsageError(f"node id {node_id!r} is already announced on this network")
        self._nodes[node_id] = node
        for other in list(self._nodes.values()):
            if other is not node:
                other._hear(node.local)
                node._hear(other.local)

    def _update(self, node: InMemoryDiscovery) -> None:
        for other in list(self._nodes.values()):
            if other is not node:
                other._hear(node.local)

    def _leave(self, node: InMemoryDiscovery) -> None:
        if self._nodes.get(node.local.node_id) is node:
            del self._nodes[node.local.node_id]
            for other in list(self._nodes.values()):
                other._hear_goodbye(node.local.node_id)


class InMemoryDiscovery(DiscoveryBase):
    """Discovery on an InMemoryNetwork; see the module docstring."""

    def __init__(self, local: PeerInfo, network: InMemoryNetwork) -> None:
        super().__init__(local)
        self._network = network

    async def _start(self) -> None:
        self._network._join(self)

    async def _close(self) -> None:
        self._network._leave(self)

    async def _announce(self, info: PeerInfo) -> None:
        self._network._update(self)

    def _hear(self, info: PeerInfo) -> None:
        if not self._closed:
            self._accept(info, source=f"memory:{info.node_id}")

    def _hear_goodbye(self, node_id: NodeId) -> None:
        self._table.remove(node_id)

    def _crashed(self) -> None:
        self._closed = True
        self._table.close()
