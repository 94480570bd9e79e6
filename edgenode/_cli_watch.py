"""`edgenode status --watch`: the cluster table refreshed in place, like `top`, with each
node's request rate, error rate and p95 request latency over the last interval.

Rates come from the counters in GetStatus; the p95 from the node's own Prometheus
histogram of request duration (``edgenode_request_duration_seconds``, read from the
``metrics_url`` the node reports), the same numbers a dashboard shows: "-" where a node
serves no metrics. On a terminal the screen is redrawn each interval; elsewhere (a pipe, a
log) each refresh is printed as plain lines after the previous one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgenode._cli_args import positive_float, positive_int
from edgenode._cli_cluster import client_security, find_nodes
from edgenode._cli_common import EXIT_OK
from edgenode._table import format_table

if TYPE_CHECKING:
    from edgenode.transport import NodeReport

__all__ = ["DURATION_METRIC", "Sample", "add_watch_arguments", "quantile", "watch", "watch_table"]

DURATION_METRIC = "edgenode_request_duration_seconds"  # runtime.metrics, at the origin
WATCH_INTERVAL_S = 2.0
SCRAPE_TIMEOUT_S = 2.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def add_watch_arguments(status: argparse.ArgumentParser) -> None:
    """`status --watch`, `--interval`, `--count`."""
    status.add_argument(
        "--watch",
        action="store_true",
        help="refresh the table every --interval seconds, with each node's requests/s, "
        "errors/s and p95 latency over the interval, until Ctrl-C (redrawn in place on a "
        "terminal, plain lines elsewhere)",
    )
    status.add_argument(
        "--interval", type=positive_float, default=WATCH_INTERVAL_S, metavar="SECONDS",
        help="seconds between two refreshes of --watch",
    )  # fmt: skip
    status.add_argument("--count", type=positive_int, metavar="N",
                        help="with --watch: stop after N refreshes")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sample:
    """What one refresh saw of one node."""

    at_s: float  # monotonic
    served: int
    failed: int
    part_runs: int
    buckets: Mapping[float, float] | None  # cumulative request counts by upper bound


def quantile(q: float, before: Mapping[float, float], after: Mapping[float, float]) -> float:
    """The ``q`` quantile of what a cumulative histogram gained between two readings,
    interpolated inside its bucket as Prometheus' histogram_quantile does (nan: nothing
    gained; the highest finite bound when the quantile falls in the +Inf bucket)."""
    bounds = sorted(after)
    gained = [after[b] - before.get(b, 0.0) for b in bounds]
    total = gained[-1] if gained else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, gained, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _buckets(text: str) -> dict[float, float]:
    """Cumulative counts of DURATION_METRIC by upper bound, summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != DURATION_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{DURATION_METRIC}_bucket":
                bound = float(sample.labels["le"])
                found[bound] = found.get(bound, 0.0) + sample.value
    return found


def _scrape(url: str) -> dict[float, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
            return _buckets(reply.read().decode())
    except (OSError, ValueError):  # not serving metrics now, or not Prometheus text
        return None


async def _sample(status: NodeReport) -> Sample:
    url = status.metrics_url
    buckets = await asyncio.to_thread(_scrape, url) if url.startswith("http://") else None
    return Sample(time.monotonic(), status.requests_served, status.requests_failed,
                  status.part_runs, buckets)  # fmt: skip


def _rate(now: int, then: int, seconds: float) -> str:
    return f"{max(now - then, 0) / seconds:.1f}" if seconds > 0 else "-"


def watch_table(
    statuses: Sequence[NodeReport], now: Mapping[str, Sample], before: Mapping[str, Sample]
) -> str:
    """The watch view: one row per node, rates over the interval since ``before``."""
    from edgenode._cli_status import parts_label

    rows = []
    for st in statuses:
        cur, old = now[st.node_id], before.get(st.node_id)
        plan = st.plan.agreed_digest[:8] or "-"
        row: list[object] = [st.node_id, parts_label(st), plan, st.state]
        if old is None:
            row += ["-", "-", "-", "-"]
        else:
            dt = cur.at_s - old.at_s
            p95 = math.nan
            if cur.buckets is not None and old.buckets is not None:
                p95 = quantile(0.95, old.buckets, cur.buckets)
            row += [
                _rate(cur.served, old.served, dt),
                _rate(cur.failed, old.failed, dt),
                "-" if math.isnan(p95) else f"{p95 * 1e3:.1f}",
                _rate(cur.part_runs, old.part_runs, dt),
            ]
        rows.append(row)
    headers = ["node", "parts", "plan", "state", "requests/s", "errors/s", "p95 ms",
               "part runs/s"]  # fmt: skip
    return format_table(headers, rows)


async def _watch(args: argparse.Namespace) -> None:
    from edgenode.client.cluster import ClusterClient

    terminal = sys.stdout.isatty()
    before: dict[str, Sample] = {}
    shown = 0
    async with ClusterClient(security=client_security(args)) as client:
        seeds = await find_nodes(args, client)
        while args.count is None or shown < args.count:
            statuses, errors = await client.crawl(seeds)
            samples = await asyncio.gather(*(_sample(s) for s in statuses))
            now = {s.node_id: sample for s, sample in zip(statuses, samples, strict=True)}
            head = (f"{time.strftime('%H:%M:%S')}  {len(statuses)} node(s), every "
                    f"{args.interval:g} s" + (", Ctrl-C to stop" if terminal else ""))  # fmt: skip
            if errors:
                head += f"; not answering: {'; '.join(errors)}"
            text = f"{head}\n{watch_table(statuses, now, before)}\n"
            sys.stdout.write(CLEAR + text if terminal else text + "\n")
            sys.stdout.flush()
            before, shown = now, shown + 1
            if args.count is None or shown < args.count:
                await asyncio.sleep(args.interval)  # the refresh interval itself


def watch(args: argparse.Namespace) -> int:
    """`status --watch`: until Ctrl-C (exit 0) or --count refreshes."""
    from edgenode.transport import run

    with contextlib.suppress(KeyboardInterrupt):  # how a watch ends
        run(_watch(args))
    return EXIT_OK
