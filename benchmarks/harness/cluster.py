"""A cluster of node processes: a client, waiting for an agreed plan, a running() context."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.nodes import POLL_S, START_DEADLINE_S, NodeProc, settle, stop_nodes
from harness.plans import describe_plan, stage_ranges
from harness.report import say

if TYPE_CHECKING:
    from edgenode.planning import Assignment
    from edgenode.transport import NodeReport

REQUEST_TIMEOUT_S = 60.0


class Client:
    """The benchmark's client (the product's ``ClusterClient``): status and inference calls
    to the nodes."""

    def __init__(self) -> None:
        from edgenode.client.cluster import ClusterClient

        self._client = ClusterClient()

    async def status(self, address: str) -> NodeReport | None:
        from edgenode.errors import EdgenodeError

        try:
            return await self._client.status(address)
        except EdgenodeError:  # starting, stopping or busy
            return None

    async def infer(self, address: str, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return await self._client.infer(inputs, timeout_s=REQUEST_TIMEOUT_S, origin=address)

    async def latencies(
        self, address: str, inputs: Mapping[str, np.ndarray], runs: int
    ) -> list[float]:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            await self.infer(address, inputs)
            times.append(time.perf_counter() - start)
        return times

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class Cluster:
    """Running nodes and what they agreed on."""

    nodes: list[NodeProc]
    statuses: dict[str, NodeReport] = field(default_factory=dict)

    @property
    def assignments(self) -> list[Assignment]:
        first = next(iter(self.statuses.values()))
        return list(first.plan.assignments)

    @property
    def stages(self) -> list[tuple[str, int, int]]:
        return stage_ranges(self.assignments)

    @property
    def replicas(self) -> int:
        return 1 + max(a.replica for a in self.assignments)

    def address(self, node_id: str) -> str:
        return next(n.address for n in self.nodes if n.name == node_id)

    @property
    def origin(self) -> str:
        """Address of the node running part 0 in the first pipeline."""
        return self.address(self.stages[0][0])


def _agreed(statuses: Mapping[str, NodeReport], names: set[str]) -> bool:
    if set(statuses) != names:
        return False
    digests = set()
    for st in statuses.values():
        if set(st.plan.members) != names or not st.plan.agreed:
            return False
        digests.add(st.plan.agreed_digest)
    if len(digests) != 1:
        return False
    return all(sorted(st.parts) == sorted(st.assigned) for st in statuses.values())


async def wait_agreed(client: Client, cluster: Cluster, deadline: float) -> None:
    """Until every node serves one agreed plan over exactly these nodes, parts loaded."""
    names = {n.name for n in cluster.nodes}
    while True:
        found: dict[str, NodeReport] = {}
        for node in cluster.nodes:
            node.check_alive()
            st = await client.status(node.address)
            if st is not None:
                found[st.node_id] = st
        if _agreed(found, names):
            cluster.statuses = found
            return
        if time.monotonic() > deadline:
            seen = "; ".join(
                f"{n}: {len(st.plan.members)} members, agreed "
                f"{st.plan.agreed_digest[:8] or '-'}, computed "
                f"{st.plan.computed_digest[:8] or '-'}, parts {list(st.parts)}"
                for n, st in sorted(found.items())
            )
            raise RuntimeError(
                f"nodes {sorted(names)} did not agree in time (logs in "
                f"{cluster.nodes[0].log_path.parent}); last statuses: {seen or 'none answered'}"
            )
        await asyncio.sleep(POLL_S)


async def start_nodes(
    client: Client,
    cluster: Cluster,
    new: Sequence[NodeProc],
    deadline_s: float = START_DEADLINE_S,
) -> float:
    """Add ``new`` to ``cluster``; wait until all serve and agree; seconds it took."""
    started = time.monotonic()
    deadline = started + deadline_s
    cluster.nodes.extend(new)
    for node in new:
        await node.wait_serving(deadline)
    await wait_agreed(client, cluster, deadline)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running(
    client: Client,
    make: Callable[[], list[NodeProc]],
    attempts: int = 2,
    deadline_s: float = START_DEADLINE_S,
) -> AsyncIterator[Cluster]:
    """Nodes (from ``make``) that agreed on a plan and went idle; always stopped on exit.
    A cluster that does not agree in time is stopped and started again, with new nodes."""
    for attempt in range(1, attempts + 1):
        cluster = Cluster(nodes=[])
        nodes = make()
        try:
            seconds = await start_nodes(client, cluster, nodes, deadline_s)
            break
        except RuntimeError as exc:
            stop_nodes(nodes)
            if attempt == attempts:
                raise
            say(f"starting again ({exc})")
    try:
        say(f"{len(nodes)} node(s) agreed in {seconds:.1f} s: {describe_plan(cluster.assignments)}")
        await settle(cluster.nodes)
        yield cluster
    finally:
        stop_nodes(nodes)


async def stage_counters(client: Client, cluster: Cluster) -> dict[int, tuple[int, float]]:
    """Per owned part, across the nodes: (count, total seconds) of its runs so far."""
    out: dict[int, tuple[int, float]] = {}
    for node in cluster.nodes:
        st = None
        for _ in range(3):  # a status call can time out on a busy machine
            st = st or await client.status(node.address)
        if st is None:
            continue
        for s in st.stages:
            out[s.part] = (s.count, s.count * s.mean_s)
    return out


def stage_means(
    before: Mapping[int, tuple[int, float]], after: Mapping[int, tuple[int, float]]
) -> dict[int, float]:
    """Mean seconds per part over the runs between two snapshots."""
    out = {}
    for part, (count, total) in after.items():
        c0, t0 = before.get(part, (0, 0.0))
        if count > c0:
            out[part] = (total - t0) / (count - c0)
    return out
