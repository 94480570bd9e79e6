"""InferSession: many requests on one call, answers and errors per request, on real gRPC.

The node side runs over a real gRPC server on 127.0.0.1; the request path behind it is a
complete in-memory stand-in (``TwiceX``), since these tests are about the session above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from edgenode.errors import InferenceFailed, ModelError, Overloaded, PeerUnavailable
from edgenode.transport import SERVICE_NAME, ControlClient, GrpcTransport
from edgenode.transport import _session as session_module
from edgenode.transport._control import control_handlers
from edgenode.transport._session import END, ERROR
from edgenode.transport.codec import FrameDecoder, RequestId, Tensor, encode_frames


class TwiceX:
    """The request path of a model y = 2x + w: admission, input checks, gates to hold a
    request (by the value of x) until the test lets it finish."""

    input_names = frozenset({"x", "w"})

    def __init__(self) -> None:
        self.gates: dict[float, asyncio.Event] = {}
        self.busy = False
        self.sessions = 0  # InferSession calls served

    def check_admission(self) -> None:
        if self.busy:
            raise Overloaded("node n is busy")

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(self.input_names - inputs.keys())
        if missing:
            raise ModelError(f"model inputs: missing {missing}")
        x, w = inputs["x"], inputs["w"]
        if x.shape != w.shape:
            raise ModelError(f"x and w differ in shape: {x.shape} and {w.shape}")
        gate = self.gates.get(float(x.flat[0]))
        if gate is not None:
            await gate.wait()
        return {"y": 2 * x + w}


def request(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), value, np.float32), "w": np.ones((1, 3), np.float32)}


def handlers_of(router: TwiceX) -> dict[str, grpc.RpcMethodHandler]:
    """A node's Infer and InferSession methods over ``router``, counting sessions."""

    def serving() -> TwiceX:
        router.sessions += 1
        return router

    return control_handlers(lambda: None, serving)  # type: ignore[arg-type,return-value]


@pytest.fixture
async def node() -> AsyncIterator[tuple[str, TwiceX]]:
    router = TwiceX()
    async with GrpcTransport("127.0.0.1", 0, handlers=handlers_of(router)) as transport:
        yield transport.address, router


@pytest.fixture
async def client() -> AsyncIterator[ControlClient]:
    c = ControlClient(protocol=1)
    try:
        yield c
    finally:
        await c.aclose()


async def test_requests_share_one_call_and_each_gets_its_own_answer(node, client) -> None:
    address, router = node
    router.gates[0.0] = asyncio.Event()
    first = asyncio.create_task(client.infer(address, request(0.0), timeout_s=10))
    rest = await asyncio.gather(
        *(client.infer(address, request(float(i)), timeout_s=10) for i in range(1, 20))
    )
    assert not first.done()  # later requests were answered while the first still ran
    for i, out in enumerate(rest, start=1):
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i + 1, np.float32))
    router.gates[0.0].set()
    np.testing.assert_array_equal((await first)["y"], np.ones((1, 3), np.float32))
    assert router.sessions == 1


async def test_errors_come_back_per_request_and_the_session_goes_on(node, client) -> None:
    address, router = node
    with pytest.raises(InferenceFailed, match="'z' is not an input of the model"):
        await client.infer(address, {**request(1.0), "z": np.zeros(1)}, timeout_s=10)
    with pytest.raises(InferenceFailed, match=r"missing \['w'\]"):
        await client.infer(address, {"x": np.zeros((1, 3), np.float32)}, timeout_s=10)
    with pytest.raises(InferenceFailed, match="x and w differ in shape"):
        await client.infer(address, {"x": np.zeros((1, 3)), "w": np.zeros(3)}, timeout_s=10)
    router.busy = True
    with pytest.raises(Overloaded, match="node n is busy"):
        await client.infer(address, request(1.0), timeout_s=10)
    router.busy = False
    out = await client.infer(address, request(2.0), timeout_s=10)
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 5, np.float32))
    assert router.sessions == 1


async def test_a_caller_giving_up_leaves_the_session_usable(node, client) -> None:
    address, router = node
    router.gates[7.0] = asyncio.Event()
    with pytest.raises(PeerUnavailable, match=r"no answer within 0\.2 s"):
        await client.infer(address, request(7.0), timeout_s=0.2)
    router.gates[7.0].set()  # its late answer arrives for nobody
    for value in (1.0, 2.0):
        out = await client.infer(address, request(value), timeout_s=10)
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * value + 1, np.float32))
    assert router.sessions == 1


async def test_a_restarted_node_gets_a_new_session(client) -> None:
    """The session ends with the node; the next request opens a new one on the restarted
    node without the caller noticing. While the node is down requests fail fast, and
    after that the channel's reconnect backoff decides when the node is reached again."""
    router = TwiceX()
    handlers = handlers_of(router)
    async with GrpcTransport("127.0.0.1", 0, handlers=handlers) as transport:
        address = transport.address
        await client.infer(address, request(1.0), timeout_s=10)
    port = int(address.rsplit(":", 1)[1])
    async with GrpcTransport("127.0.0.1", port, handlers=handlers):
        out = await client.infer(address, request(3.0), timeout_s=10)
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 7, np.float32))
    assert router.sessions == 2
    with pytest.raises(PeerUnavailable):
        await client.infer(address, request(1.0), timeout_s=10)
    async with GrpcTransport("127.0.0.1", port, handlers=handlers):
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            try:
                out = await client.infer(address, request(4.0), timeout_s=10)
                break
            except PeerUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)  # polling the reconnect, with a deadline
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 9, np.float32))


async def test_too_many_open_requests_end_the_call(node, client, monkeypatch) -> None:
    address, router = node
    monkeypatch.setattr(session_module, "MAX_OPEN_REQUESTS", 3)
    for i in range(4):
        router.gates[float(i)] = asyncio.Event()
    results = await asyncio.gather(
        *(client.infer(address, request(float(i)), timeout_s=10) for i in range(4)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Overloaded) for r in results), results
    assert "more than 3 requests open on one call" in str(results[0])


def _call(address: str) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:
    channel = grpc.aio.insecure_channel(address)
    return channel, channel.stream_stream(f"/{SERVICE_NAME}/InferSession")()


async def _answers(call: grpc.aio.StreamStreamCall) -> dict[str, dict[str, np.ndarray]]:
    decoder = FrameDecoder()
    out: dict[str, dict[str, np.ndarray]] = {}
    async for frame in call:
        for t in decoder.feed(frame):
            out.setdefault(str(t.request_id), {})[t.name] = t.array
    return out


async def test_half_close_answers_what_arrived_and_refuses_requests_left_open(node) -> None:
    address, _ = node
    channel, call = _call(address)
    try:
        end = np.zeros(0, np.uint8)
        whole = [Tensor(RequestId("a"), k, v) for k, v in request(1.0).items()]
        whole.append(Tensor(RequestId("a"), END, end))
        half = [Tensor(RequestId("b"), k, v) for k, v in request(2.0).items()]  # no !end
        for frame in encode_frames([*whole, *half]):
            await call.write(frame)
        await call.done_writing()
        answers = await _answers(call)
        assert await call.code() == grpc.StatusCode.OK
    finally:
        await channel.close()
    assert set(answers) == {"a", "b"}
    np.testing.assert_array_equal(answers["a"]["y"], np.full((1, 3), 3, np.float32))
    assert END in answers["a"]
    error = bytes(answers["b"][ERROR]).decode()
    assert error.startswith("INVALID_ARGUMENT: ") and "'b' was complete (no !end)" in error


async def test_a_frame_that_does_not_decode_ends_the_call(node, client) -> None:
    address, _ = node
    channel, call = _call(address)
    try:
        await call.write(b"\xff\xff\xff garbage")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _answers(call)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
    out = await client.infer(address, request(1.0), timeout_s=10)  # the node still serves
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 3, np.float32))
