"""An in-memory transport with the gRPC transport's behaviour, for tests of the layers above.

Frames still go through the codec (same validation, same errors) and through bounded queues
(same backpressure); only the sockets are missing. A MemoryNetwork plays the loopback:
transports bind addresses on it, senders look their peer up by address.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from edgenode.errors import PeerUnavailable, TransportError
from edgenode.transport._api import StreamTotals, TransportConfig, TransportStats
from edgenode.transport._inbox import TensorInbox
from edgenode.transport._options import FLUSH_TIMEOUT_S
from edgenode.transport._receiver import Receiver
from edgenode.transport.codec import Tensor, encode_frames_async

__all__ = ["MemoryNetwork", "MemoryPeer", "MemoryTransport"]

logger = logging.getLogger(__name__)

PIPE_FRAMES = 2  # frames in flight on one in-memory stream, like a small flow-control window


class MemoryNetwork:
    """Addresses of the in-memory transports of one test (or one process)."""

    def __init__(self) -> None:
        self._nodes: dict[str, MemoryTransport] = {}
        self._numbers = itertools.count(1)

    def transport(
        self, address: str | None = None, *, config: TransportConfig | None = None
    ) -> MemoryTransport:
        """A new transport at address (a fresh one when None); bound when entered."""
        return MemoryTransport(self, address or f"mem-{next(self._numbers)}", config=config)

    def _lookup(self, address: str) -> MemoryTransport | None:
        return self._nodes.get(address)

    def _bind(self, node: MemoryTransport) -> None:
        if node.address in self._nodes:
            raise TransportError(f"cannot listen on {node.address}: address in use")
        self._nodes[node.address] = node

    def _unbind(self, node: MemoryTransport) -> None:
        if self._nodes.get(node.address) is node:
            del self._nodes[node.address]


class _FrameIterator:
    """The receiving end of one in-memory stream (None marks the sender's half-close)."""

    def __init__(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._queue = queue

    def __aiter__(self) -> _FrameIterator:
        return self

    async def __anext__(self) -> bytes:
        frame = await self._queue.get()
        if frame is None:
            raise StopAsyncIteration
        return frame


class _MemoryStream:
    """One sender -> receiver stream: a bounded frame queue and the task decoding it."""

    def __init__(self, receiver: Receiver) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(PIPE_FRAMES)
        self.task = asyncio.create_task(receiver.receive(_FrameIterator(self.queue)))
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[StreamTotals]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.info("rejected in-memory stream: %s", task.exception())
        while not self.queue.empty():  # unblock a sender waiting for room
            self.queue.get_nowait()

    def error(self, address: str) -> TransportError:
        """The domain error a sender sees for how this stream ended."""
        if self.task.cancelled():
            return PeerUnavailable(f"peer {address}: went away")
        exc = self.task.exception()
        if isinstance(exc, TransportError):
            return type(exc)(f"peer {address}: {exc}")
        if exc is None:
            return TransportError(f"peer {address}: stream already ended")
        return TransportError(f"peer {address}: receiver failed: {exc!r}")


class MemoryTransport:
    """A node's in-memory endpoint; same contract as GrpcTransport."""

    def __init__(
        self, network: MemoryNetwork, address: str, *, config: TransportConfig | None = None
    ) -> None:
        self._network = network
        self._address = address
        self._config = config or TransportConfig()
        self._receiver = Receiver(self._config)
        self._peers: dict[str, MemoryPeer] = {}
        self._streams: set[_MemoryStream] = set()
        self._open = False

    @property
    def address(self) -> str:
        """The name peers use to reach this transport."""
        return self._address

    @property
    def inbox(self) -> TensorInbox:
        """Tensors received from every peer."""
        return self._receiver.inbox

    def peer(self, address: str) -> MemoryPeer:
        """The long-lived sender to address, created on first use."""
        sender = self._peers.get(address)
        if sender is None:
            sender = self._peers[address] = MemoryPeer(self._network, address, self._config)
        return sender

    def stats(self) -> TransportStats:
        """Receiving-side gauges."""
        return self._receiver.stats()

    async def __aenter__(self) -> Self:
        self._network._bind(self)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the peer senders, then drop every incoming stream."""
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(p.aclose() for p in peers))
        if not self._open:
            return
        self._open = False
        self._network._unbind(self)
        self._receiver.close()
        tasks = [s.task for s in self._streams]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()

    def _accept(self) -> _MemoryStream:
        if not self._open:
            raise PeerUnavailable(f"peer {self._address}: not serving")
        stream = _MemoryStream(self._receiver)
        self._streams.add(stream)
        stream.task.add_done_callback(lambda _: self._streams.discard(stream))
        return stream


class MemoryPeer:
    """A long-lived in-memory stream to one peer; same contract as GrpcPeer."""

    def __init__(self, network: MemoryNetwork, address: str, config: TransportConfig) -> None:
        self._network = network
        self._address = address
        self._config = config
        self._stream: _MemoryStream | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        """The peer's address on the network."""
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
            stream = await self._write_first(first)
            try:
                for frame in frames:
                    await self._write(stream, frame)
            except BaseException:  # cancelled mid-frame: drop the stream, never splice onto it
                self._drop(stream)
                raise

    async def flush(self) -> StreamTotals:
        """Half-close the stream and wait for the peer's totals; see PeerSender.flush."""
        async with self._lock:
            stream, self._stream = self._stream, None
            if stream is None:
                return StreamTotals(tensors=0, bytes=0)
            if not stream.task.done():
                await stream.queue.put(None)
            await asyncio.wait({stream.task}, timeout=FLUSH_TIMEOUT_S)
            if not stream.task.done():
                stream.task.cancel()
                raise PeerUnavailable(f"peer {self._address}: no answer within {FLUSH_TIMEOUT_S} s")
            if stream.task.cancelled() or stream.task.exception() is not None:
                raise stream.error(self._address)
            return stream.task.result()

    def abort(self) -> None:
        """Cancel the current stream; see PeerSender.abort."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.task.cancel()

    async def aclose(self) -> None:
        """Flush, logging a failure; the sender cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._lock.locked() and self._stream is not None:
            self._stream.task.cancel()
        try:
            await self.flush()
        except TransportError as exc:
            logger.debug("closing sender to %s: %s", self._address, exc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _write_first(self, frame: bytes) -> _MemoryStream:
        for attempt in range(2):
            reused = self._stream is not None and not self._stream.task.done()
            stream = self._open()
            try:
                await self._write(stream, frame)
                return stream
            except TransportError:
                if not (reused and attempt == 0):
                    raise
            except BaseException:  # cancelled mid-frame: drop the stream, never splice onto it
                self._drop(stream)
                raise
        raise AssertionError("unreachable")

    async def _write(self, stream: _MemoryStream, frame: bytes) -> None:
        if not stream.task.done():
            await stream.queue.put(frame)
        if stream.task.done():  # ended before or while this frame waited
            self._drop(stream)
            raise stream.error(self._address)

    def _open(self) -> _MemoryStream:
        if self._closed:
            raise TransportError(f"sender to {self._address} is closed")
        stream = self._stream
        if stream is not None and stream.task.done():
            self._stream = None
            logger.debug("stream to %s ended: %s", self._address, stream.error(self._address))
        if self._stream is None:
            node = self._network._lookup(self._address)
            if node is None:
                raise PeerUnavailable(f"peer {self._address}: not reachable")
            self._stream = node._accept()
        return self._stream

    def _drop(self, stream: _MemoryStream) -> None:
        stream.task.cancel()
        if self._stream is stream:
            self._stream = None
