"""Prometheus metrics of one node, in a registry of its own (several nodes per process in tests)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

if TYPE_CHECKING:
    from edgenode.runtime.negotiation import Negotiator
    from edgenode.runtime.parts import PartHost
    from edgenode.runtime.requests import Router

__all__ = ["GAUGE_INTERVAL_S", "MetricsServer", "NodeMetrics", "sample_gauges"]

logger = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0

# Stage latencies of small models on small devices: 0.1 ms .. 10 s.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip


@dataclass(eq=False)
class NodeMetrics:
    """The node's counters, gauges and histograms."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("edgenode_requests", "Requests handled, by outcome", ["outcome"],
                                registry=r)  # fmt: skip
        self.retries = Counter("edgenode_request_retries", "Request attempts sent again",
                               registry=r)  # fmt: skip
        self.chains = Counter(
            "edgenode_stage_runs",
            "A stage's parts run for one request, by thread: loop (an idle node) or worker",
            ["on"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "edgenode_stage_latency_seconds",
            "Time to run one owned part",
            ["part"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("edgenode_queue_depth", "Tensors waiting in the inbox",
                                 registry=r)  # fmt: skip
        self.membership = Gauge("edgenode_membership_size", "Nodes in the cluster", registry=r)
        self.plan_agreed = Gauge("edgenode_plan_agreed", "1 when serving the latest plan",
                                 registry=r)  # fmt: skip


class MetricsServer:
    """Serves /metrics over HTTP on a background thread; an async context manager."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        server = self._server
        return int(server.server_port) if server is not None else self._port

    async def __aenter__(self) -> Self:
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self._metrics.registry
        )
        logger.info("metrics on http://%s:%d/metrics", self._host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            server = self._server
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join)
            self._server = None


async def sample_gauges(
    metrics: NodeMetrics,
    *,
    queued: Callable[[], int],
    negotiator: Negotiator,
    router: Router,
    host: PartHost,
    interval_s: float = GAUGE_INTERVAL_S,
) -> None:
    """Gauges that are read, not counted (inbox depth from ``queued``, membership,
    agreement), and the counters the router and the part host keep as plain numbers;
    runs until cancelled."""
    counted = dict.fromkeys(("ok", "failed", "refused", "retried", "loop", "worker"), 0)
    while True:
        now = {
            "ok": router.served,
            "failed": router.failed,
            "refused": router.refused,
            "retried": router.retried,
            "loop": host.inlined,
            "worker": host.handed_off,
        }
        for outcome in ("ok", "failed", "refused"):
            metrics.requests.labels(outcome=outcome).inc(now[outcome] - counted[outcome])
        metrics.retries.inc(now["retried"] - counted["retried"])
        for where in ("loop", "worker"):
            metrics.chains.labels(on=where).inc(now[where] - counted[where])
        counted = now
        metrics.queue_depth.set(queued())
        state = negotiator.state
        metrics.membership.set(len(state.members))
        metrics.plan_agreed.set(1 if state.settled else 0)
        await asyncio.sleep(interval_s)
