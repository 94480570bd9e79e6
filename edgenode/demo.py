"""`edgenode demo`: a local cluster on 127.0.0.1, one inference, a timing comparison.

Cuts the model, starts N `edgenode run` processes that find each other over mDNS on
the loopback interface, waits until they agree on a plan, sends an image through the
cluster, checks the answer against the whole model run locally, and stops the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenode.errors import EdgenodeError
from edgenode.transport._control import ControlClient, status_to_dict

__all__ = ["LocalNode", "local_cluster", "wait_agreed"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
AGREE_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
_SERVING = re.compile(rb"serving on (\S+:\d+)")


@dataclass(slots=True)
class LocalNode:
    """A node process started by the demo."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    address: str = ""


async def _wait_serving(node: LocalNode, deadline: float) -> None:
    while True:
        match = _SERVING.search(node.log.read_bytes())
        if match:
            node.address = match.group(1).decode()
            return
        if node.process.returncode is not None:
            tail = node.log.read_text(errors="replace").strip().splitlines()[-1:]
            raise EdgenodeError(f"node {node.name} exited: {tail[0] if tail else 'no output'}")
        if time.monotonic() > deadline:
            raise EdgenodeError(f"node {node.name} did not start within {START_TIMEOUT_S:g} s")
        await asyncio.sleep(POLL_INTERVAL_S)


@contextlib.asynccontextmanager
async def local_cluster(
    model_dir: Path, workdir: Path, count: int, *, say: Callable[[str], None], key: Path | None
) -> AsyncIterator[list[LocalNode]]:
    """``count`` node processes serving ``model_dir``, members by the credential ``key``
    (None: an insecure cluster); stopped with SIGTERM on exit."""
    from edgenode.runtime.selfbench import measure_speed

    # The nodes share this machine: one measurement, the same score for all, so the
    # plan does not depend on which node happened to benchmark while another started.
    speed_gflops = measure_speed() / 1e9
    config = workdir / "node.toml"
    security = f'key = "{key}"' if key is not None else "insecure = true"
    config.write_text(
        f"[node]\nspeed_gflops = {speed_gflops:.3f}\n"
        f'[cluster]\nname = "demo-{uuid.uuid4().hex[:8]}"\n'
        f"[security]\n{security}\n"
    )
    nodes: list[LocalNode] = []
    try:
        for i in range(count):
            name = f"demo-{i}"
            log = workdir / f"{name}.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "edgenode.cli", "run", "--config", str(config),
                    "--name", name, "--listen", "127.0.0.1:0", "--model", str(model_dir),
                    "--interfaces", "127.0.0.1", "--state-dir", str(workdir / name),
                    stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            nodes.append(LocalNode(name=name, process=process, log=log))
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in nodes:
            await _wait_serving(node, deadline)
            say(f"node {node.name} serving on {node.address}")
        yield nodes
    finally:
        for node in nodes:
            if node.process.returncode is None:
                node.process.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                async with asyncio.timeout(30):
                    await node.process.wait()
            except TimeoutError:
                node.process.kill()
                await node.process.wait()


async def wait_agreed(client: ControlClient, nodes: list[LocalNode]) -> list[dict[str, Any]]:
    """Statuses once every node serves the same agreed plan over all of them."""
    names = {n.name for n in nodes}
    deadline = time.monotonic() + AGREE_TIMEOUT_S
    while True:
        statuses = []
        for node in nodes:
            with contextlib.suppress(EdgenodeError):
                statuses.append(dict(status_to_dict(await client.status(node.address))))
        digests = {s["plan"]["agreed_digest"] for s in statuses}
        settled = all(
            s["plan"]["agreed_digest"] == s["plan"]["computed_digest"]
            and set(s["plan"]["members"]) == names
            for s in statuses
        )
        if len(statuses) == len(nodes) and len(digests) == 1 and "" not in digests and settled:
            return sorted(statuses, key=lambda s: s["node"]["node_id"])
        if time.monotonic() > deadline:
            raise EdgenodeError(f"the nodes did not agree on a plan within {AGREE_TIMEOUT_S:g} s")
        await asyncio.sleep(POLL_INTERVAL_S)
