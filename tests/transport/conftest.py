"""Fixtures for transport tests: the same tests run over gRPC and in-memory transports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.transport import (
    GrpcPeer,
    GrpcTransport,
    MemoryNetwork,
    MemoryPeer,
    RequestId,
    Tensor,
    TransportConfig,
)

FAST = TransportConfig(connect_timeout_s=1.0)


class GrpcNet:
    """Makes gRPC transports on 127.0.0.1 and raw senders to them."""

    kind = "grpc"

    def transport(self, address: str | None = None, config: TransportConfig = FAST):
        port = 0 if address is None else int(address.rsplit(":", 1)[1])
        return GrpcTransport("127.0.0.1", port, config=config)

    def sender(self, address: str, config: TransportConfig = FAST) -> GrpcPeer:
        return GrpcPeer(address, config=config)

    def unused_address(self) -> str:
        return "127.0.0.1:1"


class MemoryNet:
    """Makes in-memory transports on one MemoryNetwork and raw senders to them."""

    kind = "memory"

    def __init__(self) -> None:
        self.network = MemoryNetwork()

    def transport(self, address: str | None = None, config: TransportConfig = FAST):
        return self.network.transport(address, config=config)

    def sender(self, address: str, config: TransportConfig = FAST) -> MemoryPeer:
        return MemoryPeer(self.network, address, config)

    def unused_address(self) -> str:
        return "nobody"


@pytest.fixture(params=["grpc", "memory"])
def net(request: pytest.FixtureRequest) -> GrpcNet | MemoryNet:
    """Each shared test runs once per transport implementation."""
    return GrpcNet() if request.param == "grpc" else MemoryNet()


@pytest.fixture
async def server(net: GrpcNet | MemoryNet) -> AsyncIterator[object]:
    """A receiving transport with the default test config."""
    async with net.transport() as transport:
        yield transport


def tensor(rid: str, name: str, array: np.ndarray) -> Tensor:
    return Tensor(RequestId(rid), name, array)


def frame(*parts: pb.TensorPart) -> bytes:
    """A serialized Frame built with the generated classes (for hand-made bad input)."""
    return pb.Frame(parts=list(parts)).SerializeToString()


def header(
    name: str = "t",
    *,
    rid: str = "r",
    dtype: int = pb.DTYPE_FLOAT32,
    shape: tuple[int, ...] = (2,),
    byte_length: int | None = None,
    crc32: int | None = None,
) -> pb.TensorHeader:
    if byte_length is None:
        byte_length = int(np.prod(shape)) * 4
    h = pb.TensorHeader(
        request_id=rid, name=name, dtype=dtype, shape=shape, byte_length=byte_length
    )
    if crc32 is not None:
        h.crc32 = crc32
    return h


async def eventually(
    check: Callable[[], bool], *, timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll check until it holds, failing after timeout_s (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def receive(inbox, n: int, timeout_s: float = 10.0) -> list[Tensor]:
    """The next n tensors of an inbox, failing after timeout_s."""
    return [await asyncio.wait_for(inbox.get(), timeout_s) for _ in range(n)]


AsyncFn = Callable[[], Awaitable[None]]
