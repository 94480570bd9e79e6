"""The two child processes of a transport run: a driver that measures and a peer that sinks
or echoes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import numpy as np

from _transport.links import (
    KIND_ACK,
    KIND_ECHO,
    KIND_QUIT,
    BareLink,
    GrpcLink,
    RawEndpoint,
    RawLink,
)
from _transport.setups import MIB, Plan
from _transport.throughput import measure


def child_main(args: argparse.Namespace) -> None:
    from edgenode.transport import run, tune_malloc

    if args.malloc == "tuned":
        tune_malloc()
    elif args.malloc == "mmap":
        tune_malloc(use_mmap=True)
    if args.option:
        import edgenode.transport._grpc as grpc_module

        # A variant's options are added where the gRPC transport reads them (its module's
        # names, imported from edgenode.transport._options).
        extra = tuple((k, int(v)) for k, v in (o.split("=", 1) for o in args.option))
        for name in ("CHANNEL_OPTIONS", "SERVER_OPTIONS"):
            setattr(grpc_module, name, (*getattr(grpc_module, name), *extra))
    main = _driver if args.role == "driver" else _peer
    run(main(args), use_uvloop=args.uvloop)


def announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def readline() -> str:
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


async def _peer(args: argparse.Namespace) -> None:
    if args.kind == "raw":
        await _raw_peer()
    elif args.kind == "bare":
        await _bare_node(args, driver=False)
    else:
        await _grpc_peer(args)


async def _bare_node(args: argparse.Namespace, *, driver: bool) -> dict[str, Any] | None:
    import grpc

    link = BareLink(args.chunk_bytes)
    server = grpc.aio.server()
    handlers = {"Sink": grpc.stream_unary_rpc_method_handler(link.sink)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bare.B", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce(f"127.0.0.1:{port}")
    channel = grpc.aio.insecure_channel(await readline())
    link.call = channel.stream_unary("/bare.B/Sink")()
    result = None
    if driver:
        plan = Plan(**json.loads(args.plan))
        result = await measure(link, plan, args)
        await link.send("quit", 0, np.zeros(1, dtype=np.float32))
    else:
        while True:
            kind, seq, array = await link.queue.get()
            if kind == KIND_ECHO:
                await link.send_kind(KIND_ECHO, seq, array)
            elif kind == KIND_ACK:
                await link.send_kind(KIND_ACK, seq, np.zeros(1, dtype=np.float32))
            elif kind == KIND_QUIT:
                break
    await link.call.done_writing()
    await channel.close()
    await server.stop(0.1)
    return result


async def _grpc_peer(args: argparse.Namespace) -> None:
    from edgenode.transport import GrpcTransport, RequestId, Tensor, TransportConfig

    config = TransportConfig(chunk_bytes=args.chunk_bytes, max_buffered_bytes=256 * MIB)
    async with GrpcTransport(config=config) as node:
        announce(node.address)
        back = node.peer(await readline())
        async for tensor in node.inbox:
            if tensor.name == "echo":
                await back.send([tensor])
            elif tensor.name.startswith("batch"):  # "batch<count>.<index>": echo all at once
                batch = [tensor]
                count = int(tensor.name[len("batch") :].split(".")[0])
                while len(batch) < count:
                    batch.append(await node.inbox.get())
                await back.send(batch)
            elif tensor.name == "ack":
                await back.send([Tensor(RequestId(tensor.request_id), "ack", np.zeros(1))])
            elif tensor.name == "quit":
                break


async def _raw_peer() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_message(endpoint: RawEndpoint, kind: int, seq: int, array: np.ndarray) -> None:
        if kind == KIND_ECHO:
            endpoint.send(KIND_ECHO, seq, array)
        elif kind == KIND_ACK:
            endpoint.send(KIND_ACK, seq, np.zeros(1, dtype=np.float32))
        elif kind == KIND_QUIT and not done.done():
            done.set_result(None)

    server = await loop.create_server(lambda: RawEndpoint(on_message), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    announce(f"127.0.0.1:{port}")
    await readline()
    await done
    server.close()


# The driver ------------------------------------------------------------------------------


async def _driver(args: argparse.Namespace) -> None:
    plan = Plan(**json.loads(args.plan))
    if args.kind == "bare":
        result = await _bare_node(args, driver=True)
    elif args.kind == "raw":
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray] = asyncio.Queue()
        announce("raw")
        host, port = (await readline()).rsplit(":", 1)
        _, endpoint = await loop.create_connection(
            lambda: RawEndpoint(lambda e, k, s, a: queue.put_nowait(a)), host, int(port)
        )
        result = await measure(RawLink(endpoint, queue), plan, args)
        endpoint.send(KIND_QUIT, 0, np.zeros(0, dtype=np.float32))
        await endpoint.drain()
        assert endpoint.transport is not None
        endpoint.transport.close()
    else:
        from edgenode.transport import GrpcTransport, TransportConfig

        config = TransportConfig(chunk_bytes=args.chunk_bytes, max_buffered_bytes=256 * MIB)
        async with GrpcTransport(config=config) as node:
            announce(node.address)
            peer = node.peer(await readline())
            link = GrpcLink(node, peer)
            result = await measure(link, plan, args)
            await link.send("quit", 0, np.zeros(1, dtype=np.float32))
            await peer.flush()
    announce("RESULT " + json.dumps(result))
