"""A node that only advertises and reports what it discovers: one JSON object per stdout line.

Run as `python -m tests.mesh._advertiser --node-id ID --cluster C --port P`. Prints
{"event": "ready"}, then {"event": "joined"|"updated"|"left", "node_id": ..., "incarnation": ...}
per discovery event. SIGTERM or SIGINT closes the discovery (sending the mDNS goodbye) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from edgenode.mesh import Capacity, NodeId, PeerInfo, ZeroconfDiscovery, new_incarnation


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    info = PeerInfo(
        node_id=NodeId(args.node_id),
        name=args.node_id,
        addresses=("127.0.0.1",),
        port=args.port,
        protocol=1,
        cluster=args.cluster,
        manifest_identity=args.model,
        capacity=Capacity(speed=1.0, memory_bytes=2**30),
        incarnation=args.incarnation if args.incarnation is not None else new_incarnation(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ZeroconfDiscovery(info, interfaces=["127.0.0.1"]) as discovery:
        events = discovery.events()
        say(event="ready", incarnation=info.incarnation)

        async def report() -> None:
            async for event in events:
                say(
                    event=event.kind.value,
                    node_id=event.peer.node_id,
                    incarnation=event.peer.incarnation,
                )

        reporter = asyncio.create_task(report())
        await stop.wait()
    await reporter
    say(event="closed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="ab" * 32)
    parser.add_argument("--incarnation", type=int)
    asyncio.run(main(parser.parse_args()))
