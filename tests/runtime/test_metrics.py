"""The node's metrics: the Prometheus endpoint serves the node's own registry and shuts down
cleanly; names and units pass promtool's checks (and our lint of the same rules, which a
machine without promtool still runs)."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from edgenode.runtime.metrics import LATENCY_BUCKETS_S, MetricsServer, NodeMetrics
from tests.promtext import PROMTOOL, families, lint, promtool


async def test_metrics_endpoint_serves_and_stops() -> None:
    metrics = NodeMetrics()
    metrics.requests.labels(outcome="ok").inc(3)
    metrics.part_duration.labels(part="0").observe(0.002)
    metrics.membership.set(4)
    async with MetricsServer(metrics, "127.0.0.1", 0) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    text = body.decode()
    assert 'edgenode_requests_total{outcome="ok"} 3.0' in text
    assert "edgenode_membership_size 4.0" in text
    assert 'edgenode_part_run_seconds_bucket{le="0.0025",part="0"} 1.0' in text


def test_each_node_has_its_own_registry() -> None:
    a, b = NodeMetrics(), NodeMetrics()
    a.requests.labels(outcome="ok").inc()
    assert b.registry.get_sample_value("edgenode_requests_total", {"outcome": "ok"}) is None


def _observed() -> NodeMetrics:
    """Every metric of a node with a value, as a node that served requests has them."""
    metrics = NodeMetrics()
    metrics.describe(
        node_id="pi-1", model="mobilenet", identity="ab12", backend="litert",
        wire_format="int8", threads=2, speed_flops=4.5e9,
    )  # fmt: skip
    metrics.request_duration.labels(outcome="ok").observe(0.04)
    metrics.request_duration.labels(outcome="DEADLINE_EXCEEDED").observe(30.5)
    metrics.failed.labels(code="DEADLINE_EXCEEDED").inc()
    for reason in ("unauthenticated", "permission_denied", "resource_exhausted"):
        metrics.refused.labels(reason=reason).inc()
    metrics.stage_duration.labels(parts="0-3").observe(0.012)
    metrics.part_duration.labels(part="0").observe(0.0005)
    metrics.hop_duration.labels(peer="pi-2").observe(0.003)
    metrics.plan_convergence.observe(1.7)
    metrics.plan_changes.inc()
    metrics.plan.info({"digest": "0123456789abcdef"})
    metrics.loaded_parts.set(4)
    return metrics


def test_names_and_units_follow_the_conventions() -> None:
    text = generate_latest(_observed().registry).decode()
    assert lint(text) == []
    kinds = families(text)
    for name, kind in kinds.items():
        assert name.startswith("edgenode_")
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    assert {n for n, k in kinds.items() if k == "histogram"} == {
        "edgenode_request_duration_seconds",
        "edgenode_stage_run_seconds",
        "edgenode_part_run_seconds",
        "edgenode_hop_send_seconds",
        "edgenode_plan_convergence_seconds",
    }
    assert LATENCY_BUCKETS_S[0] == 0.001 and LATENCY_BUCKETS_S[-1] == 30.0
    assert 'edgenode_node_info{backend="litert",model="mobilenet",model_identity="ab12",' in text
    assert 'edgenode_plan_info{digest="0123456789abcdef"} 1.0' in text
    assert "edgenode_speed_flops_per_second 4.5e+09" in text
    timeout = 'edgenode_request_duration_seconds_bucket{{le="{}",outcome="DEADLINE_EXCEEDED"}} {}'
    assert timeout.format("30.0", "0.0") in text and timeout.format("+Inf", "1.0") in text


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt: prometheus)")
def test_promtool_check_metrics_passes() -> None:
    promtool("check", "metrics", stdin=generate_latest(_observed().registry).decode())


def test_a_badly_named_metric_is_caught() -> None:
    """The same checks fail on names that break the conventions (our lint says what
    promtool says, word for word but its quotes)."""
    registry = CollectorRegistry()
    Gauge("edgenode_sent_total", "a gauge named like a counter", registry=registry)
    Gauge("edgenode_latency_milliseconds", "not the base unit", registry=registry)
    Gauge("edgenode_inbox_gauge", "the type in the name", registry=registry)
    Gauge("edgenode_hop_ms", "an abbreviated unit", registry=registry)
    Counter("edgenode_resets", "", registry=registry)
    text = generate_latest(registry).decode()
    assert sorted(lint(text)) == [
        "edgenode_hop_ms: metric names should not contain abbreviated units",
        "edgenode_inbox_gauge: metric name should not include type 'gauge'",
        "edgenode_latency_milliseconds: use base unit seconds instead of milliseconds",
        "edgenode_resets_created: no help text",
        "edgenode_resets_total: no help text",
        "edgenode_sent_total: non-counter metrics should not have _total suffix",
    ]
    if PROMTOOL is not None:
        result = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        lines = (result.stdout + result.stderr).splitlines()
        said = [x.strip().replace('"', "").replace(" ", ": ", 1) for x in lines if x.strip()]
        assert result.returncode != 0 and sorted(said) == sorted(lint(text))


def test_uptime_counts_from_the_start() -> None:
    now = [100.0]
    metrics = NodeMetrics(clock=lambda: now[0])
    now[0] = 107.5
    assert metrics.registry.get_sample_value("edgenode_uptime_seconds") == 7.5
