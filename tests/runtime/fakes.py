"""In-memory cluster pieces for negotiation tests: a chain manifest, peers, PlanPeers."""

from __future__ import annotations

import contextvars
from collections import Counter

from edgenode.errors import PeerUnavailable
from edgenode.mesh import Capacity, Endpoint, InMemoryNetwork, PeerInfo
from edgenode.model.manifest import Manifest
from edgenode.runtime.negotiation import Negotiator

GIB = 2**30


def chain_manifest(parts: int, flops: int = 10**8) -> Manifest:
    """A manifest of ``parts`` parts in a chain; only the last output is final."""

    def tensor(name: str) -> dict:
        return {"name": name, "shape": [None, 256], "dtype": "float32"}

    entries = []
    for i in range(parts):
        last = i == parts - 1
        entries.append(
            {
                "index": i,
                "file": f"part-{i}.keras",
                "sha256": f"{i:064x}",
                "inputs": [tensor("input" if i == 0 else f"t{i - 1}")],
                "outputs": [{**tensor(f"t{i}"), "final": last}],
                "flops": flops,
                "param_bytes": 1000,
            }
        )
    return Manifest.from_json(
        {
            "format": "edgenode-manifest/1",
            "model": {
                "name": "chain",
                "sha256": "ab" * 32,
                "inputs": [tensor("input")],
                "outputs": [f"t{parts - 1}"],
            },
            "parts": entries,
        }
    )


def peer_info(node_id: str, port: int, manifest: Manifest, speed: float = 1e9) -> PeerInfo:
    return PeerInfo(
        node_id=node_id,
        name=node_id,
        addresses=("127.0.0.1",),
        port=port,
        protocol=1,
        cluster="test",
        manifest_identity=manifest.identity,
        capacity=Capacity(speed=speed, memory_bytes=GIB),
        incarnation=port,
    )


class InMemoryPlanPeers:
    """PlanPeers over a dict of live negotiators; a missing or crashed node is unavailable.

    Hello at an endpoint answers with the record of the negotiator listening there (its
    discovery's local record), like a node's control plane."""

    def __init__(self) -> None:
        self.negotiators: dict[str, Negotiator] = {}
        self.down: set[str] = set()
        self.asked: Counter[str] = Counter()  # by node id asked for its plan
        self.greeted: Counter[Endpoint] = Counter()  # Hello calls by endpoint
        # A node's context (its log tags): a call it serves runs there, as in its own server.
        self.contexts: dict[str, contextvars.Context] = {}

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        self.greeted[endpoint] += 1
        for node_id, negotiator in self.negotiators.items():
            local = negotiator.membership.local
            if local.reachable_at(endpoint) and node_id not in self.down:
                return local
        raise PeerUnavailable(f"nobody answers at {endpoint}")

    async def leave(self, peer: PeerInfo, local: PeerInfo) -> None:
        negotiator = self.negotiators.get(peer.node_id)
        if negotiator is None or peer.node_id in self.down:
            raise PeerUnavailable(f"{peer.node_id} does not answer")
        context = self.contexts.get(peer.node_id) or contextvars.copy_context()
        context.run(negotiator.peer_left, local.node_id, local.incarnation)

    async def plan_digest(self, peer: PeerInfo) -> str:
        self.asked[peer.node_id] += 1
        negotiator = self.negotiators.get(peer.node_id)
        if negotiator is None or peer.node_id in self.down:
            raise PeerUnavailable(f"{peer.node_id} does not answer")
        return negotiator.plan_digest()


__all__ = ["InMemoryNetwork", "InMemoryPlanPeers", "chain_manifest", "peer_info"]
