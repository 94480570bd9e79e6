"""Prometheus metrics of one node, in a registry of its own (several nodes per process in tests).

Names follow Prometheus conventions: base units in the name (``_seconds``), counters end in
``_total``, facts that are strings are ``_info`` metrics whose value is 1. The request path
observes them through ``runtime.instrument``'s wrappers, which a node leaves out when
``node.metrics_listen`` is empty: metrics off costs the request path nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

if TYPE_CHECKING:
    from edgenode.runtime.negotiation import Negotiator
    from edgenode.runtime.parts import PartHost
    from edgenode.runtime.requests import Router

__all__ = [
    "GAUGE_INTERVAL_S",
    "LATENCY_BUCKETS_S",
    "REFUSAL_REASONS",
    "MetricsServer",
    "NodeMetrics",
    "sample_gauges",
]

logger = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0

# Edge latencies: a small part on a fast node (1 ms) up to a request over poor Wi-Fi (30 s).
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# Why a call was refused: gRPC status code names, lower case (label ``reason``).
REFUSAL_REASONS = ("unauthenticated", "permission_denied", "resource_exhausted")


@dataclass(eq=False)
class NodeMetrics:
    """The node's counters, gauges and histograms."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        r = self.registry
        # -- requests started here (the origin) ------------------------------------------
        self.requests = Counter("edgenode_requests", "Requests handled, by outcome", ["outcome"],
                                registry=r)  # fmt: skip
        self.request_duration = Histogram(
            "edgenode_request_duration_seconds",
            "Time from a request entering at this node (its origin) to its answer, by outcome: "
            "ok or the gRPC status code name of its failure",
            ["outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.failed = Counter(
            "edgenode_requests_failed",
            "Requests entering here that failed or were refused, by gRPC status code name",
            ["code"],
            registry=r,
        )
        self.refused = Counter(
            "edgenode_refused_calls",
            "Calls refused before being served, by reason: unauthenticated, permission_denied "
            "(no valid cluster credential), resource_exhausted (busy, or a tensor too large)",
            ["reason"],
            registry=r,
        )
        self.retries = Counter("edgenode_request_retries", "Request attempts sent again",
                               registry=r)  # fmt: skip
        # -- stages and hops ---------------------------------------------------------------
        self.chains = Counter(
            "edgenode_stage_runs",
            "A stage's parts run for one request, by thread: loop (an idle node) or worker",
            ["on"],
            registry=r,
        )
        self.stage_duration = Histogram(
            "edgenode_stage_run_seconds",
            "Time to run this node's stage for one request (its parts back to back), by parts",
            ["parts"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.part_duration = Histogram(
            "edgenode_part_run_seconds",
            "Time to run one owned part",
            ["part"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.hop_duration = Histogram(
            "edgenode_hop_send_seconds",
            "Time to send one hop's tensors to a peer (until its stream took them), by peer",
            ["peer"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("edgenode_queue_depth", "Tensors waiting in the inbox",
                                 registry=r)  # fmt: skip
        # -- membership and plan -----------------------------------------------------------
        self.membership = Gauge("edgenode_membership_size", "Nodes in the cluster", registry=r)
        self.plan_agreed = Gauge("edgenode_plan_agreed", "1 when serving the latest plan",
                                 registry=r)  # fmt: skip
        self.plan_changes = Counter("edgenode_plan_changes", "Agreed plans this node served",
                                    registry=r)  # fmt: skip
        self.plan_convergence = Histogram(
            "edgenode_plan_convergence_seconds",
            "Time from a node joining or leaving (this one starting included) to a new agreed plan",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.plan = Info("edgenode_plan", "The agreed plan served (digest)", registry=r)
        self.plan.info({"digest": ""})  # none yet
        self.loaded_parts = Gauge("edgenode_loaded_parts", "Parts loaded on this node",
                                  registry=r)  # fmt: skip
        # -- what this node is -------------------------------------------------------------
        self.node = Info(
            "edgenode_node",
            "This node: id, model name and identity (manifest digest), backend, wire format",
            registry=r,
        )
        self.threads = Gauge("edgenode_threads", "Threads per part runner", registry=r)
        self.speed = Gauge(
            "edgenode_speed_flops_per_second",
            "Speed score this node advertises to the planner (FLOP/s)",
            registry=r,
        )
        self.start_time = Gauge("edgenode_start_time_seconds",
                                "When this node started, Unix time", registry=r)  # fmt: skip
        self.start_time.set(time.time())
        started = self.clock()
        clock = self.clock
        self.uptime = Gauge("edgenode_uptime_seconds", "Seconds since this node started",
                            registry=r)  # fmt: skip
        self.uptime.set_function(lambda: clock() - started)

    def describe(
        self,
        *,
        node_id: str,
        model: str,
        identity: str,
        backend: str,
        wire_format: str,
        threads: int,
        speed_flops: float,
    ) -> None:
        """Set the facts of this node that do not change while it runs."""
        self.node.info(
            {
                "node_id": node_id,
                "model": model,
                "model_identity": identity,
                "backend": backend,
                "wire_format": wire_format,
            }
        )
        self.threads.set(threads)
        self.speed.set(speed_flops)


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
    agreement, loaded parts), and the counters the router and the part host keep as plain
    numbers; runs until cancelled."""
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
        metrics.loaded_parts.set(len(host.loaded))
        state = negotiator.state
        metrics.membership.set(len(state.members))
        metrics.plan_agreed.set(1 if state.settled else 0)
        await asyncio.sleep(interval_s)
