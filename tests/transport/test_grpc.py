"""gRPC specifics: status codes on the wire, health service, big tensors, uvloop."""

from __future__ import annotations

import asyncio
import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.transport import (
    CHUNK_BYTES,
    SERVICE_NAME,
    GrpcPeer,
    GrpcTransport,
    TransportConfig,
    run,
)
from edgenode.transport._options import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from tests.transport.conftest import eventually, frame, header, receive, tensor
from tests.transport.test_transport import BAD_INPUT, LIMITED

CODES = {
    "unknown-dtype": grpc.StatusCode.INVALID_ARGUMENT,
    "shape-vs-byte-length": grpc.StatusCode.INVALID_ARGUMENT,
    "negative-dimension": grpc.StatusCode.INVALID_ARGUMENT,
    "absurd-dimensions": grpc.StatusCode.INVALID_ARGUMENT,
    "too-large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "chunk-beyond-length": grpc.StatusCode.INVALID_ARGUMENT,
    "fewer-bytes-than-declared": grpc.StatusCode.DATA_LOSS,
    "truncated-stream": grpc.StatusCode.DATA_LOSS,
    "duplicate-tensor": grpc.StatusCode.ALREADY_EXISTS,
    "garbage-bytes": grpc.StatusCode.INVALID_ARGUMENT,
    "checksum": grpc.StatusCode.DATA_LOSS,
    "chunk-without-header": grpc.StatusCode.INVALID_ARGUMENT,
}


def test_every_bad_input_case_has_a_status() -> None:
    assert {p.id for p in BAD_INPUT} == set(CODES)


@pytest.fixture
async def server():
    async with GrpcTransport(config=LIMITED) as transport:
        yield transport


async def raw_stream(address: str, frames: list[bytes]) -> grpc.aio.AioRpcError | bytes:
    """Send frames on a plain gRPC call; the status error, or the reply bytes."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = channel.stream_unary(f"/{SERVICE_NAME}/Stream")()
        try:
            for f in frames:
                await call.write(f)
            await call.done_writing()
            return await call
        except grpc.aio.AioRpcError as exc:
            return exc
        except asyncio.InvalidStateError:
            code = await call.code()
            assert code != grpc.StatusCode.OK
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                return exc
            raise


@pytest.mark.parametrize(("frames", "error", "message"), BAD_INPUT)
async def test_bad_input_status_code_and_details(server, request, frames, error, message) -> None:
    case = request.node.callspec.id
    async with GrpcPeer(server.address) as good:
        await good.send([tensor("g1", "x", np.zeros(5))])
        result = await raw_stream(server.address, frames)
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() == CODES[case]
        assert re.search(message, result.details())
        assert ("edgenode-error", error.__name__) in tuple(result.trailing_metadata())
        await good.send([tensor("g2", "x", np.ones(5))])
        got = [t for t in await receive(server.inbox, 2 + (case == "duplicate-tensor"))]
        assert [t.request_id for t in got if t.request_id != "r"] == ["g1", "g2"]


async def test_good_raw_stream_gets_a_summary(server) -> None:
    frames = [frame(pb.TensorPart(header=header(), data=np.zeros(2, "f4").tobytes()))]
    reply = await raw_stream(server.address, frames)
    assert isinstance(reply, bytes)
    summary = pb.StreamSummary.FromString(reply)
    assert (summary.tensors, summary.bytes) == (1, 8)


async def test_client_disconnect_mid_tensor_frees_buffers(server) -> None:
    data = np.zeros(CHUNK_BYTES // 2, dtype=np.uint8).tobytes()
    channel = grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS)
    call = channel.stream_unary(f"/{SERVICE_NAME}/Stream")()
    await call.write(frame(pb.TensorPart(header=header(shape=(CHUNK_BYTES // 4,)), data=data)))
    await eventually(lambda: server.stats().pending_bytes == CHUNK_BYTES, what="partial")
    await channel.close()  # the connection goes away mid-tensor
    await eventually(lambda: server.stats().streams == 0, what="stream gone")
    assert server.stats().pending_bytes == 0
    assert server.stats().pending_tensors == 0


async def test_health_service_reports_serving(server) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_infer_is_declared_but_not_served_yet(server) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.stream_stream(f"/{SERVICE_NAME}/Infer")(iter([b""]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_busy_port_is_a_transport_error(server) -> None:
    from edgenode.errors import TransportError

    port = int(server.address.rsplit(":", 1)[1])
    with pytest.raises(TransportError, match=r"cannot listen on 127\.0\.0\.1"):
        async with GrpcTransport("127.0.0.1", port):
            pass


def test_message_limit_is_not_raised() -> None:
    assert MAX_MESSAGE_BYTES == 4 << 20
    assert CHUNK_BYTES + 1024 < MAX_MESSAGE_BYTES


def test_round_trip_on_uvloop() -> None:
    pytest.importorskip("uvloop")

    async def main() -> str:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with GrpcTransport() as b, GrpcTransport() as a:
            await a.peer(b.address).send([tensor("u", "x", np.arange(10))])
            [got] = await receive(b.inbox, 1)
            return got.request_id

    assert run(main(), use_uvloop=True) == "u"


@pytest.mark.slow
async def test_256_mib_tensor_over_grpc() -> None:
    size = 256 << 20
    x = np.arange(size // 8, dtype=np.int64).reshape(1024, -1)
    async with (
        GrpcTransport(config=TransportConfig(max_buffered_bytes=size)) as b,
        GrpcPeer(b.address, config=TransportConfig(checksum=True)) as sender,
    ):
        await sender.send([tensor("big", "x", x)])
        [got] = await receive(b.inbox, 1, timeout_s=60)
    assert got.array.shape == x.shape
    assert np.array_equal(got.array, x)


async def test_sends_to_a_dead_peer_fail_fast_while_grpc_backs_off() -> None:
    from edgenode.errors import PeerUnavailable
    from edgenode.transport import GrpcPeer, RequestId, Tensor

    patient = TransportConfig(connect_timeout_s=600.0)  # waiting for it would hang the test
    data = Tensor(RequestId("r"), "x", np.arange(4, dtype=np.float32))
    receiver = GrpcTransport("127.0.0.1", 0)
    await receiver.__aenter__()
    async with GrpcPeer(receiver.address, config=patient) as peer:
        await peer.send([data])
        await receiver.aclose()  # the peer dies

        def backing_off() -> bool:
            channel = peer._channel
            assert channel is not None
            state = channel.get_state(try_to_connect=True)
            return state is grpc.ChannelConnectivity.TRANSIENT_FAILURE

        await eventually(backing_off)
        async with asyncio.timeout(10):  # without the fast path: the 600 s connect wait
            with pytest.raises(PeerUnavailable, match=r"not reachable \(reconnecting\)"):
                await peer.send([data])
