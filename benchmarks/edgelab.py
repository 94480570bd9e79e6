"""The edge lab: each profile's real link rate, and clusters of nodes on separate hosts.

    .venv/bin/python benchmarks/edgelab.py [--smoke] [--requests 40] [--model MobileNetV3Large]

Needs root (network namespaces; exits 2 with one line where they cannot be made). Builds a lab
(benchmarks/harness/lab.py): hosts in network namespaces on a private bridge, never connected
to this machine's network, each link shaped with tbf on both ends to a profile. Then:

1. for each profile, one timed TCP transfer between two hosts (about 2 s at the profile's
   rate): the measured rate against the profile's;
2. for `wifi` and `ethernet`, 2 and 4 nodes, one per host (`edgenode run`, mDNS on the lab's
   interfaces), serving a split of the model; a client on a host of its own (same profile)
   waits for the agreed plan, then times requests one at a time (latency) and with several in
   flight (throughput). Node speeds are pinned low so that every node gets a stage: each
   request crosses every hop.

Prints a markdown table and writes benchmarks/results/edgelab.md. ``--smoke``: 2 nodes only,
shorter transfers, a few requests (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from harness import RESULTS, ROOT  # puts the repository root on sys.path
from harness.lab import PROFILES, Host, Lab, LabError, measure_rate, unavailable
from harness.report import machine_lines, met, ms, say, table

CLUSTER_PROFILES = ("wifi", "ethernet")
# Pinned so slow that compute outweighs every hop: the plan gives every node a stage.
PINNED_GFLOPS = 0.000001
AGREE_DEADLINE_S = 180.0
REQUEST_TIMEOUT_S = 60.0
WORKER_TIMEOUT_S = 900.0
RATE_TOLERANCE = 0.15  # a profile's measured rate within 15 % of its nominal one


def _config(path: Path, cluster: str, backend: str) -> Path:
    path.write_text(
        f"[node]\nspeed_gflops = {PINNED_GFLOPS}\n"
        f'[cluster]\nname = "{cluster}"\n'
        f'[model]\nbackend = "{backend}"\nthreads = 1\n'
        f"[limits]\nrequest_deadline_s = {REQUEST_TIMEOUT_S}\n"
        "[security]\ninsecure = true\n"
    )
    return path


# -- the client, run on the client host --------------------------------------------------------


class _Remote:
    """A node as the client host knows it: name and address (its process is not ours)."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.log_path = Path(".")

    def check_alive(self) -> None:
        """The parent watches the processes."""


def _bytes(specs: Any) -> int:
    """Bytes of batch-1 tensors (TensorSpecs)."""
    return sum(int(np.prod([d or 1 for d in t.shape])) * np.dtype(t.dtype).itemsize for t in specs)


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    """Wait for the agreed plan, then time ``requests`` requests one at a time and the same
    number with ``in_flight`` in flight."""
    from harness.cluster import Client, Cluster, wait_agreed
    from harness.models import manifest_of, sample_inputs
    from harness.plans import describe_plan

    client = Client()
    try:
        cluster = Cluster(nodes=[_Remote(n, a) for n, a in spec["nodes"].items()])
        await wait_agreed(client, cluster, time.monotonic() + AGREE_DEADLINE_S)
        origin = cluster.origin
        manifest = manifest_of(Path(spec["model_dir"]))
        inputs = sample_inputs(manifest)
        for _ in range(3):  # warm-up: the first requests load and trace
            answer = await client.infer(origin, inputs)
        latencies = await client.latencies(origin, inputs, spec["requests"])
        semaphore = asyncio.Semaphore(spec["in_flight"])

        async def one() -> None:
            async with semaphore:
                await client.infer(origin, inputs)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(spec["requests"])))
        elapsed = time.perf_counter() - started
        return {
            "latencies_s": latencies,
            "throughput_rps": spec["requests"] / elapsed,
            "plan": describe_plan(cluster.assignments),
            "stages": len(cluster.stages),
            "hop_bytes": [_bytes(manifest.parts[start].inputs) for _, start, _ in cluster.stages]
            + [sum(np.asarray(v).nbytes for v in answer.values())],
        }
    finally:
        await client.aclose()


def client_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    print(json.dumps(asyncio.run(_client(spec))), flush=True)


# -- the lab ------------------------------------------------------------------------------------


def rates(lab: Lab, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, profile in PROFILES.items():
        a, b = lab.add_host(f"rate-a-{name}", profile), lab.add_host(f"rate-b-{name}", profile)
        measured = measure_rate(a, b, seconds)
        say(f"{name}: {measured / 1e6:.1f} Mbit/s (profile {profile.rate_mbit:g})")
        rows.append({"profile": name, "nominal": profile.rate_bits_s, "measured": measured})
    return rows


def cluster_run(
    lab: Lab, client: Host, profile: str, count: int, model_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """``count`` nodes on hosts of ``profile``, timed from ``client``."""
    from tests.lab import LabNode

    work = Path(tempfile.mkdtemp(prefix=f"edgelab-{profile}-{count}-", dir=args.work))
    config = _config(work / "node.toml", f"edgelab-{uuid.uuid4().hex[:8]}", args.backend)
    client.shape(profile)
    hosts = [lab.add_host(f"{profile}-{count}-{i}", profile) for i in range(count)]
    nodes = [
        LabNode(h, f"n{i}", work, "--config", str(config), "--model", str(model_dir))
        for i, h in enumerate(hosts)
    ]
    try:
        for node in nodes:
            node.wait_serving(AGREE_DEADLINE_S)
        spec = {
            "nodes": {n.name: n.address for n in nodes},
            "model_dir": str(model_dir),
            "requests": args.requests,
            "in_flight": 2 * count,
        }
        spec_path = work / "client.json"
        spec_path.write_text(json.dumps(spec))
        out = client.run(
            [sys.executable, str(Path(__file__).resolve()), "--client", str(spec_path)],
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if out.returncode != 0:
            raise LabError(f"client failed (node logs in {work}):\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for node in nodes:
            node.stop()
    result.update(profile=profile, nodes=count)
    say(
        f"{profile}, {count} nodes ({result['plan']}): median "
        f"{statistics.median(result['latencies_s']) * 1e3:.1f} ms, "
        f"{result['throughput_rps']:.1f} requests/s"
    )
    return result


def _rate_row(r: dict[str, Any]) -> list[str]:
    ratio = r["measured"] / r["nominal"]
    return [r["profile"], f"{r['nominal'] / 1e6:g}", f"{r['measured'] / 1e6:.1f}",
            f"{ratio:.2f}", met(abs(ratio - 1) <= RATE_TOLERANCE)]  # fmt: skip


def _run_row(r: dict[str, Any]) -> list[object]:
    times = sorted(r["latencies_s"])
    hops = " → ".join(f"{b / 1e3:.0f}" for b in r["hop_bytes"])
    return [r["profile"], r["nodes"], r["plan"], hops, ms(statistics.median(times), 1),
            ms(times[int(0.9 * (len(times) - 1))], 1), f"{r['throughput_rps']:.2f}"]  # fmt: skip


def report(args: argparse.Namespace, model: str, rate_rows: list[dict[str, Any]],
           runs: list[dict[str, Any]], seconds: float) -> str:  # fmt: skip
    command = "python benchmarks/edgelab.py" + (" --smoke" if args.smoke else "")
    lines = [
        "# The edge lab: shaped links and nodes on separate hosts",
        "",
        *machine_lines(),
        f"- command: `.venv/bin/{command} --requests {args.requests} --model {args.model}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s in all",
        "- every host a network namespace on a private bridge, its link shaped with tbf on "
        "both veth ends (benchmarks/harness/lab.py); nothing shares the machine's network",
        "",
        "## Link rates",
        "",
        f"One TCP transfer between two hosts of a profile, about {args.rate_s:g} s at its rate.",
        "",
        *table(
            "profile|profile Mbit/s|measured Mbit/s|measured / profile|within 15 %",
            [_rate_row(r) for r in rate_rows],
        ),
        "",
        "## Clusters",
        "",
        f"{model} ({args.backend} parts, {args.parts} parts), one node per host, the client on a "
        "host of its own with the same profile; node speeds pinned low so that every node gets "
        f"a stage. Latency: {args.requests} requests one at a time (median, p90); throughput: "
        f"{args.requests} requests with 2 per node in flight. kB per hop: what each request "
        "carries from the client to the first stage, from stage to stage, and back as the "
        "answer (float32); the client's link is shaped too, so its upload of the input counts.",
        "",
        *table(
            "profile|nodes|plan (parts per stage)|kB per hop|median latency ms|p90 ms|"
            "throughput req/s",
            [_run_row(r) for r in runs],
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 nodes, few requests")
    parser.add_argument("--requests", type=int, default=None, help="per cluster (default 40)")
    parser.add_argument("--model", default="MobileNetV3Large")
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--backend", choices=("keras", "litert"), default="litert")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: tmp)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the client, on its lab host
    args = parser.parse_args()
    if args.client:
        client_main(args.client)
        return
    if reason := unavailable():
        print(reason, file=sys.stderr)
        sys.exit(2)
    args.requests = args.requests or (8 if args.smoke else 40)
    args.rate_s = 0.5 if args.smoke else 2.0
    args.work = args.work or Path(tempfile.mkdtemp(prefix="edgenode-edgelab-"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.monotonic()

    from harness.models import Splits

    model_dir = Splits(args.work).get(args.model, args.parts, fmt=args.backend)
    runs = []
    with Lab() as lab:
        rate_rows = rates(lab, args.rate_s)
        client = lab.add_host("client")
        for profile in CLUSTER_PROFILES:
            for count in (2,) if args.smoke else (2, 4):
                runs.append(cluster_run(lab, client, profile, count, model_dir, args))
    text = report(args, args.model, rate_rows, runs, time.monotonic() - started)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "edgelab.md").write_text(text)


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as e:
        sys.exit(f"edgelab: timed out: {e}")
    except KeyboardInterrupt:  # the lab is gone already: its context closed on the way out
        sys.exit(130)
