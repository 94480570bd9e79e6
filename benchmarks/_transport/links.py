"""Both ends of each setup's link: a raw TCP endpoint, bare grpc.aio, edgenode's gRPC transport."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from _transport.setups import MIB

KIND_SINK, KIND_ECHO, KIND_ACK, KIND_QUIT = 0, 1, 2, 3
RAW_HEADER = struct.Struct("<QII")  # nbytes, kind, sequence


class RawEndpoint(asyncio.BufferedProtocol):
    """Length-prefixed tensors over TCP, received straight into a preallocated buffer."""

    def __init__(self, on_message: Callable[[RawEndpoint, int, int, np.ndarray], None]) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self._header = bytearray(RAW_HEADER.size)
        self._view = memoryview(self._header)
        self._filled = 0
        self._body: np.ndarray | None = None
        self._kind = self._seq = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is None:
            return self._view[self._filled :]
        return memoryview(self._body)[self._filled :]  # type: ignore[arg-type]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._body is None:
            if self._filled < RAW_HEADER.size:
                return
            size, self._kind, self._seq = RAW_HEADER.unpack(self._header)
            self._body, self._filled = np.empty(size, dtype=np.uint8), 0
            if size:
                return
        assert self._body is not None
        if self._filled == self._body.nbytes:
            body, self._body, self._filled = self._body, None, 0
            self.on_message(self, self._kind, self._seq, body.view(np.float32))

    def send(self, kind: int, seq: int, array: np.ndarray) -> None:
        assert self.transport is not None
        self.transport.write(RAW_HEADER.pack(array.nbytes, kind, seq))
        self.transport.write(memoryview(array.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Wait until the socket took what was written (flow control)."""
        assert self.transport is not None
        # The raw transport's write buffer has no event to await.
        while self.transport.get_write_buffer_size() > 4 * MIB:  # noqa: ASYNC110
            await asyncio.sleep(0)


class BareLink:
    """Bare grpc.aio: 16-byte header + bytes per message, 1 MiB pieces, no protobuf, no codec.

    The receiver assembles multi-message tensors into one preallocated buffer, like the codec.
    This is the floor of what any grpc.aio transport can do here.
    """

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.queue: asyncio.Queue[tuple[int, int, np.ndarray]] = asyncio.Queue()
        self.call: Any = None

    async def sink(self, frames: Any, context: Any) -> bytes:
        body: np.ndarray | None = None
        filled = kind = seq = 0
        async for message in frames:
            if body is None:
                size, kind, seq = RAW_HEADER.unpack_from(message)
                if len(message) - RAW_HEADER.size == size:  # whole: a view, no copy
                    data = np.frombuffer(message, np.uint8, size, RAW_HEADER.size)
                    self.queue.put_nowait((kind, seq, data.view(np.float32)))
                    continue
                body, filled = np.empty(size, np.uint8), 0
                message = memoryview(message)[RAW_HEADER.size :]
            n = len(message)
            body[filled : filled + n] = np.frombuffer(message, np.uint8)
            filled += n
            if filled == body.nbytes:
                self.queue.put_nowait((kind, seq, body.view(np.float32)))
                body = None
        return b""

    async def send(self, name: str, seq: int, array: np.ndarray) -> None:
        kind = {"sink": KIND_SINK, "echo": KIND_ECHO, "ack": KIND_ACK, "quit": KIND_QUIT}[name]
        await self.send_kind(kind, seq, array)

    async def send_kind(self, kind: int, seq: int, array: np.ndarray) -> None:
        data = memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        head = RAW_HEADER.pack(len(data), kind, seq)
        first = self.chunk_bytes
        await self.call.write(b"".join((head, data[:first])))
        for offset in range(first, len(data), self.chunk_bytes):
            await self.call.write(bytes(data[offset : offset + self.chunk_bytes]))

    async def send_many(self, names: Sequence[str], seq: int, arrays: Sequence[np.ndarray]) -> None:
        for array in arrays:
            await self.send_kind(KIND_ECHO, 0, array)

    def request_id(self) -> int:
        return 0

    async def receive(self) -> np.ndarray:
        return (await self.queue.get())[2]


class GrpcLink:
    """Driver side over gRPC: send on a peer stream, receive on this node's inbox."""

    def __init__(self, node: Any, peer: Any) -> None:
        from edgenode.transport import RequestId, Tensor

        self._tensor, self._rid = Tensor, RequestId
        self.node, self.peer = node, peer
        self._ids = itertools.count()  # every request unique: receivers reject duplicates

    async def send(self, name: str, seq: int, array: np.ndarray) -> None:
        await self.peer.send([self._tensor(self._rid(str(next(self._ids))), name, array)])

    async def send_many(self, names: Sequence[str], seq: int, arrays: Sequence[np.ndarray]) -> None:
        rid = self._rid(str(next(self._ids) if seq < 0 else seq))
        await self.peer.send([self._tensor(rid, n, a) for n, a in zip(names, arrays, strict=True)])

    def request_id(self) -> int:
        return next(self._ids)

    async def receive(self) -> np.ndarray:
        return (await self.node.inbox.get()).array  # type: ignore[no-any-return]


class RawLink:
    def __init__(self, endpoint: RawEndpoint, queue: asyncio.Queue[np.ndarray]) -> None:
        self.endpoint, self.queue = endpoint, queue

    async def send(self, name: str, seq: int, array: np.ndarray) -> None:
        kind = {"sink": KIND_SINK, "echo": KIND_ECHO, "ack": KIND_ACK, "quit": KIND_QUIT}[name]
        self.endpoint.send(kind, seq, array)
        await self.endpoint.drain()

    async def send_many(self, names: Sequence[str], seq: int, arrays: Sequence[np.ndarray]) -> None:
        for array in arrays:
            self.endpoint.send(KIND_ECHO, 0, array)
        await self.endpoint.drain()

    def request_id(self) -> int:
        return 0

    async def receive(self) -> np.ndarray:
        return await self.queue.get()
