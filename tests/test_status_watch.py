"""`edgenode status --watch`: rates over each interval and the p95 from the node's own
request-duration histogram, against a real 2-node cluster with metrics on."""

from __future__ import annotations

import asyncio
import json
import math
import os
import pty
import select
import signal
import subprocess
import sys

import numpy as np
import pytest

from edgenode._cli_watch import CLEAR, quantile
from edgenode.runtime.metrics import LATENCY_BUCKETS_S
from tests.nodes import cli


def _cumulative(samples: np.ndarray) -> dict[float, float]:
    bounds = [*LATENCY_BUCKETS_S, math.inf]
    return {b: float(np.sum(samples <= b)) for b in bounds}


def test_the_p95_is_of_what_the_interval_added_and_lies_in_its_bucket() -> None:
    rng = np.random.default_rng(0)
    old = rng.uniform(1.0, 2.0, 500)  # slow requests before the interval
    new = rng.lognormal(np.log(0.02), 0.5, 400)  # ~20 ms during it
    before, after = _cumulative(old), _cumulative(np.concatenate([old, new]))
    got = quantile(0.95, before, after)
    truth = float(np.quantile(new, 0.95))
    bounds = [0.0, *LATENCY_BUCKETS_S]
    k = int(np.searchsorted(bounds, truth))  # the bucket (bounds[k-1], bounds[k]] holds it
    assert bounds[k - 1] <= got <= bounds[k], (got, truth)
    assert quantile(0.95, after, after) != quantile(0.95, after, after)  # nothing new: nan
    beyond = _cumulative(np.array([100.0, 200.0]))  # all past the last finite bound
    assert quantile(0.5, {}, beyond) == LATENCY_BUCKETS_S[-1]


async def _load(address: str, inputs: dict[str, np.ndarray], watcher: subprocess.Popen[str]) -> int:
    """Requests at ``address`` one after the other until the watcher exits."""
    from edgenode.transport import ControlClient

    done = 0
    async with ControlClient() as client:
        while watcher.poll() is None:
            await client.infer(address, inputs, timeout_s=60, failover=False)
            done += 1
    return done


@pytest.mark.tf
@pytest.mark.slow
def test_watch_shows_rates_and_p95_per_interval(metrics_cluster) -> None:
    from tests.model import models

    nodes, _ = metrics_cluster
    a = nodes[0]
    reports = json.loads(cli("status", "--json", "--peer", a.address).stdout)
    [report] = [r for r in reports if r["node"]["node_id"] == "a"]
    assert report["metrics_url"].startswith("http://127.0.0.1:"), report
    watcher = subprocess.Popen(
        [sys.executable, "-m", "edgenode.cli", "status", "--watch", "--interval", "0.5",
         "--count", "4", "--peer", a.address, "--insecure"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    inputs = models.sample_inputs(models.build("fork_join"), batch=1)
    done = asyncio.run(_load(a.address, inputs, watcher))
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    refreshes = [r for r in out.split("\n\n") if r.strip()]
    assert len(refreshes) == 4 and done > 0, out
    assert "\x1b[" not in out  # not a terminal: plain lines, no redrawing

    def row(refresh: str, node: str) -> dict[str, str]:
        lines = refresh.strip().splitlines()
        headers = [h.strip() for h in lines[1].split("  ") if h.strip()]
        cells = next(line.split() for line in lines[3:] if line.split()[0] == node)
        return dict(zip(headers, [cells[0], *cells[-7:]], strict=True))

    first, last = row(refreshes[0], "a"), row(refreshes[-1], "a")
    assert first["requests/s"] == "-" and first["p95 ms"] == "-"  # no interval yet
    assert float(last["requests/s"]) > 0 and float(last["p95 ms"]) > 0, out
    assert float(last["errors/s"]) == 0
    assert row(refreshes[-1], "b")["requests/s"] == "0.0"  # every request entered at a

    # On a terminal each refresh redraws the screen; Ctrl-C ends the watch with exit 0.
    primary, secondary = pty.openpty()
    on_tty = subprocess.Popen(
        [sys.executable, "-m", "edgenode.cli", "status", "--watch", "--interval", "0.2",
         "--peer", a.address, "--insecure"],
        stdout=secondary, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(secondary)
    seen = b""
    try:
        while seen.count(CLEAR.encode()) < 2:
            ready, _, _ = select.select([primary], [], [], 30)
            assert ready, f"no redraw within 30 s: {seen!r}"
            seen += os.read(primary, 65536)
        on_tty.send_signal(signal.SIGINT)
        _, err = on_tty.communicate(timeout=30)
    finally:
        os.close(primary)
        if on_tty.poll() is None:
            on_tty.kill()
    assert on_tty.returncode == 0 and err == "", err
    assert b"Ctrl-C to stop" in seen
