"""gRPC adapter of the control plane, server side: Hello, Leave, GetPlan, GetStatus,
FetchFile (and Infer, InferSession when the node serves requests).

Handlers decode a request, call one ``ControlService`` or ``InferenceService`` method and
encode the reply; the client side is ``ControlClient`` (``_client.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import EdgenodeError, ModelError
from edgenode.mesh import NodeId, valid_node_id
from edgenode.transport._reports import (
    message_of,
    plan_message,
    plan_report,
    record_of,
    report_from,
)
from edgenode.transport._services import ControlService, InferenceService, PlanView, StatusView
from edgenode.transport._session import infer_status, session_handler, unknown_input
from edgenode.transport.codec import (
    DEFAULT_MAX_TENSOR_BYTES,
    FrameDecoder,
    RequestId,
    Tensor,
    encode_frames,
)

__all__ = ["FILE_CHUNK_BYTES", "control_handlers"]

logger = logging.getLogger(__name__)

FILE_CHUNK_BYTES = 1 << 20  # FetchFile streams a file in chunks of this size
PROBE_MAX_BYTES = 256 << 20  # a Probe call sending more is refused (clients send <= 16 MiB)
PROBE_BUSY = "busy: measuring another link"  # refuses a probe while another one runs


def _plan_reply(state: PlanView) -> pb.PlanReply:
    return plan_message(plan_report(state))


def _status_reply(status: StatusView) -> pb.NodeStatus:
    return message_of(report_from(status))


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

    probing = asyncio.Lock()  # one probe at a time: two would share this node's link

    async def probe(chunks: AsyncIterator[bytes], context: Any) -> pb.ProbeReply:
        if probing.locked():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, PROBE_BUSY)
        async with probing:
            return await timed_probe(chunks, context)

    async def timed_probe(chunks: AsyncIterator[bytes], context: Any) -> pb.ProbeReply:
        # The chunks are counted, not parsed: a ProbeChunk is one tag, a length, the bytes.
        # Timed from the first chunk's arrival, so that connecting is not in the rate.
        loop = asyncio.get_running_loop()
        total = first = 0
        began = ended = 0.0
        async for chunk in chunks:
            ended = loop.time()
            if not total:
                began, first = ended, len(chunk)
            total += len(chunk)
            if total > PROBE_MAX_BYTES:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"a probe is at most {PROBE_MAX_BYTES} B"
                )
        timed = ended - began
        rate = (total - first) / timed if timed > 0 else 0.0
        return pb.ProbeReply(bytes=total, bytes_per_s=rate)

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
        "Probe": grpc.stream_unary_rpc_method_handler(
            probe, response_serializer=pb.ProbeReply.SerializeToString
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
