"""gRPC adapter of the control plane: Hello, Leave, GetPlan, GetStatus, FetchFile.

Server side: handlers that decode a request, call one NodeControl method, encode the
reply. Client side: ``ControlClient``, one channel per peer address, which implements
the negotiation's ``PlanPeers`` and discovery's ``Prober``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import (
    EdgenodeError,
    ModelError,
    PeerUnavailable,
    TransportError,
    UsageError,
)
from edgenode.mesh import Capacity, Endpoint, NodeId, PeerInfo, valid_node_id
from edgenode.transport._failover import ClusterClient, View
from edgenode.transport._options import CHANNEL_OPTIONS, CONNECT_TIMEOUT_S, PROTOCOL_VERSION
from edgenode.transport._security import Security
from edgenode.transport._services import ControlService, InferenceService, PlanView, StatusView
from edgenode.transport._session import (
    ClientSession,
    Refusal,
    infer_status,
    session_handler,
    unknown_input,
)
from edgenode.transport._status import failure_reason
from edgenode.transport.codec import (
    DEFAULT_MAX_TENSOR_BYTES,
    FrameDecoder,
    RequestId,
    Tensor,
    encode_frames,
)

__all__ = [
    "CONTROL_TIMEOUT_S",
    "ClusterClient",
    "ControlClient",
    "control_handlers",
    "peer_from_record",
    "record_of",
    "status_to_dict",
    "view_of",
]

logger = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["EdgeNode"].full_name
# A new session is not opened on a channel in these states: the node cannot be reached now.
_UNREACHABLE = frozenset(
    {grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN}
)
CONTROL_TIMEOUT_S = 2.0  # a control call slower than this: the peer is unavailable
FETCH_TIMEOUT_S = 300.0  # a whole part file
FILE_CHUNK_BYTES = 1 << 20  # FetchFile streams a file in chunks of this size


def record_of(info: PeerInfo) -> pb.NodeRecord:
    """A PeerInfo as its wire message."""
    return pb.NodeRecord(
        node_id=info.node_id,
        name=info.name,
        addresses=list(info.addresses),
        port=info.port,
        protocol=info.protocol,
        cluster=info.cluster,
        model_sha256=info.model_sha256,
        speed=info.capacity.speed,
        memory_bytes=info.capacity.memory_bytes,
        incarnation=info.incarnation,
        started_ms=info.started_ms,
    )


def peer_from_record(record: pb.NodeRecord) -> PeerInfo:
    """A wire record as a validated PeerInfo (UsageError if malformed)."""
    return PeerInfo(
        node_id=NodeId(record.node_id),
        name=record.name,
        addresses=tuple(record.addresses),
        port=record.port,
        protocol=record.protocol,
        cluster=record.cluster,
        model_sha256=record.model_sha256,
        capacity=Capacity(speed=record.speed, memory_bytes=record.memory_bytes),
        incarnation=record.incarnation,
        started_ms=record.started_ms,
    )


def _plan_reply(state: PlanView) -> pb.PlanReply:
    agreed = state.agreed
    return pb.PlanReply(
        computed_digest=state.computed.digest if state.computed else "",
        agreed_digest=agreed.digest if agreed else "",
        assignments=[
            pb.Assignment(node_id=a.node_id, start=a.start, stop=a.stop, replica=a.replica)
            for a in (agreed.assignments if agreed else ())
        ],
        members=list(state.members),
        idle=list(agreed.idle if agreed else ()),
    )


def _status_reply(status: StatusView) -> pb.NodeStatus:
    return pb.NodeStatus(
        node=record_of(status.node),
        address=status.address,
        plan=_plan_reply(status.plan),
        parts=list(status.parts),
        owned=list(status.owned),
        state=status.state,
        requests_served=status.requests_served,
        requests_failed=status.requests_failed,
        part_runs=status.part_runs,
        stages=[
            pb.StageStats(part=s.part, count=s.count, mean_s=s.mean_s, p50_s=s.p50_s, p90_s=s.p90_s)
            for s in status.stages
        ],
        peers=[record_of(p) for p in status.peers],
        uptime_s=status.uptime_s,
    )


def control_handlers(
    control: Callable[[], ControlService],
    router: Callable[[], InferenceService] | None = None,
    *,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers of the control RPCs (and Infer when a router is given)."""

    async def infer(frames: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        decoder = FrameDecoder(max_tensor_bytes=max_tensor_bytes)
        inputs: dict[str, Any] = {}
        try:
            assert router is not None
            serving = router()
            names = serving.input_names
            serving.check_admission()
            async for frame in frames:
                for tensor in decoder.feed(frame):
                    if tensor.name not in names:  # refused now: no memory for strangers
                        raise ModelError(unknown_input(tensor.name, names))
                    inputs[tensor.name] = tensor.array
            decoder.finish()
            outputs = await serving.infer(inputs)
        except EdgenodeError as exc:
            decoder.discard()
            await context.abort(infer_status(exc), str(exc))
            return
        reply = [Tensor(RequestId("reply"), name, value) for name, value in outputs.items()]
        for frame in encode_frames(reply):
            yield frame

    async def hello(request: pb.HelloRequest, context: Any) -> pb.NodeRecord:
        return record_of(control().local())

    async def leave(request: pb.LeaveRequest, context: Any) -> pb.LeaveReply:
        node_id = request.node_id
        if not valid_node_id(node_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid node id {node_id!r}")
        control().left(NodeId(node_id), request.incarnation)
        return pb.LeaveReply()

    async def get_plan(request: pb.PlanRequest, context: Any) -> pb.PlanReply:
        return _plan_reply(control().plan())

    async def get_status(request: pb.StatusRequest, context: Any) -> pb.NodeStatus:
        return _status_reply(control().status())

    async def fetch_file(request: pb.FileRequest, context: Any) -> AsyncIterator[pb.FileChunk]:
        try:
            path = control().file_path(request.model_sha256, request.part)
        except ModelError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            return
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, FILE_CHUNK_BYTES):
                yield pb.FileChunk(data=chunk)
        finally:
            handle.close()

    # Requests are parsed here, not by grpc: grpc answers an undecodable request UNKNOWN
    # and logs a traceback, where a malformed request deserves INVALID_ARGUMENT.
    async def parse(message: Any, data: bytes, context: Any) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed {message.DESCRIPTOR.name}: {exc}"
            )

    def unary(fn: Any, request: Any, reply: Any) -> grpc.RpcMethodHandler:
        async def handler(data: bytes, context: Any) -> Any:
            return await fn(await parse(request, data, context), context)

        return grpc.unary_unary_rpc_method_handler(
            handler, response_serializer=reply.SerializeToString
        )

    async def fetch_file_raw(data: bytes, context: Any) -> AsyncIterator[pb.FileChunk]:
        request = await parse(pb.FileRequest, data, context)
        async for chunk in fetch_file(request, context):
            yield chunk

    handlers = {
        "Hello": unary(hello, pb.HelloRequest, pb.NodeRecord),
        "Leave": unary(leave, pb.LeaveRequest, pb.LeaveReply),
        "GetPlan": unary(get_plan, pb.PlanRequest, pb.PlanReply),
        "GetStatus": unary(get_status, pb.StatusRequest, pb.NodeStatus),
        "FetchFile": grpc.unary_stream_rpc_method_handler(
            fetch_file_raw, response_serializer=pb.FileChunk.SerializeToString
        ),
    }
    if router is not None:
        handlers["Infer"] = grpc.stream_stream_rpc_method_handler(infer)
        handlers["InferSession"] = session_handler(router, max_tensor_bytes=max_tensor_bytes)
    else:
        handlers["Infer"] = handlers["InferSession"] = grpc.stream_stream_rpc_method_handler(
            _not_served
        )
    return handlers


async def _not_served(frames: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node does not serve Infer")
    yield b""  # never reached: makes this a generator, as a stream method must be


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
        self._clusters: list[ClusterClient] = []

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._security.channel(address, CHANNEL_OPTIONS)
            self._channels[address] = channel
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

    async def status(self, address: str) -> pb.NodeStatus:
        """The full status of the node at ``address``."""
        reply: pb.NodeStatus = await self._unary(
            address, "GetStatus", pb.StatusRequest(), pb.NodeStatus
        )
        return reply

    async def fetch_file(
        self, peer: PeerInfo, model_sha256: str, part: int, path: Path, sha256: str
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
                stream = call(
                    pb.FileRequest(model_sha256=model_sha256, part=part), timeout=FETCH_TIMEOUT_S
                )
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

    async def fetch_bytes(self, address: str, model_sha256: str, part: int) -> bytes:
        """A small file (the manifest: part -1) from the node at ``address``."""
        call = self._channel(address).unary_stream(
            f"/{SERVICE_NAME}/FetchFile",
            request_serializer=pb.FileRequest.SerializeToString,
            response_deserializer=pb.FileChunk.FromString,
        )
        chunks = []
        try:
            async for chunk in call(
                pb.FileRequest(model_sha256=model_sha256, part=part), timeout=FETCH_TIMEOUT_S
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
        ``cluster`` and ``ClusterClient``); ``failover=False`` asks that node only."""
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

    def cluster(self, seeds: str | Iterable[str]) -> ClusterClient:
        """The cluster of the nodes at ``seeds`` (addresses): the one this client already
        knows the first seed in, else a new one; closed with this client."""
        seeds = [seeds] if isinstance(seeds, str) else list(seeds)
        if not seeds:
            raise UsageError("a cluster needs the address of at least one of its nodes")
        cluster = next((c for c in self._clusters if c.knows(seeds[0])), None)
        if cluster is None:
            cluster = ClusterClient(self, seeds)
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
        """What the node at ``address`` says about its cluster (ClusterClient's InferNodes)."""
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


def view_of(status: pb.NodeStatus, address: str) -> View:
    """What a node's status (asked at ``address``) says about its cluster."""
    members = {status.node.node_id: status.address or address}
    for peer in status.peers:
        if peer.addresses:
            members[peer.node_id] = str(Endpoint(host=peer.addresses[0], port=peer.port))
    return View(
        node_id=status.node.node_id,
        identity=f"{status.node.cluster}/{status.node.model_sha256[:12]}",
        members=members,
    )


def status_to_dict(status: pb.NodeStatus) -> Mapping[str, Any]:
    """A status message as plain JSON-ready data (64-bit integers as numbers)."""
    from google.protobuf.json_format import MessageToDict

    data: dict[str, Any] = MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(status.DESCRIPTOR, data)
    return data


# MessageToDict writes these as strings (JSON for JavaScript, whose numbers stop being exact
# past 2**53); Python's json writes any int exactly, and readers expect counts as numbers.
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT64,
    }
)


def _int64_as_numbers(descriptor: Any, data: dict[str, Any]) -> None:
    """Turn the 64-bit integer fields of ``data`` (a ``descriptor`` message) into ints, and
    put its keys in the message's field order (MessageToDict puts unset fields last)."""
    ordered = {f.name: data.pop(f.name) for f in descriptor.fields if f.name in data}
    data.update(ordered)
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        items = value if isinstance(value, list) else [value]
        if field.type in _INT64_TYPES:
            numbers = [int(v) for v in items]
            data[field.name] = numbers if isinstance(value, list) else numbers[0]
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in items:
                _int64_as_numbers(field.message_type, item)
