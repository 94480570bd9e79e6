"""A real 2-node cluster's /metrics: requests by outcome, stages, hops by peer, plan and node
facts; what a node serves passes promtool and is what the dashboard test reads."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgenode.errors import EdgenodeError
from edgenode.runtime.metrics import NodeMetrics
from tests.nodes import NodeProcess, wait_until
from tests.promtext import PROMTOOL, lint, promtool, series

pytestmark = [pytest.mark.tf, pytest.mark.slow]

REQUESTS = 5


def _metrics_url(node: NodeProcess) -> str:
    match = wait_until(
        lambda: re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", node.log()),
        30,
        f"node {node.name} to log its metrics address",
    )
    return str(match[1])


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float | None:
    return _samples(text).get((name, frozenset(labels.items())))


async def _requests(address: str, inputs: dict[str, np.ndarray], bad: dict[str, np.ndarray]) -> str:
    from edgenode.transport import ControlClient

    client = ControlClient(protocol=1)
    try:
        for _ in range(REQUESTS):
            await client.infer(address, inputs, timeout_s=60, failover=False)
        try:
            await client.infer(address, bad, timeout_s=60, failover=False)
        except EdgenodeError as exc:
            return str(exc)
        return "answered"
    finally:
        await client.aclose()


def test_a_cluster_serves_what_an_operator_needs(metrics_cluster) -> None:
    from tests.model import models

    nodes, statuses = metrics_cluster
    a = nodes[0]
    urls = {n.name: _metrics_url(n) for n in nodes}
    inputs = models.sample_inputs(models.build("fork_join"), batch=1)
    name, value = next(iter(inputs.items()))
    bad = {**inputs, name: np.zeros((1, *[d + 1 for d in value.shape[1:]]), value.dtype)}
    failure = asyncio.run(_requests(a.address, inputs, bad))
    assert failure != "answered"

    def scraped() -> dict[str, str] | None:
        texts = {n: _scrape(url) for n, url in urls.items()}
        return texts if all("edgenode_loaded_parts 0.0" not in t for t in texts.values()) else None

    texts = wait_until(scraped, 30, "both nodes' gauges sampled with their parts loaded")
    at_a, at_b = texts["a"], texts["b"]
    duration = "edgenode_request_duration_seconds"
    assert _value(at_a, f"{duration}_count", outcome="ok") == REQUESTS
    assert _value(at_a, f"{duration}_count", outcome="INVALID_ARGUMENT") == 1
    assert _value(at_a, "edgenode_requests_failed_total", code="INVALID_ARGUMENT") == 1
    assert not _value(at_b, f"{duration}_count", outcome="ok")  # b was no origin

    # Both nodes ran a stage of every request, and sent every request's hop to the other.
    plan = statuses["a"]["plan"]
    for node, text in (("a", at_a), ("b", at_b)):
        [own] = [x for x in plan["assignments"] if x["node_id"] == node]
        parts = f"{own['start']}-{own['stop'] - 1}"
        assert _value(text, "edgenode_stage_run_seconds_count", parts=parts) == REQUESTS
        assert _value(text, "edgenode_loaded_parts") == own["stop"] - own["start"]
        other = "b" if node == "a" else "a"
        assert (_value(text, "edgenode_hop_send_seconds_count", peer=other) or 0) >= REQUESTS
        assert _value(text, "edgenode_plan_info", digest=plan["agreed_digest"]) == 1.0
        assert (_value(text, "edgenode_plan_changes_total") or 0) >= 1
        assert (_value(text, "edgenode_plan_convergence_seconds_count") or 0) >= 1
        assert _value(text, "edgenode_membership_size") == 2
        assert (_value(text, "edgenode_uptime_seconds") or 0) > 0
        assert f'node_id="{node}"' in text and 'backend="keras"' in text
        assert (_value(text, "edgenode_speed_flops_per_second") or 0) > 0
        assert (_value(text, "edgenode_threads") or 0) >= 1

        # What a node serves is what the dashboard test reads from a registry, and it lints.
        declared = set(series(generate_latest(NodeMetrics().registry).decode()))
        served = set(series(text))
        assert declared <= served and all(n.endswith("_created") for n in served - declared)
        assert lint(text) == []
        if PROMTOOL is not None:
            promtool("check", "metrics", stdin=text)
