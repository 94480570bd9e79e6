"""The Prometheus endpoint serves the node's own registry and shuts down cleanly."""

from __future__ import annotations

import asyncio
import urllib.request

from edgenode.runtime.metrics import MetricsServer, NodeMetrics


async def test_metrics_endpoint_serves_and_stops() -> None:
    metrics = NodeMetrics()
    metrics.requests.labels(outcome="ok").inc(3)
    metrics.stage_latency.labels(part="0").observe(0.002)
    metrics.membership.set(4)
    async with MetricsServer(metrics, "127.0.0.1", 0) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    text = body.decode()
    assert 'edgenode_requests_total{outcome="ok"} 3.0' in text
    assert "edgenode_membership_size 4.0" in text
    assert 'edgenode_stage_latency_seconds_bucket{le="0.0025",part="0"} 1.0' in text


def test_each_node_has_its_own_registry() -> None:
    a, b = NodeMetrics(), NodeMetrics()
    a.requests.labels(outcome="ok").inc()
    assert b.registry.get_sample_value("edgenode_requests_total", {"outcome": "ok"}) is None
