"""gRPC adapter of the control plane, client side: ``ControlClient``.

One channel per node address, cached. It makes the control calls a node makes of its peers
(Hello for discovery's Prober; Leave, GetPlan and FetchFile for the negotiation and part
files) and a client makes of any node (GetStatus as a typed ``NodeReport``, the manifest,
requests over one InferSession per node, failing over within a cluster).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import (
    EdgenodeError,
    ModelError,
    PeerUnavailable,
    TransportError,
    UsageError,
)
from edgenode.mesh import Endpoint, PeerInfo
from edgenode.transport._failover import Failover, View
from edgenode.transport._options import (
    CHANNEL_OPTIONS,
    CONNECT_TIMEOUT_S,
    PROTOCOL_VERSION,
    SERVICE_NAME,
)
from edgenode.transport._reports import NodeReport, peer_from_record, report_of
from edgenode.transport._security import Security
from edgenode.transport._session import ClientSession, Refusal
from edgenode.transport._status import failure_reason

__all__ = ["CONTROL_TIMEOUT_S", "FETCH_TIMEOUT_S", "MANIFEST_PART", "ControlClient", "view_of"]

logger = logging.getLogger(__name__)

# A new session is not opened on a channel in these states: the node cannot be reached now.
_UNREACHABLE = frozenset(
    {grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN}
)
CONTROL_TIMEOUT_S = 2.0  # a control call slower than this: the peer is unavailable
FETCH_TIMEOUT_S = 300.0  # a whole part file
PROBE_S = 0.5  # a link probe sends for this long ...
PROBE_CHUNK_BYTES = 64 << 10  # ... in chunks of this size ...
PROBE_MIN_BYTES = 1 << 20  # ... and at least this much, then waits for the peer's count;
PROBE_MAX_BYTES = 16 << 20  # it stops here even before PROBE_S (faster than ~250 Mbit/s)
PROBE_TIMEOUT_S = 30.0  # 1 MiB over a 1 Mbit/s link takes 8 s
MANIFEST_PART = -1  # FetchFile's part index of manifest.json


class ControlClient:
    """Control calls and requests to nodes over one cached channel per address; an async
    context manager (or call ``aclose``)."""

    def __init__(
        self,
        *,
        protocol: int = PROTOCOL_VERSION,
        timeout_s: float = CONTROL_TIMEOUT_S,
        security: Security | None = None,
    ) -> None:
        self._protocol = protocol
        self._timeout_s = timeout_s
        self._security = security or Security.insecure()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._sessions: dict[str, ClientSession] = {}
        self._clusters: list[Failover] = []

    def _channel(self, address: str, *, purpose: str = "control") -> grpc.aio.Channel:
        """The cached channel to ``address`` for ``purpose``, on a connection of its own:
        gRPC would otherwise share one connection among channels with the same options, and
        a control call would queue behind the tensors, or the probe, sent on it (on a slow
        link, seconds: long enough for a live peer to be taken for dead)."""
        key = f"{purpose} {address}"
        channel = self._channels.get(key)
        if channel is None:
            options = (*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1))
            channel = self._security.channel(address, options)
            self._channels[key] = channel
        return channel

    async def _unary(self, address: str, method: str, request: Any, reply: Any) -> Any:
        call = self._channel(address).unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply.FromString,
        )
        try:
            return await call(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
            logger.debug("%s %s: %s: %s", address, method, code.name, details)
            reason = failure_reason(
                code, details, timeout_s=self._timeout_s, insecure=self._security.is_insecure
            )
            raise PeerUnavailable(f"{address}: {reason}") from None

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        """Who listens at ``endpoint`` (discovery's Prober)."""
        record = await self._unary(
            str(endpoint), "Hello", pb.HelloRequest(protocol=self._protocol), pb.NodeRecord
        )
        try:
            return peer_from_record(record)
        except EdgenodeError as exc:
            raise PeerUnavailable(f"{endpoint} sent an invalid record: {exc}") from None

    async def leave(self, peer: PeerInfo, local: PeerInfo) -> None:
        """Tell ``peer`` that the run ``local`` leaves the cluster (negotiation's PlanPeers)."""
        request = pb.LeaveRequest(node_id=local.node_id, incarnation=local.incarnation)
        await self._unary(str(peer.endpoint), "Leave", request, pb.LeaveReply)

    async def plan_digest(self, peer: PeerInfo) -> str:
        """The digest ``peer`` computed (negotiation's PlanPeers)."""
        reply = await self._unary(str(peer.endpoint), "GetPlan", pb.PlanRequest(), pb.PlanReply)
        return str(reply.computed_digest)

    async def status(self, address: str) -> NodeReport:
        """The status of the node at ``address``."""
        reply = await self._unary(address, "GetStatus", pb.StatusRequest(), pb.NodeStatus)
        try:
            return report_of(reply)
        except EdgenodeError as exc:
            raise PeerUnavailable(f"{address} sent an invalid status: {exc}") from None

    async def fetch_file(
        self, peer: PeerInfo, manifest_identity: str, part: int, path: Path, sha256: str
    ) -> None:
        """Download a part file from ``peer`` into ``path``, verified, written atomically."""
        call = self._channel(str(peer.endpoint)).unary_stream(
            f"/{SERVICE_NAME}/FetchFile",
            request_serializer=pb.FileRequest.SerializeToString,
            response_deserializer=pb.FileChunk.FromString,
        )
        digest = hashlib.sha256()
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with partial.open("wb") as out:
                request = pb.FileRequest(model_sha256=manifest_identity, part=part)
                stream = call(request, timeout=FETCH_TIMEOUT_S)
                async for chunk in stream:
                    digest.update(chunk.data)
                    await asyncio.to_thread(out.write, chunk.data)
            if digest.hexdigest() != sha256:
                raise ModelError(
                    f"{path.name} from {peer.node_id} has sha256 {digest.hexdigest()[:12]}..., "
                    f"the manifest says {sha256[:12]}..."
                )
            partial.replace(path)
        except grpc.aio.AioRpcError as exc:
            reason = failure_reason(exc.code(), exc.details(), timeout_s=FETCH_TIMEOUT_S)
            raise TransportError(f"{peer.node_id}: {reason}") from None
        finally:
            partial.unlink(missing_ok=True)

    async def probe(self, endpoint: Endpoint, *, seconds: float = PROBE_S) -> float:
        """Bytes per second this node sends to the node at ``endpoint``: a transfer of
        ``seconds`` (at least PROBE_MIN_BYTES, at most PROBE_MAX_BYTES) over a connection of
        its own (a Hello to that node is not held up behind it), timed by the peer as the
        bytes arrive (else from here until the peer has read them all). PeerUnavailable when
        it fails, also when the peer is busy with another probe."""
        call = self._channel(str(endpoint), purpose="probe").stream_unary(
            f"/{SERVICE_NAME}/Probe", response_deserializer=pb.ProbeReply.FromString
        )
        chunk = pb.ProbeChunk(data=bytes(PROBE_CHUNK_BYTES)).SerializeToString()
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = call(timeout=PROBE_TIMEOUT_S)
        sent = 0
        try:
            while sent < PROBE_MIN_BYTES or (
                loop.time() - started < seconds and sent < PROBE_MAX_BYTES
            ):
                await stream.write(chunk)
                sent += len(chunk)
            await stream.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call ended early: its status, below, says why
        try:
            reply = await stream
        except grpc.aio.AioRpcError as exc:
            reason = failure_reason(exc.code(), exc.details(), timeout_s=PROBE_TIMEOUT_S)
            raise PeerUnavailable(f"{endpoint}: {reason}") from None
        elapsed = loop.time() - started
        if reply.bytes != sent or elapsed <= 0:
            raise PeerUnavailable(f"{endpoint} counted {reply.bytes} of {sent} probe bytes")
        return reply.bytes_per_s or sent / elapsed

    async def fetch_bytes(self, address: str, manifest_identity: str, part: int) -> bytes:
        """A small file (the manifest: part -1) from the node at ``address``."""
        call = self._channel(address).unary_stream(
            f"/{SERVICE_NAME}/FetchFile",
            request_serializer=pb.FileRequest.SerializeToString,
            response_deserializer=pb.FileChunk.FromString,
        )
        chunks = []
        try:
            async for chunk in call(
                pb.FileRequest(model_sha256=manifest_identity, part=part), timeout=FETCH_TIMEOUT_S
            ):
                chunks.append(chunk.data)
        except grpc.aio.AioRpcError as exc:
            reason = failure_reason(exc.code(), exc.details(), timeout_s=FETCH_TIMEOUT_S)
            raise PeerUnavailable(f"{address}: {reason}") from None
        return b"".join(chunks)

    async def infer(
        self,
        address: str,
        inputs: Mapping[str, Any],
        *,
        timeout_s: float,
        failover: bool = True,
    ) -> dict[str, Any]:
        """Run one request entering the cluster at the node at ``address``; the final
        outputs by name, within ``timeout_s`` in all.

        When that node goes away before answering (it died, the connection broke, it is
        stopping), the request is sent again to another member of its cluster (see
        ``cluster`` and ``Failover``); ``failover=False`` asks that node only."""
        if failover:
            return await self.cluster(address).infer(inputs, timeout_s=timeout_s, origin=address)
        try:
            async with asyncio.timeout(timeout_s):
                outcome = await self.infer_once(address, inputs)
        except TimeoutError:
            raise PeerUnavailable(f"{address}: no answer within {timeout_s:g} s") from None
        if isinstance(outcome, Refusal):
            raise outcome.error()
        return outcome

    def cluster(self, seeds: str | Iterable[str]) -> Failover:
        """The cluster of the nodes at ``seeds`` (addresses): the one this client already
        knows the first seed in, else a new one; closed with this client."""
        seeds = [seeds] if isinstance(seeds, str) else list(seeds)
        if not seeds:
            raise UsageError("a cluster needs the address of at least one of its nodes")
        cluster = next((c for c in self._clusters if c.knows(seeds[0])), None)
        if cluster is None:
            cluster = Failover(self, seeds)
            self._clusters.append(cluster)
        cluster.add(seeds)
        return cluster

    async def infer_once(
        self, address: str, inputs: Mapping[str, Any]
    ) -> dict[str, np.ndarray] | Refusal:
        """One request at the node at ``address`` only, no timeout (the caller's): its
        outputs, or why there are none.

        Requests to one address share one InferSession call, opened on first use and
        again after it ended (the node restarted, the connection broke)."""
        for _ in range(2):  # a session found ended is replaced once
            session = await self._session(address)
            if isinstance(session, Refusal):
                return session
            outcome = await session.request(inputs)
            if not (isinstance(outcome, Refusal) and outcome.lost and not outcome.sent):
                return outcome
        return outcome

    async def view(self, address: str) -> View:
        """What the node at ``address`` says about its cluster (Failover's InferNodes)."""
        return view_of(await self.status(address), address)

    def in_flight(self, address: str) -> int:
        """Requests sent to the node at ``address`` and not answered yet."""
        session = self._sessions.get(address)
        return session.in_flight if session is not None else 0

    async def _session(self, address: str) -> ClientSession | Refusal:
        session = self._sessions.get(address)
        if session is not None and not session.closed:
            return session
        channel = self._channel(address)
        try:
            # Not grpc's own wait: it holds a call to a dead host for its 20 s connect
            # timeout, and one to a refused port until the reconnect backoff ends.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                state = channel.get_state(try_to_connect=True)
                while state is not grpc.ChannelConnectivity.READY:
                    if state in _UNREACHABLE:
                        return Refusal(
                            address, grpc.StatusCode.UNAVAILABLE, "not reachable", False, False
                        )
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            message = f"not connected within {CONNECT_TIMEOUT_S:g} s"
            return Refusal(address, grpc.StatusCode.UNAVAILABLE, message, False, False)
        session = self._sessions.get(address)  # another request may have opened one meanwhile
        if session is None or session.closed:
            call = channel.stream_stream(f"/{SERVICE_NAME}/InferSession")()
            session = self._sessions[address] = ClientSession(address, call)
        return session

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every cluster, session and channel."""
        clusters, self._clusters = self._clusters, []
        await asyncio.gather(*(c.aclose() for c in clusters))
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.aclose() for s in sessions))
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels))


def view_of(status: NodeReport, address: str) -> View:
    """What a node's status (asked at ``address``) says about its cluster."""
    members: dict[str, str] = {status.node_id: status.address or address}
    for peer in status.peers:
        members[peer.node_id] = str(peer.endpoint)
    return View(
        node_id=status.node_id,
        identity=f"{status.node.cluster}/{status.node.manifest_identity[:12]}",
        members=members,
    )
