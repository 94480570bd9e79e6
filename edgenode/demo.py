"""`edgenode demo`: a local cluster on 127.0.0.1, sample photos through it, a timing.

Cuts the model, starts N `edgenode run` processes that find each other over mDNS on
the loopback interface, waits until they agree on a plan and every node has loaded its
parts, warms the cluster up with each photo, then times requests under a deadline that
follows the warm-up's measured speed; the CLI checks every answer against the whole
model run locally and stops the nodes. When a request misses its deadline, the error
names the slowest node and part (from the nodes' own run-time statistics) or the nodes
that stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenode.errors import EdgenodeError

if TYPE_CHECKING:
    from edgenode.client.cluster import ClusterClient
    from edgenode.transport import NodeReport

__all__ = ["LocalNode", "diagnose", "infer_within", "local_cluster", "request_deadline",
           "wait_agreed", "warm_up"]  # fmt: skip

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
AGREE_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
# The first request through a node traces its parts (Keras) or loads them: slow, once.
WARM_UP_TIMEOUT_S = 120.0
# A warmed-up request gets this many times the slowest warm-up latency, and never less
# than MIN_REQUEST_TIMEOUT_S: a loaded 2-core machine can stall a process for seconds.
DEADLINE_FACTOR = 20.0
MIN_REQUEST_TIMEOUT_S = 5.0


@dataclass(slots=True)
class LocalNode:
    """A node process started by the demo."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    ready_file: Path  # `edgenode run --ready-file`: written once the node serves
    address: str = ""


async def _wait_serving(node: LocalNode, deadline: float) -> None:
    """Until the node's ready file names the address it serves on."""
    while True:
        try:
            ready = json.loads(node.ready_file.read_text())
        except FileNotFoundError:
            ready = None
        if ready is not None and ready.get("pid") == node.process.pid:
            node.address = str(ready["address"])
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
    from edgenode.model.manifest import load_manifest
    from edgenode.runtime.selfbench import measure_speed

    # The nodes share this machine: one measurement, the same score for all, so the
    # plan does not depend on which node happened to benchmark while another started.
    backend = load_manifest(model_dir).backend  # what the nodes will run
    speed_gflops = measure_speed(backend=backend) / 1e9
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
            ready_file = workdir / f"{name}.ready.json"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "edgenode.cli", "run", "--config", str(config),
                    "--name", name, "--listen", "127.0.0.1:0", "--model", str(model_dir),
                    "--interfaces", "127.0.0.1", "--state-dir", str(workdir / name),
                    "--ready-file", str(ready_file),
                    stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            nodes.append(LocalNode(name=name, process=process, log=log, ready_file=ready_file))
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


def _unready(status: NodeReport, names: set[str]) -> str:
    """Why a node is not ready to serve ("" when it is)."""
    plan = status.plan
    who = status.label
    if not plan.agreed:
        return f"{who} has not agreed on a plan"
    if set(plan.members) != names:
        return f"{who} counts {len(plan.members)} of {len(names)} nodes"
    missing = status.assigned - set(status.parts)
    if missing:
        return f"{who} is still loading parts {sorted(missing)}"
    return ""


async def wait_agreed(client: ClusterClient, nodes: list[LocalNode]) -> list[NodeReport]:
    """Statuses once every node serves the same agreed plan over all of them and has
    loaded the parts it gives it."""
    names = {n.name for n in nodes}
    deadline = time.monotonic() + AGREE_TIMEOUT_S
    while True:
        statuses, waiting = [], []
        for node in nodes:
            try:
                statuses.append(await client.status(node.address))
            except EdgenodeError:
                waiting.append(f"{node.name} does not answer")
        waiting += [why for s in statuses if (why := _unready(s, names))]
        digests = {s.plan.agreed_digest for s in statuses}
        if len(digests) > 1:
            waiting.append(f"{len(digests)} different plans")
        if not waiting:
            return sorted(statuses, key=lambda s: s.node_id)
        if time.monotonic() > deadline:
            raise EdgenodeError(
                f"the nodes were not ready within {AGREE_TIMEOUT_S:g} s: {'; '.join(waiting)}"
            )
        await asyncio.sleep(POLL_INTERVAL_S)


async def diagnose(client: ClusterClient, nodes: list[LocalNode]) -> str:
    """Which node and part were slowest (by their own p90 run time), and which nodes did
    not answer: for the error of a request that missed its deadline."""
    slowest: tuple[float, str] | None = None
    silent = []
    for node in nodes:
        try:
            status = await client.status(node.address)
        except EdgenodeError:
            silent.append(node.name)
            continue
        for stage in status.stages:
            p90 = stage.p90_s
            if slowest is None or p90 > slowest[0]:
                slowest = (p90, f"{node.name} part {stage.part} (p90 {p90 * 1e3:.1f} ms)")
    found = []
    if silent:
        found.append(f"not answering: {', '.join(silent)}")
    if slowest is not None:
        found.append(f"slowest: {slowest[1]}")
    return "; ".join(found) or "no node has run a part yet"


def request_deadline(warm_up_s: list[float]) -> float:
    """The deadline of a warmed-up request, from the warm-up's measured latencies."""
    return max(MIN_REQUEST_TIMEOUT_S, DEADLINE_FACTOR * max(warm_up_s))


async def infer_within(
    client: ClusterClient,
    nodes: list[LocalNode],
    origin: str,
    inputs: dict[str, Any],
    timeout_s: float,
) -> tuple[dict[str, Any], float]:
    """One request's outputs and latency; an error naming the slow node/part when it
    misses ``timeout_s``."""
    t0 = time.perf_counter()
    try:
        outputs = await client.infer(inputs, timeout_s=timeout_s, origin=origin)
    except EdgenodeError as exc:
        raise EdgenodeError(f"{exc}; {await diagnose(client, nodes)}") from None
    return outputs, time.perf_counter() - t0


async def warm_up(
    client: ClusterClient,
    nodes: list[LocalNode],
    origin: str,
    batches: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[float]]:
    """Every batch through the cluster twice (the first pass traces or loads the parts):
    the second pass's answers and latencies."""
    for batch in batches:
        await infer_within(client, nodes, origin, batch, WARM_UP_TIMEOUT_S)
    answers, latencies = [], []
    for batch in batches:
        outputs, seconds = await infer_within(client, nodes, origin, batch, WARM_UP_TIMEOUT_S)
        answers.append(outputs)
        latencies.append(seconds)
    return answers, latencies
