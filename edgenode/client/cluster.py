"""The client of a cluster: find its nodes, read their status and the manifest, run requests.

``ClusterClient`` is what `edgenode status`, `edgenode infer`, `edgenode demo` and the
benchmarks use. It speaks to single nodes through ``ControlClient`` (the same calls nodes
make of each other) and sends requests through a ``Failover``: to the node the client
entered at and, when that node goes away, to another member.

    async with ClusterClient(security=security) as client:
        entry = await client.connect(await client.find(peers=["10.0.0.5:50051"]))
        manifest = await client.manifest()
        outputs = await client.infer(inputs, timeout_s=30)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

import numpy as np

from edgenode.errors import ManifestError, PeerUnavailable, UsageError
from edgenode.mesh import Endpoint, PeerInfo
from edgenode.mesh.browse import BROWSE_TIMEOUT_S, find_members
from edgenode.model.manifest import Manifest
from edgenode.transport import (
    MANIFEST_PART,
    ControlClient,
    Failover,
    NodeReport,
    Security,
    view_of,
)

__all__ = ["ClusterClient", "Found"]

Found = dict[str, PeerInfo | None]  # address -> who answered Hello there (None: not asked)


class ClusterClient:
    """One client of one cluster; an async context manager (or call ``aclose``)."""

    def __init__(self, *, security: Security | None = None) -> None:
        self._nodes = ControlClient(security=security)
        self._failover: Failover | None = None
        self._entry: NodeReport | None = None
        self._entry_address = ""
        self._manifest: Manifest | None = None

    @property
    def nodes(self) -> ControlClient:
        """The calls to single nodes, for what this class does not cover."""
        return self._nodes

    # finding nodes ------------------------------------------------------------------------

    async def find(
        self,
        *,
        peers: Sequence[str] = (),
        cluster: str | None = None,
        interfaces: Sequence[str] | str = "all",
        browse_s: float = BROWSE_TIMEOUT_S,
    ) -> Found:
        """Nodes to ask, by address: every one of ``peers`` (not asked who it is), else
        every node mDNS finds (of ``cluster`` if given) that answers Hello as its record
        says; DiscoveryError in one line when none does."""
        if peers:
            return dict.fromkeys(str(Endpoint.parse(p)) for p in peers)
        # A node that does not answer says why in a few words ("10.0.0.5:4000: connection
        # refused"): ControlClient translates gRPC's reasons (transport/_status.py).
        found = await find_members(
            self._nodes.hello, cluster=cluster, interfaces=interfaces, browse_s=browse_s
        )
        return {str(m.endpoint): m for m in found}

    async def status(self, address: str) -> NodeReport:
        """The status of the node at ``address``; PeerUnavailable when it does not answer."""
        return await self._nodes.status(address)

    async def crawl(self, seeds: Iterable[str]) -> tuple[list[NodeReport], list[str]]:
        """The status of every node at ``seeds`` and of every peer they know, by node id;
        and why the addresses that did not answer did not."""
        reports: dict[str, NodeReport] = {}
        errors = []
        asked: set[str] = set()
        queue = list(seeds)
        while queue:
            address = queue.pop(0)
            if address in asked:
                continue
            asked.add(address)
            try:
                report = await self._nodes.status(address)
            except PeerUnavailable as exc:
                errors.append(str(exc))
                continue
            asked.add(report.address)
            reports.setdefault(report.node_id, report)
            for peer in report.peers:
                if peer.node_id not in reports:
                    queue.append(str(peer.endpoint))
        return [reports[k] for k in sorted(reports)], errors

    # entering the cluster -----------------------------------------------------------------

    async def connect(self, found: Mapping[str, PeerInfo | None]) -> NodeReport:
        """Enter the cluster at the first of ``found`` that answers a status call, and
        return its status; requests go to that node first and, when it goes away, to the
        other members it counts alive or that ``found`` says belong to its cluster and
        model (mDNS may find nodes of other clusters)."""
        errors = []
        for address in found:
            try:
                entry = await self._nodes.status(address)
                break
            except PeerUnavailable as exc:
                errors.append(str(exc))
        else:
            raise PeerUnavailable("; ".join(errors) or "no node to ask")
        same = (entry.node.cluster, entry.node.manifest_identity)
        seeds = [
            a for a, n in found.items() if n is None or (n.cluster, n.manifest_identity) == same
        ]
        self._failover = self._nodes.cluster([address, *seeds])
        self._failover.learn(address, view_of(entry, address))
        self._entry, self._entry_address, self._manifest = entry, address, None
        return entry

    @property
    def entry(self) -> NodeReport:
        """The status of the node this client entered at (``connect``)."""
        if self._entry is None:
            raise UsageError("not connected: call ClusterClient.connect first")
        return self._entry

    @property
    def entry_address(self) -> str:
        """The address this client entered the cluster at (``connect``)."""
        self.entry  # noqa: B018 - raises when not connected
        return self._entry_address

    async def manifest(self) -> Manifest:
        """The manifest of the model the cluster serves, from the node entered at."""
        if self._manifest is None:
            entry = self.entry
            raw = await self._nodes.fetch_bytes(
                self._entry_address, entry.node.manifest_identity, MANIFEST_PART
            )
            try:
                self._manifest = Manifest.from_json(json.loads(raw))
            except (ValueError, ManifestError) as exc:
                raise PeerUnavailable(
                    f"{self._entry_address} sent an invalid manifest: {exc}"
                ) from None
        return self._manifest

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        timeout_s: float,
        origin: str | None = None,
    ) -> dict[str, np.ndarray]:
        """The outputs of one request, by name, within ``timeout_s`` in all: entering at
        ``origin`` (default: the node entered at), and sent to another member when a node
        goes away before answering (see ``Failover``)."""
        if origin is not None:
            return await self._nodes.infer(origin, inputs, timeout_s=timeout_s)
        if self._failover is None:
            raise UsageError("not connected: call ClusterClient.connect or give an origin")
        return await self._failover.infer(inputs, timeout_s=timeout_s)

    # closing ------------------------------------------------------------------------------

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every session and channel."""
        await self._nodes.aclose()
