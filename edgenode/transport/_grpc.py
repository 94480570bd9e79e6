"""gRPC (grpc.aio) transport: a server whose servicer only translates, and peer senders.

Frames travel as raw bytes (no generated (de)serializers): the codec parses them, so a garbage
frame becomes a clear INVALID_ARGUMENT instead of gRPC's generic deserialization failure.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import EdgenodeError, PeerUnavailable, TransportError
from edgenode.transport._api import StreamTotals, TransportConfig, TransportStats
from edgenode.transport._inbox import TensorInbox
from edgenode.transport._options import (
    CHANNEL_OPTIONS,
    FLUSH_TIMEOUT_S,
    SERVER_OPTIONS,
    SERVICE_NAME,
    STOP_GRACE_S,
)
from edgenode.transport._receiver import Receiver
from edgenode.transport._status import error_from_status, status_of
from edgenode.transport.codec import Tensor, encode_frames_async

__all__ = ["SERVICE_NAME", "GrpcPeer", "GrpcTransport", "check_listen_address"]

logger = logging.getLogger(__name__)

_STREAM_METHOD = f"/{SERVICE_NAME}/Stream"

# What a failed write raises, depending on whether grpc noticed the end of the call first.
_CALL_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError)


def check_listen_address(host: str, port: int) -> None:
    """TransportError unless ``host:port`` can be listened on, found by binding a plain
    socket the way gRPC does (SO_REUSEADDR, any resolved address will do): gRPC's own
    failure costs a line of its C core's log on stderr. Blocking (name resolution)."""
    address = f"{host}:{port}"
    try:
        resolved = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise TransportError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    failure: OSError | None = None
    for family, kind, proto, _, sockaddr in resolved:
        try:
            with socket.socket(family, kind, proto) as probe:
                # As on gRPC's listeners: a port whose last connections linger in TIME_WAIT
                # is free, one that another process listens on is not.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
                return
        except OSError as exc:
            failure = failure or exc
    reason = failure.strerror if failure is not None and failure.strerror else "no address"
    raise TransportError(f"cannot listen on {address}: {reason.lower()}")


class _Servicer:
    """Translates gRPC calls to the receiver and domain errors to statuses; nothing else."""

    def __init__(self, receiver: Receiver, on_refused: Callable[[str], None] | None) -> None:
        self._receiver = receiver
        self._on_refused = on_refused

    async def stream(
        self, frames: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        try:
            totals = await self._receiver.receive(frames)
        except EdgenodeError as exc:
            code, metadata = status_of(exc)
            logger.info("rejected stream from %s: %s: %s", context.peer(), code.name, exc)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and self._on_refused is not None:
                self._on_refused("resource_exhausted")  # a tensor over the limit
            await context.abort(code, str(exc), trailing_metadata=metadata)
        return pb.StreamSummary(tensors=totals.tensors, bytes=totals.bytes).SerializeToString()


class GrpcTransport:
    """A node's gRPC endpoint: the EdgeNode and health services, plus senders to peers."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: TransportConfig | None = None,
        handlers: Mapping[str, grpc.RpcMethodHandler] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """``on_refused``: told the reason (a status code name, lower case) of every call
        refused before it is served: no credential, no membership, a tensor too large."""
        self._host, self._port = host, port
        self._on_refused = on_refused
        self._extra_handlers = dict(handlers or {})  # more methods of the EdgeNode service
        self._config = config or TransportConfig()
        self._receiver = Receiver(self._config)
        self._peers: dict[str, GrpcPeer] = {}
        self._server: grpc.aio.Server | None = None
        self._health: Any = None

    @property
    def address(self) -> str:
        """host:port where peers reach this node."""
        return f"{self._host}:{self._port}"

    @property
    def inbox(self) -> TensorInbox:
        """Tensors received from every peer."""
        return self._receiver.inbox

    def peer(self, address: str) -> GrpcPeer:
        """The long-lived sender to address, created on first use."""
        sender = self._peers.get(address)
        if sender is None:
            sender = self._peers[address] = GrpcPeer(address, config=self._config)
        return sender

    def stats(self) -> TransportStats:
        """Receiving-side gauges."""
        return self._receiver.stats()

    async def __aenter__(self) -> Self:
        await self.bind()
        await self.serve()
        return self

    async def bind(self) -> None:
        """Listen on the address (the port is known from here on) without serving yet."""
        await asyncio.to_thread(check_listen_address, self._host, self._port)
        security = self._config.security
        server = grpc.aio.server(
            options=SERVER_OPTIONS, interceptors=security.interceptors(self._on_refused)
        )
        try:
            port = security.add_port(server, f"{self._host}:{self._port}")
        except RuntimeError as exc:
            raise TransportError(f"cannot listen on {self.address}: {exc}") from None
        if port == 0:
            raise TransportError(f"cannot listen on {self.address}")
        self._port = port
        self._server = server

    async def serve(self, handlers: Mapping[str, grpc.RpcMethodHandler] | None = None) -> None:
        """Start serving the EdgeNode service (Stream here; ``handlers`` and the constructor's
        add the control and inference methods) and the health service."""
        server = self._server
        if server is None or self._health is not None:
            raise TransportError("serve() once, after bind()")
        servicer = _Servicer(self._receiver, self._on_refused)
        extra = {**self._extra_handlers, **(handlers or {})}
        methods = {"Stream": grpc.stream_unary_rpc_method_handler(servicer.stream), **extra}
        if len(methods) != 1 + len(extra):
            raise TransportError("the Stream method is the transport's own")
        # The one place the EdgeNode service is registered.
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, methods),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, methods)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.debug("serving on %s", self.address)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the peer senders, then stop serving (open calls get a short grace)."""
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(p.aclose() for p in peers))
        server, self._server = self._server, None
        if server is None:
            return
        if self._health is None:  # bound, never served: grpc frees the port only once started
            await server.start()
        else:
            await self._health.enter_graceful_shutdown()
        self._receiver.close()
        await server.stop(STOP_GRACE_S)


STATUS_WAIT_S = 1.0  # for the status of a call whose write failed


class GrpcPeer:
    """A long-lived gRPC stream to one peer; reopened when the peer went away and came back."""

    def __init__(self, address: str, *, config: TransportConfig | None = None) -> None:
        self._address = address
        self._config = config or TransportConfig()
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamUnaryCall[bytes, bytes] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._failures = 0  # consecutive; the first is a warning, the rest debug

    @property
    def address(self) -> str:
        """host:port of the peer."""
        return self._address

    async def send(self, tensors: Sequence[Tensor]) -> None:
        """Send one hop's tensors; see PeerSender.send."""
        frames = await encode_frames_async(
            tensors, chunk_bytes=self._config.chunk_bytes, checksum=self._config.checksum
        )
        await self.send_frames(frames)

    async def send_frames(self, frames: Iterable[bytes]) -> None:
        """Write serialized frames as they are: the codec's output, or a test's bad input."""
        async with self._lock:
            frames = iter(frames)
            first = next(frames, None)
            if first is None:
                return
            call = await self._write_first(first)
            try:
                for frame in frames:
                    await call.write(frame)
            except _CALL_ERRORS:
                raise await self._failed(call) from None
            except BaseException:
                # Cancelled mid-tensor: the peer must not see the rest spliced onto it.
                self._drop(call)
                raise
            self._failures = 0

    async def _write_first(self, frame: bytes) -> grpc.aio.StreamUnaryCall[bytes, bytes]:
        """Write a send's first frame, reopening once if a reused stream turns out dead."""
        for attempt in range(2):
            reused = self._call is not None
            call = await self._open()
            try:
                await call.write(frame)
                return call
            except _CALL_ERRORS:
                error = await self._failed(call)
                # Nothing of this send reached a stream that had died since the last send:
                # reopen once. A fresh stream failing is the peer's answer.
                if not (reused and attempt == 0):
                    raise error from None
            except BaseException:  # cancelled mid-frame: drop the call, never splice onto it
                self._drop(call)
                raise
        raise AssertionError("unreachable")

    async def flush(self) -> StreamTotals:
        """Half-close the stream and wait for the peer's summary; see PeerSender.flush."""
        async with self._lock:
            call, self._call = self._call, None
            if call is None:
                return StreamTotals(tensors=0, bytes=0)
            try:
                await call.done_writing()
                reply = await asyncio.wait_for(_response(call), FLUSH_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                raise error_from_status(
                    self._address, exc.code(), exc.details(), exc.trailing_metadata()
                ) from None
            except TimeoutError:
                call.cancel()
                raise PeerUnavailable(
                    f"peer {self._address}: no answer within {FLUSH_TIMEOUT_S} s"
                ) from None
            summary = pb.StreamSummary.FromString(reply)
            return StreamTotals(tensors=summary.tensors, bytes=summary.bytes)

    def abort(self) -> None:
        """Cancel the current stream; see PeerSender.abort."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def aclose(self) -> None:
        """Flush, logging a failure, and close the channel."""
        if self._closed:
            return
        self._closed = True
        if self._lock.locked() and self._call is not None:
            self._call.cancel()  # a send blocked on a full peer must not hold up closing
        try:
            await self.flush()
        except TransportError as exc:
            logger.debug("closing sender to %s: %s", self._address, exc)
        finally:
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> grpc.aio.StreamUnaryCall[bytes, bytes]:
        if self._closed:
            raise TransportError(f"sender to {self._address} is closed")
        call = self._call
        if call is not None and call.done():
            self._call = None
            if await call.code() != grpc.StatusCode.OK:
                self._log_failure(await self._status_error(call))
        if self._call is None:
            timeout = self._config.connect_timeout_s
            if self._channel is None:
                self._channel = self._config.security.channel(self._address, CHANNEL_OPTIONS)
            elif self._channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                # gRPC is backing off after a failed connect: fail now rather than hold the
                # caller for the connect timeout on every send to a dead peer.
                self._channel.get_state(try_to_connect=True)
                error = PeerUnavailable(f"peer {self._address}: not reachable (reconnecting)")
                self._log_failure(error)
                raise error
            try:
                await asyncio.wait_for(self._channel.channel_ready(), timeout)
            except TimeoutError:
                error = PeerUnavailable(f"peer {self._address}: not reachable within {timeout} s")
                self._log_failure(error)
                raise error from None
            method = self._channel.stream_unary(_STREAM_METHOD, _registered_method=True)
            self._call = method()
        return self._call

    async def _failed(self, call: grpc.aio.StreamUnaryCall[bytes, bytes]) -> TransportError:
        """Forget a call whose write failed; the domain error for how it ended."""
        if self._call is call:
            self._call = None
        error = await self._status_error(call)
        call.cancel()
        self._log_failure(error)
        return error

    def _drop(self, call: grpc.aio.StreamUnaryCall[bytes, bytes]) -> None:
        call.cancel()
        if self._call is call:
            self._call = None

    async def _status_error(self, call: grpc.aio.StreamUnaryCall[bytes, bytes]) -> TransportError:
        # A write racing the peer's rejection fails with INTERNAL "Internal error from Core"
        # (grpc/grpc#36066), and call.code() says so too; awaiting the call gives the
        # status the peer actually sent.
        try:
            await asyncio.wait_for(_response(call), STATUS_WAIT_S)
        except grpc.aio.AioRpcError as exc:
            return error_from_status(
                self._address, exc.code(), exc.details(), exc.trailing_metadata()
            )
        except (TimeoutError, asyncio.InvalidStateError):
            pass
        code = await call.code() if call.done() else grpc.StatusCode.UNAVAILABLE
        details = await call.details() if call.done() else "no status from the peer"
        metadata = await call.trailing_metadata() if call.done() else None
        return error_from_status(self._address, code, details, metadata)

    def _log_failure(self, error: TransportError) -> None:
        level = logging.WARNING if self._failures == 0 else logging.DEBUG
        self._failures += 1
        logger.log(level, "stream to %s failed: %s", self._address, error)


async def _response(call: grpc.aio.StreamUnaryCall[bytes, bytes]) -> bytes:
    reply: bytes = await call
    return reply
