"""Behaviour shared by the gRPC and in-memory transports (each test runs over both)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import (
    ChecksumMismatch,
    DuplicateTensor,
    IncompleteTensor,
    InvalidTensor,
    PeerUnavailable,
    ProtocolError,
    TensorTooLarge,
    TransportError,
)
from edgenode.transport import CHUNK_BYTES, TransportConfig
from edgenode.transport.codec import encode_frames
from tests.transport.conftest import eventually, frame, header, receive, tensor

F32 = np.arange(2, dtype=np.float32).tobytes()
LIMITED = TransportConfig(connect_timeout_s=1.0, max_tensor_bytes=1 << 20)


async def test_tensors_of_many_requests_share_one_stream(net, server) -> None:
    sender = net.sender(server.address)
    try:
        for i in range(20):
            x = np.full((4, 5), i, dtype=np.float32)
            await sender.send([tensor(f"r{i}", "a", x), tensor(f"r{i}", "b", x.astype(np.int8))])
            a, b = await receive(server.inbox, 2)
            assert (a.request_id, a.name, b.name) == (f"r{i}", "a", "b")
            np.testing.assert_array_equal(a.array, x)
            assert server.stats().streams == 1
        totals = await sender.flush()
        assert (totals.tensors, totals.bytes) == (40, 20 * (80 + 20))
    finally:
        await sender.aclose()
    await eventually(lambda: server.stats().streams == 0, what="stream closed")


async def test_large_tensor_arrives_whole(net, server) -> None:
    x = np.random.default_rng(1).standard_normal((3, CHUNK_BYTES // 8 + 7))
    async with net.sender(server.address) as sender:
        await sender.send([tensor("r", "big", x), tensor("r", "small", np.arange(3))])
        big, small = await receive(server.inbox, 2)
    np.testing.assert_array_equal(big.array, x)
    np.testing.assert_array_equal(small.array, np.arange(3))


async def test_transport_peer_is_long_lived_and_closed_with_transport(net, server) -> None:
    async with net.transport() as client:
        peer = client.peer(server.address)
        assert client.peer(server.address) is peer
        await peer.send([tensor("r", "x", np.zeros(3))])
        await receive(server.inbox, 1)
    await eventually(lambda: server.stats().streams == 0, what="stream closed")


async def test_unreachable_peer_is_unavailable(net) -> None:
    async with net.sender(net.unused_address(), TransportConfig(connect_timeout_s=0.2)) as s:
        with pytest.raises(PeerUnavailable, match="not reachable"):
            await s.send([tensor("r", "x", np.zeros(3))])


async def test_sender_recovers_after_peer_restarts(net) -> None:
    first = await net.transport().__aenter__()
    address = first.address
    sender = net.sender(address)
    try:
        await sender.send([tensor("r1", "x", np.zeros(3))])
        await receive(first.inbox, 1)
        await first.aclose()
        async with net.transport(address) as second:
            # The old stream died with the old server; the sender reopens on its own.
            await sender.send([tensor("r2", "x", np.ones(3))])
            [got] = await receive(second.inbox, 1)
            assert got.request_id == "r2"
            np.testing.assert_array_equal(got.array, np.ones(3))
    finally:
        await first.aclose()
        await sender.aclose()


async def test_sending_to_a_stopped_peer_fails_then_recovers(net) -> None:
    first = await net.transport().__aenter__()
    address = first.address
    sender = net.sender(address, TransportConfig(connect_timeout_s=0.3))
    try:
        await sender.send([tensor("r1", "x", np.zeros(3))])
        await first.aclose()
        # A write racing the connection's end may still be accepted by the socket (TCP takes
        # data after the peer's FIN); the sender notices on a later send at the latest.
        with pytest.raises(PeerUnavailable):
            for _ in range(100):
                await sender.send([tensor("r2", "x", np.zeros(3))])
                await asyncio.sleep(0.01)
        async with net.transport(address) as second:
            # gRPC reconnects on its own backoff (at most 1 s); until then sends fail fast
            async with asyncio.timeout(10):
                while True:
                    try:
                        await sender.send([tensor("r3", "x", np.zeros(3))])
                        break
                    except PeerUnavailable:
                        await asyncio.sleep(0.02)  # polling interval
            [got] = await receive(second.inbox, 1)
            assert got.request_id == "r3"
    finally:
        await first.aclose()
        await sender.aclose()


async def test_invalid_array_is_refused_before_sending(net, server) -> None:
    async with net.sender(server.address) as sender:
        with pytest.raises(InvalidTensor, match="cannot travel"):
            await sender.send([tensor("r", "o", np.array(["text"], dtype=object))])
        await sender.send([tensor("r", "ok", np.zeros(2))])
        [got] = await receive(server.inbox, 1)
        assert got.name == "ok"


# -- bad input: the sender gets the error, other streams carry on, nothing is left behind ----

BAD_INPUT = [
    pytest.param(
        [frame(pb.TensorPart(header=header(dtype=99), data=F32))],
        InvalidTensor,
        "unknown dtype 99",
        id="unknown-dtype",
    ),
    pytest.param(
        [frame(pb.TensorPart(header=header(shape=(2, 3), byte_length=20)))],
        InvalidTensor,
        "shape \\[2, 3\\] of float32 needs 24 bytes but the header declares byte length 20",
        id="shape-vs-byte-length",
    ),
    pytest.param(
        [frame(pb.TensorPart(header=header(shape=(4, -2), byte_length=8)))],
        InvalidTensor,
        "negative dimension",
        id="negative-dimension",
    ),
    pytest.param(
        [frame(pb.TensorPart(header=header(shape=(2**62, 2**62), byte_length=8)))],
        InvalidTensor,
        "overflows: absurd dimensions",
        id="absurd-dimensions",
    ),
    pytest.param(
        [frame(pb.TensorPart(header=header(shape=(1 << 19,)), data=F32))],
        TensorTooLarge,
        "2097152 bytes exceeds this node's limit of 1048576",
        id="too-large",
    ),
    pytest.param(
        [
            frame(pb.TensorPart(header=header(), data=F32[:4])),
            frame(pb.TensorPart(offset=4, data=F32)),
        ],
        ProtocolError,
        "chunk of 8 bytes at offset 4 goes beyond the declared length of 8",
        id="chunk-beyond-length",
    ),
    pytest.param(
        [
            frame(pb.TensorPart(header=header("a"), data=F32[:4])),
            frame(pb.TensorPart(header=header("b"), data=F32)),
        ],
        IncompleteTensor,
        "tensor 'a' of request 'r': header of tensor 'b' of request 'r' arrived after 4 of 8 bytes",
        id="fewer-bytes-than-declared",
    ),
    pytest.param(
        [frame(pb.TensorPart(header=header(shape=(100,)), data=F32))],
        IncompleteTensor,
        "stream ended after 8 of 400 bytes",
        id="truncated-stream",
    ),
    pytest.param(
        [
            frame(pb.TensorPart(header=header(), data=F32)),
            frame(pb.TensorPart(header=header(), data=F32)),
        ],
        DuplicateTensor,
        "tensor 't' of request 'r' arrived twice",
        id="duplicate-tensor",
    ),
    pytest.param(
        [b"\xff\xfe garbage \x00\x07"],
        ProtocolError,
        "garbage bytes",
        id="garbage-bytes",
    ),
    pytest.param(
        [frame(pb.TensorPart(header=header(crc32=7), data=F32))],
        ChecksumMismatch,
        "crc32 of the data is 0x[0-9a-f]+, header declares 0x00000007",
        id="checksum",
    ),
    pytest.param(
        [frame(pb.TensorPart(offset=0, data=F32))],
        ProtocolError,
        "chunk at offset 0 without a tensor header",
        id="chunk-without-header",
    ),
]


@pytest.mark.parametrize(("frames", "error", "message"), BAD_INPUT)
async def test_bad_input_is_rejected_while_other_streams_carry_on(
    net, frames, error, message
) -> None:
    async with (
        net.transport(config=LIMITED) as server,
        net.sender(server.address) as good,
        net.sender(server.address) as bad,
    ):
        big = np.arange(CHUNK_BYTES // 4, dtype=np.float32)  # two frames, at the limit
        await good.send([tensor("g1", "x", big)])
        with pytest.raises(error, match=message) as caught:
            await bad.send_frames(frames)
            await bad.flush()
        assert f"peer {server.address}: " in str(caught.value)
        # The good stream was open all along and still works. (The bad stream may have
        # delivered valid tensors before its bad frame.)
        await good.send([tensor("g2", "x", big)])
        got = []
        while len(got) < 2:
            t = await asyncio.wait_for(server.inbox.get(), 10)
            if t.request_id.startswith("g"):
                got.append(t)
        assert [t.request_id for t in got] == ["g1", "g2"]
        np.testing.assert_array_equal(got[1].array, big)
        while (extra := server.inbox.get_nowait()) is not None:
            assert extra.request_id == "r"
        await eventually(lambda: server.stats().streams == 1, what="bad stream gone")
        assert server.stats().pending_bytes == 0
        # The bad sender is usable again: a fresh stream.
        await bad.send([tensor("b2", "x", np.zeros(1))])
        [again] = await receive(server.inbox, 1)
        assert again.request_id == "b2"


async def test_peer_disconnecting_mid_tensor_frees_its_buffer(net, server) -> None:
    data = np.arange(3 * CHUNK_BYTES // 4, dtype=np.float32).tobytes()
    async with net.sender(server.address) as bad, net.sender(server.address) as good:
        await good.send([tensor("g", "x", np.zeros(2))])
        await bad.send_frames(
            [frame(pb.TensorPart(header=header(shape=(3 * CHUNK_BYTES // 4,)), data=data[:1000]))]
        )
        await eventually(
            lambda: server.stats().pending_bytes == 3 * CHUNK_BYTES, what="partial tensor buffered"
        )
        assert server.stats().pending_tensors == 1
        bad.abort()
        await eventually(lambda: server.stats().pending_bytes == 0, what="buffer freed")
        assert server.stats().pending_tensors == 0
        await eventually(lambda: server.stats().streams == 1, what="bad stream gone")
        await good.send([tensor("g2", "x", np.zeros(2))])
        assert [t.request_id for t in await receive(server.inbox, 2)] == ["g", "g2"]


async def test_cancelled_send_does_not_splice_the_rest_onto_the_next(net) -> None:
    config = TransportConfig(connect_timeout_s=1.0, max_buffered_bytes=1)
    async with net.transport(config=config) as slow, net.sender(slow.address) as sender:
        # r0 fills the inbox and "held" waits whole for room, so the receiver reads no further:
        # r1, far more than flow-control windows and socket buffers take, cannot finish.
        await sender.send([tensor("r0", "x", np.ones(4))])
        await sender.send([tensor("held", "x", np.ones(4))])
        await eventually(lambda: slow.stats().held_tensors == 1, what="held tensor waiting")
        pulled = 0

        def counted() -> Iterator[bytes]:
            nonlocal pulled
            big = np.ones(64 * CHUNK_BYTES // 4, dtype=np.float32)
            for data in encode_frames([tensor("r1", "x", big)], chunk_bytes=CHUNK_BYTES):
                pulled += 1
                yield data

        task = asyncio.create_task(sender.send_frames(counted()))
        # The second frame is pulled only once the first was written: r1 is part-way.
        await eventually(lambda: pulled >= 2, what="r1 part-way")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pulled < 64  # it was cancelled mid-tensor, not after its last frame
        # The cancelled stream ends at the receiver; the whole tensor it held is still
        # delivered (its send had completed), past the inbox's byte bound.
        await eventually(lambda: slow.stats().streams == 0, what="cancelled stream gone")
        assert slow.stats().held_tensors == 0
        assert [t.request_id for t in await receive(slow.inbox, 2)] == ["r0", "held"]
        await sender.send([tensor("r2", "x", np.zeros(3))])
        got = await slow.inbox.get()
        assert got.request_id == "r2"
        np.testing.assert_array_equal(got.array, np.zeros(3))
        await eventually(lambda: slow.stats().pending_bytes == 0, what="partial freed")


# -- backpressure --------------------------------------------------------------------------


async def test_slow_consumer_slows_the_sender_and_bounds_memory(net) -> None:
    tensor_bytes = 1 << 20
    budget = 4 * tensor_bytes
    count = 64
    config = TransportConfig(connect_timeout_s=1.0, max_buffered_bytes=budget)
    async with net.transport(config=config) as server, net.sender(server.address) as sender:
        sent = 0
        peak = 0

        async def produce() -> None:
            nonlocal sent
            for i in range(count):
                await sender.send([tensor(f"r{i}", "x", np.full(tensor_bytes // 4, i, "f4"))])
                sent += 1

        producer = asyncio.create_task(produce())
        ahead = []
        for i in range(count):
            got = await asyncio.wait_for(server.inbox.get(), 10)
            assert got.request_id == f"r{i}"
            stats = server.stats()
            peak = max(peak, stats.queued_bytes + stats.pending_bytes)
            ahead.append(sent - i)
            await asyncio.sleep(0.003)  # the consumer's "work"
        await producer
    # Memory: at most the inbox budget plus one tensor in assembly.
    assert server.inbox.high_water_bytes <= budget
    assert peak <= budget + tensor_bytes
    # The sender never ran far ahead of the consumer: the inbox budget plus what flow-control
    # windows and socket buffers hold (measured: 8 tensors ahead in memory; 10 over gRPC on
    # an idle machine, up to 17 on a loaded one).
    assert max(ahead) <= budget // tensor_bytes + 20, ahead
    assert max(ahead) < count // 2


async def test_inbox_closed_with_the_transport_ends_iteration(net) -> None:
    async with net.transport() as server, net.sender(server.address) as sender:
        await sender.send([tensor("r", "x", np.zeros(1))])
        await receive(server.inbox, 1)
    assert [t async for t in server.inbox] == []


async def test_closed_sender_refuses(net, server) -> None:
    sender = net.sender(server.address)
    await sender.aclose()
    with pytest.raises(TransportError, match="closed"):
        await sender.send([tensor("r", "x", np.zeros(1))])
