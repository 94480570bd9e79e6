"""deploy/grafana/edgenode.json and deploy/prometheus/: the dashboard parses, every query
names only metrics a node exports (read from a node's registry, not listed here), and
promtool accepts its queries and the scrape configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from edgenode.runtime.metrics import NodeMetrics
from tests.promtext import PROMTOOL, metric_names, promtool, series, substitute

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "edgenode.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
# Labels Prometheus adds to every series it scrapes (and the example's targets file adds).
TARGET_LABELS = frozenset({"job", "instance", "cluster"})


def _exported() -> dict[str, set[str]]:
    """Series a node exports, with their label names: from a fresh node's registry."""
    return series(generate_latest(NodeMetrics().registry).decode())


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, nested rows included."""
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"{panel['title']} {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def _variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable, the selector inside label_values(...)) of the query variables."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, query
            out.append((variable["name"], match[1]))
    return out


def unknown_metrics(dashboard: dict[str, Any], exported: dict[str, set[str]]) -> list[str]:
    """Queries that name a metric no node exports (or that name none at all)."""
    problems = []
    for where, expr in [*_queries(dashboard), *_variable_queries(dashboard)]:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        problems += [f"{where}: {n}" for n in sorted(names - set(exported))]
    return problems


def test_the_dashboard_is_importable_json() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "edgenode" and dashboard["title"] == "edgenode"
    assert "id" not in dashboard  # Grafana assigns one on import
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":  # every query goes to the chosen Prometheus
            assert panel["datasource"]["uid"] == "${datasource}"
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Request rate", "Error ratio", "Request latency p50 / p95 / p99", "Queue depth",
            "Membership size", "Plan changes", "Stage run time p95 by node"} <= titles  # fmt: skip


def test_every_query_names_metrics_a_node_exports() -> None:
    exported = _exported()
    dashboard = _dashboard()
    assert len(_queries(dashboard)) >= 15
    assert unknown_metrics(dashboard, exported) == []
    used = set().union(*(metric_names(e) for _, e in _queries(dashboard)))
    assert {"edgenode_request_duration_seconds_bucket", "edgenode_requests_failed_total",
            "edgenode_stage_run_seconds_bucket", "edgenode_queue_depth",
            "edgenode_membership_size", "edgenode_plan_changes_total"} <= used  # fmt: skip


def test_a_query_of_a_metric_nobody_exports_is_caught() -> None:
    dashboard = _dashboard()
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace(
        "edgenode_request_duration_seconds_count", "edgenode_request_latency_seconds_count"
    )
    assert unknown_metrics(dashboard, _exported()) == [
        "Request rate A: edgenode_request_latency_seconds_count"
    ]


def test_label_matchers_name_labels_the_metric_has() -> None:
    """Where a query filters on a label, the metric carries it (from a node that observed
    one of each), or Prometheus adds it."""
    metrics = NodeMetrics()
    metrics.request_duration.labels(outcome="ok").observe(0.01)
    metrics.failed.labels(code="INTERNAL").inc()
    metrics.refused.labels(reason="unauthenticated").inc()
    metrics.stage_duration.labels(parts="0-1").observe(0.01)
    metrics.hop_duration.labels(peer="b").observe(0.01)
    exported = series(generate_latest(metrics.registry).decode())
    selector = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
    grouping = re.compile(r"\bby \(([^)]*)\)")
    for where, expr in _queries(_dashboard()):
        for name, matchers in selector.findall(expr):
            labels = set(re.findall(r"(\w+)\s*[=!]~?", matchers))
            assert labels <= exported[name] | TARGET_LABELS, (where, name, labels)
        for clause in grouping.findall(expr):
            labels = {g.strip() for g in clause.split(",")} - {"le"}
            has = set().union(*(exported[n] for n in metric_names(expr)))
            assert labels <= has | TARGET_LABELS, (where, labels)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt: prometheus)")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"edgenode:dashboard_query_{i}", "expr": substitute(expr)}
                    for i, (_, expr) in enumerate(_queries(_dashboard()))
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    assert "SUCCESS" in promtool("check", "rules", str(path))


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt: prometheus)")
def test_promtool_accepts_the_scrape_configuration() -> None:
    out = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out
    assert "edgenode-targets.yml" in (PROMETHEUS / "prometheus.yml").read_text()
