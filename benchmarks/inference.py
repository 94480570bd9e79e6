"""End-to-end inference benchmark: real `edgenode run` processes on 127.0.0.1 (issue 7).

    .venv/bin/python benchmarks/inference.py [--quick] [--sections 1,2,3,4,5,6]

Every node is a separate `edgenode run` process (mDNS on loopback, insecure, unique node
and cluster names); the client (this process) sends requests over gRPC to the node that
owns part 0, which is the request's origin. All nodes of a cluster advertise one pinned
`speed_gflops` (self-benchmarks on a shared machine are noisy). Sections:

1. Prototype table: MobileNetV3Large, one request at a time, the whole model locally (the
   same part runner a node uses, in this process) against 5 nodes with one part each, Keras
   and LiteRT parts, and 5 nodes with one operation per part (Keras); local and cluster runs
   interleaved in rounds. Target: 5-node mean / local mean <= 1.5.
2. Hops: the model cut into 8 parts; nodes join one by one up to 8, then leave one by one;
   single-request latency at each size; added latency per hop = least-squares slope of the
   median latency against stages - 1. Target: <= 250 us.
3. Pipelining: requests/s with several requests in flight, for 1 node on core 0, 2 nodes on
   cores 0 and 1 (a 2-part pipeline; cut balanced on FLOPs, and cut balanced on an
   `edgenode profile` measured on core 0 first), and two independent 1-node clusters on
   cores 0 and 1 (the ceiling); all started under `taskset`, measured in interleaved rounds.
   Target: the pipeline reaches >= 90 % of the ceiling.
4. Backends: Keras against LiteRT per part (in this process and as measured by the nodes)
   and end to end.
5. Planner: predicted against measured compute time per stage; the balanced split against
   an equal-operations split (bottleneck stage).
6. A second model (DenseNet121: its parts have several inputs): section 1's table.

Before each measurement the benchmark waits (polling CPU use, at most 15 s) until every
node process is idle. Writes benchmarks/results/inference.md, inference.json and
inference-*.png. The full run takes about 10-15 minutes on 2 cores (splits included);
--quick (few runs, about 5 minutes) is for trying the script out; --workdir DIR keeps the
splits and node logs for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = ROOT / "benchmarks" / "results"
RATIO_TARGET = 1.5
HOP_TARGET_S = 250e-6
PIPELINE_TARGET = 0.90
START_DEADLINE_S = 180.0  # a node serving, then a cluster agreeing with its parts loaded
POLL_S = 0.1
SETTLE_WINDOW_S = 0.5
SETTLE_DEADLINE_S = 15.0
IDLE_CPU_PCT = 10.0  # an idle node uses ~2 % of a core (gauges, plan checks, mDNS)
REQUEST_TIMEOUT_S = 60.0
ALL_SECTIONS = (1, 2, 3, 4, 5, 6)
_SERVING = re.compile(r"serving on (\S+:\d+)")


# -- settings and small helpers --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How much to measure."""

    runs: int  # single requests per latency configuration (section 1 and 6)
    rounds: int  # local and cluster runs interleaved in this many rounds
    warmup: int  # requests before timing
    hop_runs: int  # single requests per cluster size (section 2)
    load_seconds: float  # measured window per throughput point (section 3)
    load_rounds: int
    concurrency: int  # requests in flight (section 3)
    part_runs: int  # in-process runs per part (sections 4 and 5)

    @staticmethod
    def make(args: argparse.Namespace) -> Settings:
        quick = args.quick
        return Settings(
            runs=args.runs or (20 if quick else 100),
            rounds=2 if quick else 5,
            warmup=5 if quick else 15,
            hop_runs=args.hop_runs or (16 if quick else 100),
            load_seconds=args.load_seconds or (3.0 if quick else 15.0),
            load_rounds=2 if quick else 5,
            concurrency=args.concurrency,
            part_runs=10 if quick else 50,
        )


def say(message: str) -> None:
    """Progress on stderr; tables go to stdout."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, std, median, p10, p90, min, max of seconds (or any unit)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def ms(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:.{digits}f}"


def spread_ms(s: Mapping[str, float]) -> str:
    return f"{ms(s['p10'])}-{ms(s['p90'])}" if s.get("n") else "-"


def two_digits(x: float) -> float:
    """Rounded to 2 significant digits, as the planner quantizes speeds."""
    return float(f"{x:.2g}")


def table(headers: str | Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Markdown table lines (numbers right-aligned); ``headers`` may be 'a|b|c'."""
    if isinstance(headers, str):
        headers = headers.split("|")

    def numeric(i: int) -> bool:
        return all(re.match(r"^[-+]?[\d.]", str(r[i])) for r in rows) if rows else False

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- splits, local runners, offline plans -----------------------------------------------------


class Splits:
    """Model splits in a work directory, made once and reused across sections."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seconds: dict[str, float] = {}
        self._models: dict[str, Any] = {}

    def model(self, name: str) -> Any:
        if name not in self._models:
            from edgenode.model.loading import load_model

            self._models[name] = load_model(name)
        return self._models[name]

    def get(
        self,
        model: str,
        parts: int | None,
        *,
        method: str = "balanced",
        fmt: str = "keras",
        profiled: bool = False,
    ) -> Path:
        """A split of ``model``; ``profiled``: balanced on this machine's profile (one
        TensorFlow thread on core 0, as the pipelining section's nodes run) instead of
        FLOPs."""
        from edgenode.model.profile import load_profile
        from edgenode.model.split import split_model

        slug = re.sub(r"[^a-z0-9]+", "", model.lower())
        shape = "per-op" if method == "per-op" else f"{parts}-{method}"
        out = self.root / f"{slug}-{shape}{'-profiled' if profiled else ''}-{fmt}"
        if (out / "manifest.json").is_file():
            return out
        op_seconds = load_profile(self.profile(model)).op_seconds if profiled else None
        say(f"splitting {model}: {shape}{', on the profile' if profiled else ''}, {fmt}")
        started = time.monotonic()
        split_model(
            self.model(model), out, parts=parts, method=method, fmt=fmt, op_seconds=op_seconds
        )
        self.seconds[out.name] = time.monotonic() - started
        return out

    def profile(self, model: str) -> Path:
        """`edgenode profile` of ``model``, pinned to core 0 with one TensorFlow thread."""
        slug = re.sub(r"[^a-z0-9]+", "", model.lower())
        out = self.root / f"{slug}-profile.json"
        if not out.is_file():
            say(f"profiling {model} (taskset -c 0, --threads 1)")
            started = time.monotonic()
            command = ["taskset", "-c", "0", sys.executable, "-m", "edgenode.cli", "--quiet"]
            command += ["profile", "--model", model, "--threads", "1", "--out", str(out)]
            subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            self.seconds[out.name] = time.monotonic() - started
        return out


def manifest_of(directory: Path) -> Any:
    from edgenode.model.manifest import load_manifest

    return load_manifest(directory)


def sample_inputs(manifest: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random batch-1 model inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in manifest.model.inputs:
        shape = tuple(d if d is not None else 1 for d in t.shape)
        out[t.name] = rng.uniform(-1.0, 1.0, size=shape).astype(t.dtype)
    return out


def timed(fn: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class PartRunners:
    """Every part of a split, loaded in this process with the runner a node uses."""

    def __init__(self, directory: Path) -> None:
        from edgenode.backends import load_runner

        self.directory = directory
        self.manifest = manifest_of(directory)
        # LiteRT: one thread, as a node's default [model] threads; Keras: TensorFlow's default.
        self.runners = [load_runner(p, directory, threads=1) for p in self.manifest.parts]
        self.inputs = sample_inputs(self.manifest)
        self.values = dict(self.inputs)
        for part, runner in zip(self.manifest.parts, self.runners, strict=True):
            self.values.update(runner(self.feed(part.index)))

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return {t.name: self.values[t.name] for t in self.manifest.parts[index].inputs}

    def whole(self) -> Callable[[], Any]:
        """One call of the whole model (a 1-part split)."""
        assert len(self.runners) == 1
        runner, feed = self.runners[0], self.feed(0)
        return lambda: runner(feed)

    def time_parts(self, runs: int, idle_s: float = 0.0) -> list[list[float]]:
        """Seconds per run of each part, parts interleaved within each run; with
        ``idle_s``, this process sleeps that long before each part (a node serving one
        request at a time idles while the other stages run)."""
        feeds = [self.feed(i) for i in range(len(self.runners))]
        for runner, feed in zip(self.runners, feeds, strict=True):
            for _ in range(3):
                runner(feed)
        times: list[list[float]] = [[] for _ in self.runners]
        for _ in range(runs):
            for i, (runner, feed) in enumerate(zip(self.runners, feeds, strict=True)):
                if idle_s:
                    time.sleep(idle_s)  # the idling itself is what is measured
                start = time.perf_counter()
                runner(feed)
                times[i].append(time.perf_counter() - start)
        return times


def offline_plan(manifest: Any, node_ids: Sequence[str], speed_gflops: float) -> Any:
    """The plan the nodes compute: same planner, link model and inputs as the negotiation."""
    from edgenode.planning import Member, plan_cluster
    from edgenode.runtime.negotiation import DEFAULT_LINK
    from edgenode.runtime.selfbench import total_memory_bytes

    members = [
        Member(node_id=n, speed=speed_gflops * 1e9, memory_bytes=total_memory_bytes())
        for n in node_ids
    ]
    return plan_cluster(
        manifest.cost_graph(), members, DEFAULT_LINK, manifest_digest=manifest.digest
    )


def stage_ranges(assignments: Sequence[Any], replica: int = 0) -> list[tuple[str, int, int]]:
    """(node, start, stop) of one replica's stages in pipeline order (plan objects or dicts)."""

    def get(a: Any, key: str) -> Any:
        return a[key] if isinstance(a, Mapping) else getattr(a, key)

    rows = [
        (str(get(a, "node_id")), int(get(a, "start")), int(get(a, "stop")))
        for a in assignments
        if int(get(a, "replica")) == replica
    ]
    return sorted(rows, key=lambda r: r[1])


def describe_plan(assignments: Sequence[Any]) -> str:
    """'[0] [1] [2-3] [4]': the parts of each stage; further pipelines as '+ replica [..]'."""
    replicas = sorted(
        {int(a["replica"] if isinstance(a, Mapping) else a.replica) for a in assignments}
    )
    texts = []
    for r in replicas:
        stages = stage_ranges(assignments, r)
        texts.append(" ".join(f"[{a}]" if b - a == 1 else f"[{a}-{b - 1}]" for _, a, b in stages))
    return " + replica ".join(texts) if texts else "(none)"


def plan_ok(plan: Any, stages: int, one_part_each: bool) -> bool:
    ranges = stage_ranges(plan.assignments)
    return (
        plan.replicas == 1
        and not plan.idle
        and len(ranges) == stages
        and (not one_part_each or all(b - a == 1 for _, a, b in ranges))
    )


def planning_speed(
    manifest: Any, groups: Sequence[Sequence[str]], calibrated: float, *, one_part_each: bool
) -> float:
    """The highest speed (calibrated, halved step by step) at which the planner uses every
    node of each group as a stage of one pipeline (no replica, no idle node)."""
    speed = calibrated
    for _ in range(16):
        if all(plan_ok(offline_plan(manifest, g, speed), len(g), one_part_each) for g in groups):
            return speed
        speed = two_digits(speed / 2)
    say(f"warning: no speed makes the planner use all nodes; using {speed} GFLOP/s")
    return speed


# -- node processes ----------------------------------------------------------------------------


class NodeProc:
    """One `edgenode run` process, optionally pinned to a core with taskset."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        config: Path,
        model_dir: Path,
        *,
        core: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        command = ["taskset", "-c", str(core)] if core is not None else []
        command += [
            sys.executable, "-m", "edgenode.cli", "run", "--name", name, "--config", str(config),
            "--listen", "127.0.0.1:0", "--model", str(model_dir), "--interfaces", "127.0.0.1",
            "--state-dir", str(workdir / name), "--insecure",
        ]  # fmt: skip
        if threads is not None:
            command += ["--threads", str(threads)]
        self.command = command
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        self.address = ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"node {self.name} exited:\n{self.log_tail()}")

    async def wait_serving(self, deadline: float) -> str:
        while not self.address:
            self.check_alive()
            match = _SERVING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.address = match.group(1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not serve in time:\n{self.log_tail()}")
            await asyncio.sleep(POLL_S)
        return self.address


def stop_nodes(nodes: Sequence[NodeProc], timeout_s: float = 30.0) -> None:
    """SIGTERM every node, then SIGKILL those still running after ``timeout_s``."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    end = time.monotonic() + timeout_s
    for node in nodes:
        try:
            node.process.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def settle(nodes: Sequence[NodeProc]) -> float:
    """Poll the nodes' CPU use until each is idle (a node that just joined or loaded parts
    keeps a core busy for a while); the seconds it took, at most SETTLE_DEADLINE_S."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_DEADLINE_S:
        before = [cpu_seconds(n.process.pid) for n in nodes]
        await asyncio.sleep(SETTLE_WINDOW_S)  # a measuring interval, not a wait for an event
        after = [cpu_seconds(n.process.pid) for n in nodes]
        if all(
            100 * (b - a) / SETTLE_WINDOW_S < IDLE_CPU_PCT
            for a, b in zip(before, after, strict=True)
        ):
            break
    return time.monotonic() - started


def write_config(path: Path, cluster: str, speed_gflops: float, backend: str) -> Path:
    # Threads as the local baselines run: TensorFlow's default (one per core) for Keras
    # parts, one interpreter thread for LiteRT parts (`--threads` overrides).
    threads = (os.cpu_count() or 1) if backend == "keras" else 1
    path.write_text(
        f"[node]\nspeed_gflops = {speed_gflops}\n"
        f'[cluster]\nname = "{cluster}"\n'
        f'[model]\nbackend = "{backend}"\nthreads = {threads}\n'
        "[limits]\nrequest_deadline_s = 60.0\n"
        "[security]\ninsecure = true\n"
    )
    return path


class Client:
    """The benchmark's gRPC client: status and inference calls to the nodes."""

    def __init__(self) -> None:
        from edgenode.transport._control import ControlClient

        self._client = ControlClient(protocol=1)

    async def status(self, address: str) -> dict[str, Any] | None:
        from edgenode.errors import EdgenodeError
        from edgenode.transport._control import status_to_dict

        try:
            return dict(status_to_dict(await self._client.status(address)))
        except EdgenodeError:  # starting, stopping or busy
            return None

    async def infer(self, address: str, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return await self._client.infer(address, inputs, timeout_s=REQUEST_TIMEOUT_S)

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
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def assignments(self) -> list[dict[str, Any]]:
        first = next(iter(self.statuses.values()))
        return list(first["plan"]["assignments"])

    @property
    def stages(self) -> list[tuple[str, int, int]]:
        return stage_ranges(self.assignments)

    @property
    def replicas(self) -> int:
        return 1 + max(int(a["replica"]) for a in self.assignments)

    def address(self, node_id: str) -> str:
        return next(n.address for n in self.nodes if n.name == node_id)

    @property
    def origin(self) -> str:
        """Address of the node running part 0 in the first pipeline."""
        return self.address(self.stages[0][0])


def _agreed(statuses: Mapping[str, dict[str, Any]], names: set[str]) -> bool:
    if set(statuses) != names:
        return False
    digests = set()
    for st in statuses.values():
        plan = st["plan"]
        if set(plan["members"]) != names or not plan["agreed_digest"]:
            return False
        if plan["agreed_digest"] != plan["computed_digest"]:
            return False
        digests.add(plan["agreed_digest"])
    if len(digests) != 1:
        return False
    for node_id, st in statuses.items():
        own = [
            list(range(int(a["start"]), int(a["stop"])))
            for a in st["plan"]["assignments"]
            if a["node_id"] == node_id
        ]
        if sorted(int(p) for p in st["parts"]) != (own[0] if own else []):
            return False
    return True


async def wait_agreed(client: Client, cluster: Cluster, deadline: float) -> None:
    """Until every node serves one agreed plan over exactly these nodes, parts loaded."""
    names = {n.name for n in cluster.nodes}
    while True:
        found: dict[str, dict[str, Any]] = {}
        for node in cluster.nodes:
            node.check_alive()
            st = await client.status(node.address)
            if st is not None:
                found[st["node"]["node_id"]] = st
        if _agreed(found, names):
            cluster.statuses = found
            return
        if time.monotonic() > deadline:
            seen = "; ".join(
                f"{n}: {len(st['plan']['members'])} members, agreed "
                f"{st['plan']['agreed_digest'][:8] or '-'}, computed "
                f"{st['plan']['computed_digest'][:8] or '-'}, parts {st['parts']}"
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
        for s in st["stages"]:
            count = int(s["count"])
            out[int(s["part"])] = (count, count * float(s["mean_s"]))
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


# -- the benchmark context ---------------------------------------------------------------------


@dataclass
class Context:
    """What sections share: settings, splits, local runners, results of earlier sections."""

    settings: Settings
    args: argparse.Namespace
    work: Path
    run_id: str
    splits: Splits
    client: Client
    runners: dict[Path, PartRunners] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # one line per target: met or not
    counter: int = 0

    def runner(self, directory: Path) -> PartRunners:
        if directory not in self.runners:
            self.runners[directory] = PartRunners(directory)
        return self.runners[directory]

    def names(self, label: str, count: int) -> list[str]:
        """Node names unique on this machine's mDNS (other clusters may be running)."""
        self.counter += 1
        names = [f"{self.run_id}-{label}{self.counter}-{i}" for i in range(count)]
        assert all(re.fullmatch(r"[a-z0-9-]{1,48}", n) for n in names), names
        return names

    def config(self, label: str, speed: float, backend: str = "keras") -> Path:
        self.counter += 1
        cluster = f"{self.run_id}-{label}{self.counter}"
        return write_config(self.work / f"{cluster}.toml", cluster, speed, backend)

    def speed(self, model: str) -> float:
        """GFLOP/s of the whole model run locally with Keras (the planner's unit)."""
        if model not in self.calibrated:
            whole = self.runner(self.splits.get(model, 1))
            times = timed(whole.whole(), max(20, self.settings.part_runs), warmup=5)
            flops = whole.manifest.model.flops
            self.calibrated[model] = two_digits(flops / statistics.median(times) / 1e9)
            self.calibration[model] = {
                "whole_model_median_s": statistics.median(times),
                "flops": flops,
                "speed_gflops": self.calibrated[model],
            }
            say(f"{model}: {self.calibrated[model]} GFLOP/s measured on the whole model")
        return self.calibrated[model]


@dataclass
class Section:
    """One section's markdown lines and raw data."""

    number: int
    title: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


# -- 1 and 6: local against 5 nodes ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySetup:
    label: str
    tag: str  # short, for node names
    directory: Path
    backend: str  # keras | litert
    local: Path  # 1-part split for the local baseline
    one_part_each: bool = True


async def compare_latency(
    ctx: Context, model: str, setups: Sequence[LatencySetup], nodes: int
) -> dict[str, Any]:
    """Per setup: local and cluster latencies interleaved in rounds, plan, stage times."""
    s = ctx.settings
    calibrated = ctx.speed(model)
    per_round = max(1, s.runs // s.rounds)
    results: dict[str, Any] = {"model": model, "calibrated_gflops": calibrated, "setups": []}
    for setup in setups:
        manifest = manifest_of(setup.directory)
        names = ctx.names(setup.tag, nodes)
        own = offline_plan(manifest, names, calibrated)
        speed = planning_speed(manifest, [names], calibrated, one_part_each=setup.one_part_each)
        local = ctx.runner(setup.local).whole()
        inputs = sample_inputs(manifest)
        say(f"{model} {setup.label}: {len(manifest.parts)} parts, pinned {speed} GFLOP/s")

        def make(setup: LatencySetup = setup, speed: float = speed) -> list[NodeProc]:
            config = ctx.config("lat", speed, setup.backend)
            return [
                NodeProc(n, ctx.work, config, setup.directory) for n in ctx.names(setup.tag, nodes)
            ]

        async with running(ctx.client, make) as cluster:
            await ctx.client.latencies(cluster.origin, inputs, s.warmup)
            before = await stage_counters(ctx.client, cluster)
            local_times: list[float] = []
            cluster_times: list[float] = []
            ratios = []
            for _ in range(s.rounds):
                lt = timed(local, per_round, warmup=2)
                ct = await ctx.client.latencies(cluster.origin, inputs, per_round)
                local_times += lt
                cluster_times += ct
                ratios.append(statistics.fmean(ct) / statistics.fmean(lt))
            after = await stage_counters(ctx.client, cluster)
            stages = cluster.stages
            entry = {
                "label": setup.label,
                "backend": setup.backend,
                "directory": setup.directory.name,
                "parts": len(manifest.parts),
                "one_part_each": setup.one_part_each,
                "pinned_gflops": speed,
                "plan": describe_plan(cluster.assignments),
                "plan_matches_offline": [r[1:] for r in cluster.stages]
                == [r[1:] for r in stage_ranges(offline_plan(manifest, names, speed).assignments)],
                "own_plan_at_calibrated_speed": describe_plan(own.assignments),
                "replicas": cluster.replicas,
                "stages": [[a, b] for _, a, b in stages],
                "local_s": local_times,
                "cluster_s": cluster_times,
                "round_ratios": ratios,
                "part_means_s": {str(k): v for k, v in sorted(stage_means(before, after).items())},
            }
        results["setups"].append(entry)
    return results


def latency_table(results: Mapping[str, Any]) -> list[str]:
    rows: list[list[object]] = []
    for e in results["setups"]:
        local, clus = summary(e["local_s"]), summary(e["cluster_s"])
        ratio = clus["mean"] / local["mean"]
        rr = e["round_ratios"]
        target = met(ratio <= RATIO_TARGET) if e["one_part_each"] else "-"
        rows.append([
            f"local whole model, {e['backend']} (baseline of the next row)", 1, "-", local["n"],
            ms(local["mean"]), ms(local["std"]), ms(local["median"]), spread_ms(local), "1.00",
            "-", "-",
        ])  # fmt: skip
        rows.append([
            e["label"], e["parts"], len(e["stages"]), clus["n"], ms(clus["mean"]),
            ms(clus["std"]), ms(clus["median"]), spread_ms(clus), f"{ratio:.2f}",
            f"{statistics.median(rr):.2f} ({min(rr):.2f}-{max(rr):.2f})", target,
        ])  # fmt: skip
    return table(
        "setup|parts|stages|runs|mean ms|std ms|median ms|p10-p90 ms"
        "|ratio (mean / local mean)|ratio per round: median (min-max)"
        "|target <= 1.5",
        rows,
    )


def ratio_targets(results: Mapping[str, Any]) -> list[str]:
    """'model, setup: ratio (target <= 1.5): met' for the one-part-per-node setups."""
    out = []
    for e in results["setups"]:
        if e["one_part_each"]:
            ratio = statistics.fmean(e["cluster_s"]) / statistics.fmean(e["local_s"])
            out.append(
                f"{results['model']}, {e['label']}: {ratio:.2f}x the local whole model "
                f"(target <= {RATIO_TARGET}): {met(ratio <= RATIO_TARGET)}"
            )
    return out


def plan_notes(results: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- speed: {results['calibrated_gflops']} GFLOP/s = model FLOPs / local Keras median "
        "time. The planner, fed this speed and its link model (125 MB/s, 0.5 ms per hop: "
        "`edgenode.runtime.negotiation.DEFAULT_LINK`), would plan:"
    ]
    for e in results["setups"]:
        lines.append(
            f"  - {e['label']}: `{e['own_plan_at_calibrated_speed']}`; measured with pinned "
            f"`speed_gflops = {e['pinned_gflops']}` (planning only), agreed plan `{e['plan']}`"
            + ("" if e["plan_matches_offline"] else " (differs from the offline prediction)")
        )
    return lines


async def section_prototype(ctx: Context, sec: Section) -> None:
    model = ctx.args.model
    sp = ctx.splits
    setups = [
        LatencySetup(
            label="5 nodes, Keras parts",
            tag="keras",
            directory=sp.get(model, 5),
            backend="keras",
            local=sp.get(model, 1),
        ),
        LatencySetup(
            label="5 nodes, LiteRT parts",
            tag="lite",
            directory=sp.get(model, 5, fmt="litert"),
            backend="litert",
            local=sp.get(model, 1, fmt="litert"),
        ),
        LatencySetup(
            label="per-op: 5 nodes, one operation per part, Keras",
            tag="perop",
            directory=sp.get(model, None, method="per-op"),
            backend="keras",
            local=sp.get(model, 1),
            one_part_each=False,
        ),
    ]
    results = await compare_latency(ctx, model, setups, nodes=5)
    ctx.targets += ratio_targets(results)
    ctx.shared["prototype"] = results
    sec.data = results
    s = ctx.settings
    idle_rows = [
        idle_breakdown(ctx, setup, results["setups"][i]) for i, setup in enumerate(setups[:2])
    ]
    # Where the per-op cost goes: the same parts back to back in this process, no nodes.
    say("per-op parts in process: loading every part")
    per_op = ctx.runner(setups[2].directory)
    runs = max(5, s.runs // 5)
    chain = [sum(run) for run in zip(*per_op.time_parts(runs), strict=True)]
    whole = timed(ctx.runner(setups[2].local).whole(), runs)
    node = results["setups"][2]
    on_nodes = sum(node["part_means_s"].values())
    results["per_op_in_process"] = {"chain_s": chain, "whole_s": whole}
    w, c, e = summary(whole), summary(chain), summary(node["cluster_s"])
    breakdown = [
        ["whole model, in process", 1, ms(w["median"]), spread_ms(w), "1.00"],
        ["parts back to back, in process", len(per_op.runners), ms(c["median"]), spread_ms(c),
         f"{c['median'] / w['median']:.2f}"],
        ["sum of the nodes' mean part times (section's runs)", len(per_op.runners),
         ms(on_nodes), "-", f"{on_nodes / w['median']:.2f}"],
        ["5 nodes end to end (table above)", len(per_op.runners), ms(e["median"]), spread_ms(e),
         f"{e['median'] / w['median']:.2f}"],
    ]  # fmt: skip
    sec.lines += [
        f"{model}, one request at a time, {s.runs} runs per setup in {s.rounds} rounds "
        "(local runs, then cluster runs, each round); local = the whole model (a 1-part split) "
        "run in the benchmark process by the part runner a node uses; 5 nodes = 5 `edgenode "
        "run` processes, the request sent to the node running part 0.",
        "",
        *latency_table(results),
        "",
        *plan_notes(results),
        "- the prototype's figures: 1.146 (5 nodes, against a baseline 70x slower than ours), "
        "2.59 (per layer); throwaway prototypes on this machine: grpc.aio 1.9x (both backends), "
        "blocking raw TCP 1.65x (Keras) and 1.40x (LiteRT).",
        "",
        f"Where the 5-node time goes ({max(5, s.runs // 5)} runs each in process; ratio of "
        "medians to the whole model in process). A node serving one request at a time idles "
        "while the other stages run; the same parts run in this process after sleeping that "
        "long (the 5-node median latency) before each part show what idling alone costs on "
        "this machine, with no node and no network involved:",
        "",
        *table(
            "setup|what|median ms|ratio",
            [row for rows in idle_rows for row in rows],
        ),
        "",
        f"Where the per-op time goes (Keras, {runs} runs each in process; ratio of medians to "
        "the whole model in process):",
        "",
        *table("what|parts|median ms|p10-p90 ms|ratio", breakdown),
        "",
        "![latency](inference-latency.png)",
    ]


def idle_breakdown(ctx: Context, setup: LatencySetup, entry: dict[str, Any]) -> list[list[str]]:
    """Rows splitting a 5-node latency into: cutting into parts, idling between parts,
    and the rest (hops, client); records the in-process times in ``entry``."""
    runs = max(5, ctx.settings.runs // 5)
    runner = ctx.runner(setup.directory)
    whole = statistics.median(entry["local_s"])
    cluster = statistics.median(entry["cluster_s"])
    say(f"{setup.label}: parts in process, back to back and after {ms(cluster, 0)} ms idle")
    busy = [statistics.median(t) for t in runner.time_parts(runs)]
    idle = [statistics.median(t) for t in runner.time_parts(runs, idle_s=cluster)]
    on_nodes = sum(entry["part_means_s"].values())
    entry["in_process_parts_s"] = {"back_to_back": busy, "after_idle": idle, "idle_s": cluster}
    n = len(busy)
    rows = [
        ("whole model, in process", whole),
        (f"{n} parts back to back, in process (sum of medians)", sum(busy)),
        (f"{n} parts, each after {ms(cluster, 0)} ms idle, in process", sum(idle)),
        (f"{n} parts on the nodes (sum of their means)", on_nodes),
        ("5 nodes end to end (table above)", cluster),
    ]
    return [[setup.backend, what, ms(v), f"{v / whole:.2f}"] for what, v in rows]


async def section_second_model(ctx: Context, sec: Section) -> None:
    model = ctx.args.second_model
    sp = ctx.splits
    setups = [
        LatencySetup(
            label="5 nodes, Keras parts",
            tag="keras",
            directory=sp.get(model, 5),
            backend="keras",
            local=sp.get(model, 1),
        ),
        LatencySetup(
            label="5 nodes, LiteRT parts",
            tag="lite",
            directory=sp.get(model, 5, fmt="litert"),
            backend="litert",
            local=sp.get(model, 1, fmt="litert"),
        ),
    ]
    results = await compare_latency(ctx, model, setups, nodes=5)
    ctx.targets += ratio_targets(results)
    ctx.shared["second"] = results
    sec.data = results
    manifest = manifest_of(setups[0].directory)
    keras, lite = results["setups"]
    keras_local = statistics.median(keras["local_s"])
    lite_local = statistics.median(lite["local_s"])
    rows = []
    for p in manifest.parts:
        share = p.flops / manifest.model.flops
        shapes = ", ".join("x".join(str(d) for d in t.shape[1:]) for t in p.inputs)
        rows.append([
            p.index, f"{p.start}-{p.stop - 1}", len(p.inputs), shapes, f"{p.flops / 1e6:.0f}",
            ms(share * keras_local), ms(keras["part_means_s"].get(str(p.index))),
            ms(share * lite_local), ms(lite["part_means_s"].get(str(p.index))),
        ])  # fmt: skip
    multi = sum(len(p.inputs) > 1 for p in manifest.parts)
    sec.lines += [
        f"{model}, same method as section 1 ({ctx.settings.runs} runs per setup). {multi} of "
        f"its {len(manifest.parts)} parts have several inputs (a cut inside a dense block: the "
        "block's running concatenation and the newest layer's output both cross it).",
        "",
        *latency_table(results),
        "",
        *plan_notes(results),
        "",
        "Parts, and compute time per stage (one part per node): predicted = the part's share of "
        "the FLOPs times the local whole-model time of that backend; measured = the node's own "
        "mean run time of the part during the timed requests (`GetStatus` stages).",
        "",
        *table(
            "part|op range|inputs|input shapes|MFLOP|Keras predicted ms"
            "|Keras measured ms|LiteRT predicted ms|LiteRT measured ms",
            rows,
        ),
    ]


# -- 2: hops -----------------------------------------------------------------------------------


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least squares y = a + b x; the slope's standard error."""
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(xa) < 2 or np.ptp(xa) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "slope_se": float("nan")}
    b, a = np.polyfit(xa, ya, 1)
    resid = ya - (a + b * xa)
    dof = len(xa) - 2
    se = (
        math.sqrt(float(resid @ resid) / dof / float(((xa - xa.mean()) ** 2).sum()))
        if dof > 0
        else float("nan")
    )
    return {"slope": float(b), "intercept": float(a), "slope_se": se}


async def section_hops(ctx: Context, sec: Section) -> None:
    model, s, backend = ctx.args.model, ctx.settings, ctx.args.hop_backend
    directory = ctx.splits.get(model, 8, fmt=backend)
    manifest = manifest_of(directory)
    names = ctx.names("hop", 8)
    calibrated = ctx.speed(model)
    sizes = range(1, 9)
    speed = planning_speed(manifest, [names[:k] for k in sizes], calibrated, one_part_each=False)
    own = {
        k: describe_plan(offline_plan(manifest, names[:k], calibrated).assignments) for k in sizes
    }
    inputs = sample_inputs(manifest)
    points: dict[int, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    deadline_s = 45.0 if backend == "litert" else START_DEADLINE_S

    async def measure(k: int, runs: int, how: str) -> None:
        def make() -> list[NodeProc]:
            config = ctx.config("hop", speed, backend)
            return [NodeProc(n, ctx.work, config, directory) for n in ctx.names("hop", k)]

        try:
            async with running(ctx.client, make, attempts=3, deadline_s=deadline_s) as cluster:
                await ctx.client.latencies(cluster.origin, inputs, s.warmup)
                times = await ctx.client.latencies(cluster.origin, inputs, runs)
                point = points.setdefault(k, {
                    "nodes": k, "stages": len(cluster.stages), "replicas": cluster.replicas,
                    "plan": describe_plan(cluster.assignments), "latency_s": [], "passes": {},
                })  # fmt: skip
        except RuntimeError as exc:  # one size that never agrees must not lose the others
            say(f"hops: {k} nodes did not agree: {exc}")
            failed[f"{k} nodes, {how} pass"] = str(exc).split(" (logs")[0]
            return
        point["latency_s"] += times
        point["passes"][how] = times

    for k in sizes:  # up, then down: drift over the run shows as a gap between the passes
        await measure(k, s.hop_runs if k == sizes[-1] else s.hop_runs // 2, "up")
    for k in reversed(sizes[:-1]):
        await measure(k, s.hop_runs // 2, "down")
    # For reference: the same parts in this process, no node and no network.
    chain = [sum(run) for run in zip(*ctx.runner(directory).time_parts(s.part_runs), strict=True)]
    whole = timed(ctx.runner(ctx.splits.get(model, 1, fmt=backend)).whole(), s.part_runs)
    usable = [p for _, p in sorted(points.items()) if p["replicas"] == 1]
    x = [p["stages"] - 1 for p in usable]
    y = [statistics.median(p["latency_s"]) for p in usable]
    fit = fit_line(x, y)
    tail = [(a, b) for a, b in zip(x, y, strict=True) if a >= 1]
    fit2 = fit_line([a for a, _ in tail], [b for _, b in tail])
    sec.data = {
        "pinned_gflops": speed,
        "calibrated_gflops": calibrated,
        "points": list(points.values()),
        "fit": fit,
        "fit_from_2_stages": fit2,
        "did_not_agree": failed,
        "in_process": {"chain_s": chain, "whole_s": whole},
    }
    rows = []
    for k, p in sorted(points.items()):
        st = summary(p["latency_s"])
        by_pass = " / ".join(
            ms(statistics.median(p["passes"][h])) if h in p["passes"] else "-"
            for h in ("up", "down")
            if k < sizes[-1] or h == "up"
        )
        row = [k, p["stages"], p["plan"], own[k], st["n"], ms(st["median"]), spread_ms(st)]
        rows.append([*row, ms(st["mean"]), ms(st["std"]), by_pass])
    slope, se = fit["slope"], fit["slope_se"]
    ctx.targets.append(
        f"added latency per hop: {slope * 1e6:.0f} +- {se * 1e6:.0f} us "
        f"(target <= {HOP_TARGET_S * 1e6:.0f} us): {met(slope <= HOP_TARGET_S)}"
    )
    sec.lines += [
        f"{model} cut into 8 balanced parts ({backend}; `--hop-backend keras` for Keras parts, "
        "see the notes). A fresh cluster for each size, sizes 1 to 8 then 7 to 1; at each "
        f"size, {s.warmup} warm-up requests, then {s.hop_runs // 2} single requests sent to the "
        f"node running part 0 ({s.hop_runs} per size: both passes, or all at 8). All nodes "
        "pinned to "
        f"`speed_gflops = {speed}`, at which the planner gives every node a stage; the column "
        f"'plan at calibrated speed' is its plan at the calibrated {calibrated} GFLOP/s.",
        "",
        *table(
            "nodes|stages|parts per stage|plan at calibrated speed|runs|median ms|p10-p90 ms"
            "|mean ms|std ms|median ms: up / down pass",
            rows,
        ),
        "",
        f"- added latency per hop (least-squares slope of the median latency against stages - 1, "
        f"{len(usable)} sizes): **{slope * 1e6:.0f} us** +- {se * 1e6:.0f} us (standard error); "
        f"target <= {HOP_TARGET_S * 1e6:.0f} us: {met(slope <= HOP_TARGET_S)}",
        f"- fit from 2 stages on (every point then also has the hop of the output back to the "
        f"origin): {fit2['slope'] * 1e6:.0f} us +- {fit2['slope_se'] * 1e6:.0f} us per hop; "
        f"intercept of the first fit {ms(fit['intercept'])} ms (1 stage: "
        f"{ms(y[0]) if y else '-'} ms)",
        "- a hop here is: the stage's outputs encoded and sent over gRPC on loopback, received "
        "and joined by the next node, which then runs its stage (on its event loop when it "
        "idled before, see edgenode/runtime/parts.py); the total work (8 parts) is the same "
        "at every size.",
        f"- for reference, in this process ({s.part_runs} runs, median): the whole model "
        f"{ms(statistics.median(whole))} ms, the 8 parts back to back "
        f"{ms(statistics.median(chain))} ms; the 1-node cluster adds the client's request and "
        "reply, and this machine's slowdown of parts run after idling (section 1).",
        *(f"- {k}: no agreement in 3 attempts ({why})" for k, why in failed.items()),
        "",
        "![hops](inference-hops.png)",
    ]


# -- 3: pipelining -----------------------------------------------------------------------------


async def offered_load(
    client: Client,
    targets: Sequence[str],
    pids: Sequence[int],
    inputs: Mapping[str, np.ndarray],
    concurrency: int,
    seconds: float,
    warmup_s: float,
) -> dict[str, Any]:
    """``concurrency`` clients in a loop (worker i sends to targets[i % len]); completions
    inside the window after ``warmup_s`` count; CPU use of ``pids`` and of this process
    over the window, in % of one core."""
    from edgenode.errors import EdgenodeError

    begin = time.perf_counter()
    window = (begin + warmup_s, begin + warmup_s + seconds)
    done: list[float] = []
    errors = [0]
    cpu: dict[str, Any] = {}

    async def worker(i: int) -> None:
        target = targets[i % len(targets)]
        while time.perf_counter() < window[1]:
            start = time.perf_counter()
            try:
                await client.infer(target, inputs)
            except EdgenodeError:
                errors[0] += 1
                continue
            end = time.perf_counter()
            if window[0] <= end <= window[1]:
                done.append(end - start)

    async def sample() -> None:
        await asyncio.sleep(window[0] - time.perf_counter())  # a clock, not an event
        nodes, me = [cpu_seconds(p) for p in pids], time.process_time()
        await asyncio.sleep(window[1] - time.perf_counter())
        cpu["nodes_pct"] = [
            100 * (cpu_seconds(p) - c) / seconds for p, c in zip(pids, nodes, strict=True)
        ]
        cpu["client_pct"] = 100 * (time.process_time() - me) / seconds

    await asyncio.gather(sample(), *(worker(i) for i in range(concurrency)))
    return {"rps": len(done) / seconds, "latency_s": summary(done), "errors": errors[0], **cpu}


async def section_pipelining(ctx: Context, sec: Section) -> None:
    if shutil.which("taskset") is None:
        raise RuntimeError("taskset (util-linux) is needed to pin nodes to cores")
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("pipelining needs at least 2 cores")
    model, s = ctx.args.model, ctx.settings
    whole_dir, two_dir = ctx.splits.get(model, 1), ctx.splits.get(model, 2)
    profiled_dir = ctx.splits.get(model, 2, profiled=True)
    calibrated = ctx.speed(model)
    groups = {  # cluster: its nodes' split and cores
        "one": (whole_dir, [0]),
        "two": (two_dir, [0, 1]),
        "prof": (profiled_dir, [0, 1]),
        "c": (whole_dir, [0]),
        "d": (whole_dir, [1]),
    }
    names = {g: ctx.names(g, len(cores)) for g, (_, cores) in groups.items()}
    speed = planning_speed(manifest_of(two_dir), [names["two"]], calibrated, one_part_each=True)
    inputs = sample_inputs(manifest_of(whole_dir))
    labels = [
        "1 node, core 0",
        "2-node pipeline, FLOP-balanced cut, cores 0 and 1",
        "2-node pipeline, cut on a profile, cores 0 and 1",
        "ceiling: 2 independent whole-model nodes, cores 0 and 1",
    ]
    setups = dict(zip(labels, [["one"], ["two"], ["prof"], ["c", "d"]], strict=True))
    procs: dict[str, list[NodeProc]] = {}
    clusters: dict[str, Cluster] = {}
    try:
        for g, (directory, cores) in groups.items():  # all processes start at once
            config = ctx.config(f"pipe{g}", speed)
            procs[g] = [
                NodeProc(n, ctx.work, config, directory, core=core, threads=1)
                for n, core in zip(names[g], cores, strict=True)
            ]
        for g, group in procs.items():
            clusters[g] = Cluster(nodes=[])
            await start_nodes(ctx.client, clusters[g], group)
            say(f"pipelining: cluster {g} agreed: {describe_plan(clusters[g].assignments)}")
        await settle([n for group in procs.values() for n in group])
        targets = {k: [clusters[g].origin for g in gs] for k, gs in setups.items()}
        pids = {k: [n.process.pid for g in gs for n in procs[g]] for k, gs in setups.items()}
        for t in targets.values():
            for address in t:
                await ctx.client.latencies(address, inputs, s.warmup)
        compared = {labels[1]: clusters["two"], labels[2]: clusters["prof"]}
        before = {k: await stage_counters(ctx.client, c) for k, c in compared.items()}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for r in range(s.load_rounds):
            k = r % len(labels)
            for label in labels[k:] + labels[:k]:  # rotate the order each round
                result = await offered_load(
                    ctx.client,
                    targets[label],
                    pids[label],
                    inputs,
                    s.concurrency,
                    s.load_seconds,
                    1.0,
                )
                runs[label].append(result)
                say(f"pipelining round {r + 1}: {label}: {result['rps']:.1f} req/s")
        two_plan = describe_plan(clusters["two"].assignments)
        cuts = {g: [p.start for p in manifest_of(groups[g][0]).parts] for g in ("two", "prof")}
        stage_s = {}  # per pipeline: mean seconds per part on its node under load
        for label, c in compared.items():
            means = stage_means(before[label], await stage_counters(ctx.client, c))
            stage_s[label] = {str(part): v for part, v in sorted(means.items())}
    finally:
        stop_nodes([n for group in procs.values() for n in group])
    rps = {k: [r["rps"] for r in v] for k, v in runs.items()}
    ceiling = labels[3]
    ratios = {
        label: statistics.median(rps[label]) / statistics.median(rps[ceiling])
        for label in labels[1:3]
    }
    ratio_rounds = {
        label: [a / b for a, b in zip(rps[label], rps[ceiling], strict=True)]
        for label in labels[1:3]
    }
    best = max(ratios.values())
    sec.data = {
        "runs": runs,
        "pinned_gflops": speed,
        "two_node_plan": two_plan,
        "cuts": cuts,
        "ratio_rounds": ratio_rounds,
        "stage_means_s": stage_s,
    }
    ctx.targets.append(
        f"2-node pipeline: {ratios[labels[1]]:.2f} of the ceiling with the FLOP-balanced cut, "
        f"{ratios[labels[2]]:.2f} cut on a profile (target >= {PIPELINE_TARGET:.2f}): "
        f"{met(best >= PIPELINE_TARGET)}"
    )
    rows = []
    for label in labels:
        st = summary(rps[label])
        lat = statistics.median(r["latency_s"].get("median", float("nan")) for r in runs[label])
        errors = sum(r["errors"] for r in runs[label])
        node_cpu = np.median([r["nodes_pct"] for r in runs[label]], axis=0)
        client_cpu = statistics.median(r["client_pct"] for r in runs[label])
        rows.append([
            label, f"{st['median']:.1f}", f"{st['p10']:.1f}-{st['p90']:.1f}",
            f"{st['median'] / statistics.median(rps[ceiling]):.2f}",
            f"{st['median'] / statistics.median(rps[labels[0]]):.2f}", ms(lat, 1),
            " / ".join(f"{v:.0f}" for v in node_cpu), f"{client_cpu:.0f}", errors,
        ])  # fmt: skip
    sec.lines += [
        f"{model}, Keras, every node started under `taskset -c CORE` with one TensorFlow "
        f"thread (`--threads 1`); {s.concurrency} requests in flight from this process (not "
        f"pinned: the client shares the two cores with the nodes), {s.load_seconds:g} s "
        f"measured after 1 s of load, {s.load_rounds} rounds with the order of the setups "
        f"rotated. The pipelines' splits: 2 parts, plan `{two_plan}`, cut before op "
        f"{cuts['two'][1]} (balanced on FLOPs) or op {cuts['prof'][1]} (balanced on "
        "`edgenode profile --threads 1` run on core 0 before the nodes start); the ceiling "
        "sends every other client's requests to each of the two independent clusters. CPU: % "
        "of one core over the measured window (median of rounds), per node process and for "
        "this process (the client, with its gRPC threads).",
        "",
        *table(
            "setup|req/s (median of rounds)|p10-p90 over rounds|ratio to ceiling"
            "|ratio to 1 node|median latency under load ms|CPU % per node|client CPU %"
            "|errors",
            rows,
        ),
        "",
        *(
            f"- {label} / ceiling: **{ratios[label]:.2f}** (per round: "
            f"{', '.join(f'{v:.2f}' for v in ratio_rounds[label])}); part run times on the "
            "nodes under load: " + " / ".join(f"{ms(v, 1)} ms" for v in stage_s[label].values())
            for label in labels[1:3]
        ),
        f"- target >= {PIPELINE_TARGET:.2f}: {met(best >= PIPELINE_TARGET)}. Quick prototypes "
        "here: grpc.aio 0.75-0.81, raw TCP 0.92-0.98.",
        "",
        "![pipelining](inference-pipelining.png)",
    ]


# -- 4: backends -------------------------------------------------------------------------------


async def section_backends(ctx: Context, sec: Section) -> None:
    model, s = ctx.args.model, ctx.settings
    dirs = {fmt: ctx.splits.get(model, 5, fmt=fmt) for fmt in ("keras", "litert")}
    wholes = {fmt: ctx.splits.get(model, 1, fmt=fmt) for fmt in ("keras", "litert")}
    manifest = manifest_of(dirs["keras"])
    parts: dict[str, list[list[float]]] = {}
    whole: dict[str, list[float]] = {}
    for fmt in ("keras", "litert"):
        say(f"backends: timing {fmt} parts in process")
        parts[fmt] = ctx.runner(dirs[fmt]).time_parts(s.part_runs)
        whole[fmt] = timed(ctx.runner(wholes[fmt]).whole(), s.part_runs)
    proto = ctx.shared.get("prototype")
    node_means: dict[str, dict[str, float]] = {}
    cluster: dict[str, dict[str, float]] = {}
    if proto is not None:
        for e in proto["setups"]:
            if e["one_part_each"]:
                node_means[e["backend"]] = e["part_means_s"]
                cluster[e["backend"]] = summary(e["cluster_s"])
    rows = []
    for p in manifest.parts:
        k, li = summary(parts["keras"][p.index]), summary(parts["litert"][p.index])
        rows.append([
            p.index, f"{p.start}-{p.stop - 1}", f"{p.flops / 1e6:.0f}", len(p.inputs),
            f"{ms(k['median'])} ({spread_ms(k)})", f"{ms(li['median'])} ({spread_ms(li)})",
            f"{k['median'] / li['median']:.2f}",
            ms(node_means.get("keras", {}).get(str(p.index))),
            ms(node_means.get("litert", {}).get(str(p.index))),
        ])  # fmt: skip
    e2e = []
    for fmt in ("keras", "litert"):
        w = summary(whole[fmt])
        chain = [sum(run) for run in zip(*parts[fmt], strict=True)]
        c = summary(chain)
        cl = cluster.get(fmt)
        e2e.append([
            fmt, f"{ms(w['median'])} ({spread_ms(w)})", f"{ms(c['median'])} ({spread_ms(c)})",
            f"{c['median'] / w['median']:.2f}",
            f"{ms(cl['median'])} ({spread_ms(cl)})" if cl else "-",
            f"{cl['median'] / w['median']:.2f}" if cl else "-",
        ])  # fmt: skip
    sec.data = {"parts_s": parts, "whole_s": whole, "node_part_means_s": node_means}
    sec.lines += [
        f"{model}, the 5-part balanced split. In process: each part timed {s.part_runs} times "
        "(parts interleaved) by the runner a node uses (`edgenode.backends.load_runner`; LiteRT "
        "with 1 thread as a node's default, Keras with TensorFlow's default threads); on node: "
        "the node's mean run time of the part during section 1's timed requests.",
        "",
        *table(
            "part|op range|MFLOP|inputs|Keras ms median (p10-p90)"
            "|LiteRT ms median (p10-p90)|Keras / LiteRT|Keras on node ms"
            "|LiteRT on node ms",
            rows,
        ),
        "",
        "End to end (medians, p10-p90):",
        "",
        *table(
            "backend|whole model in process ms|5 parts chained in process ms"
            "|chain / whole|5 nodes ms (section 1)|5 nodes / whole",
            e2e,
        ),
        "",
        "![backends](inference-backends.png)",
    ]


# -- 5: planner --------------------------------------------------------------------------------


def predicted_stages(
    manifest: Any, stages: Sequence[tuple[int, int]], speed_gflops: float
) -> list[Any]:
    """The planner's cost of each stage at ``speed_gflops`` with the runtime's link model."""
    from edgenode.planning import NodeSpec, stage_cost
    from edgenode.runtime.negotiation import DEFAULT_LINK

    graph = manifest.cost_graph()
    node = NodeSpec(node_id="x", speed=speed_gflops * 1e9, memory_bytes=1 << 40)
    return [stage_cost(graph, a, b, node, DEFAULT_LINK) for a, b in stages]


async def section_planner(ctx: Context, sec: Section) -> None:
    model, s = ctx.args.model, ctx.settings
    calibrated = ctx.speed(model)
    proto = ctx.shared.get("prototype")
    lines: list[str] = []
    data: dict[str, Any] = {"calibrated_gflops": calibrated}
    if proto is None:
        lines += ["(section 1 did not run: no measured stage times from nodes)", ""]
    else:
        rows = []
        for e in proto["setups"]:
            manifest = manifest_of(ctx.splits.root / e["directory"])
            stages = [tuple(x) for x in e["stages"]]
            # the speed this backend reached on the whole model, in the same rounds
            speed = manifest.model.flops / statistics.median(e["local_s"]) / 1e9
            predicted = predicted_stages(manifest, stages, speed)
            means = {int(k): v for k, v in e["part_means_s"].items()}
            for i, ((a, b), cost) in enumerate(zip(stages, predicted, strict=True)):
                measured = sum(means.get(p, float("nan")) for p in range(a, b))
                rows.append([
                    e["label"], i, f"{a}" if b - a == 1 else f"{a}-{b - 1}",
                    f"{cost.work / 1e6:.0f}", ms(cost.compute_s), ms(measured),
                    f"{measured / cost.compute_s:.2f}", ms(cost.time_s - cost.compute_s),
                ])  # fmt: skip
            data.setdefault("stages", []).append(
                {
                    "label": e["label"],
                    "speed_gflops": speed,
                    "predicted_compute_s": [c.compute_s for c in predicted],
                    "predicted_time_s": [c.time_s for c in predicted],
                }
            )
            latency = sum(c.time_s for c in predicted)
            data.setdefault("latency", []).append(
                {
                    "label": e["label"],
                    "predicted_s": latency,
                    "measured_median_s": statistics.median(e["cluster_s"]),
                }
            )
        lines += [
            "Compute time per stage of section 1's clusters: predicted = the stage's FLOPs / "
            "the speed the backend reached on the whole model locally in the same rounds "
            "(what a speed score calibrated on this model would give); measured = the sum over "
            "the stage's parts of the node's mean part run time (`GetStatus` stages). The "
            "planner also charges each stage its sends at 125 MB/s plus 0.5 ms (last column); "
            "its latency below is at that speed too.",
            "",
            *table(
                "setup|stage|parts|MFLOP|predicted ms|measured ms|measured / predicted"
                "|planner's send + hop ms",
                rows,
            ),
            "",
            "End to end, one request: the planner's latency (sum of its stage times) against "
            "the measured median:",
            "",
            *table(
                ["setup", "planner latency ms", "measured median ms"],
                [
                    [x["label"], ms(x["predicted_s"]), ms(x["measured_median_s"])]
                    for x in data["latency"]
                ],
            ),
            "",
        ]
    # balanced against equal operations
    rows = []
    data["splits"] = {}
    for method in ("balanced", "even"):
        directory = ctx.splits.get(model, 5, method=method)
        manifest = manifest_of(directory)
        say(f"planner: timing the {method} split's parts in process")
        times = ctx.runner(directory).time_parts(s.part_runs)
        medians = [statistics.median(t) for t in times]
        flops = [p.flops for p in manifest.parts]
        predicted = [f / (calibrated * 1e9) for f in flops]
        per_run_max = [max(run) for run in zip(*times, strict=True)]
        bottleneck = summary(per_run_max)
        data["splits"][method] = {
            "parts_s": times,
            "flops": flops,
            "ops": [p.stop - p.start for p in manifest.parts],
        }
        plan = offline_plan(manifest, [f"n{i}" for i in range(5)], calibrated)
        rows.append([
            method, ", ".join(str(p.stop - p.start) for p in manifest.parts),
            ", ".join(f"{f / 1e6:.0f}" for f in flops), ", ".join(ms(m) for m in medians),
            ms(max(predicted)), f"{ms(max(medians))} ({spread_ms(bottleneck)})",
            describe_plan(plan.assignments),
        ])  # fmt: skip
    lines += [
        f"Balanced split (`--cut balanced`, the default) against equal operation counts "
        f"(`--cut even`), 5 parts, Keras, parts timed in process ({s.part_runs} runs): the "
        "bottleneck stage sets a pipeline's throughput.",
        "",
        *table(
            "split|ops per part|MFLOP per part|median ms per part|predicted bottleneck ms"
            "|measured bottleneck ms (p10-p90 of per-run max)"
            f"|planner's plan on 5 nodes at {calibrated} GFLOP/s",
            rows,
        ),
        "",
        "![planner](inference-planner.png)",
    ]
    sec.data = data
    sec.lines += lines


# -- plots -------------------------------------------------------------------------------------


def _grouped_bars(
    ax: Any, series: Sequence[tuple[str, Sequence[Any]]], ticks: Sequence[str]
) -> None:
    """One bar group per tick, one bar per series (values in seconds, drawn in ms). A value
    that is a list of samples is drawn as its median with a p10-p90 whisker."""
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * width
        x = np.arange(len(ticks)) + offset
        if values and isinstance(values[0], (list, tuple, np.ndarray)):
            ms = [np.asarray(v) * 1e3 for v in values]
            mid = np.array([np.median(v) for v in ms])
            low = mid - np.array([np.percentile(v, 10) for v in ms])
            high = np.array([np.percentile(v, 90) for v in ms]) - mid
            ax.bar(x, mid, width, label=f"{label}, p10-p90")
            ax.errorbar(x, mid, yerr=[low, high], fmt="none", ecolor="black", capsize=3, lw=1)
        else:
            ax.bar(x, np.asarray(values) * 1e3, width, label=label)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _plot_latency(plt: Any, results: Sequence[Mapping[str, Any]]) -> Any:
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        names, values = [], []
        for e in res["setups"]:
            names += [f"local whole model, {e['backend']}", e["label"].split(", one op")[0]]
            values += [np.asarray(e["local_s"]) * 1e3, np.asarray(e["cluster_s"]) * 1e3]
        values, names = values[::-1], names[::-1]  # the first setup at the top
        ax.boxplot(values, orientation="horizontal", whis=(10, 90), showfliers=False)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        medians = [float(np.median(v)) for v in values]
        if max(medians) > 8 * min(medians):
            ax.set_xscale("log")
        ax.set_xlabel("latency, ms (box: quartiles, whiskers: p10-p90)")
        ax.set_title(f"{res['model']}: one request at a time")
        ax.grid(axis="x", alpha=0.3)
    return fig


def _plot_hops(plt: Any, data: Mapping[str, Any]) -> Any:
    points, fit = data["points"], data["fit"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = np.array([p["stages"] - 1 for p in points])
    lat = [np.asarray(p["latency_s"]) * 1e3 for p in points]
    med = np.array([np.median(v) for v in lat])
    err = [med - [np.percentile(v, 10) for v in lat], [np.percentile(v, 90) for v in lat] - med]
    ax.errorbar(x, med, yerr=err, fmt="o", capsize=3, label="median, p10-p90")
    if math.isfinite(fit["slope"]):
        xs = np.array([x.min(), x.max()])
        line = (fit["intercept"] + fit["slope"] * xs) * 1e3
        ax.plot(xs, line, "-", label=f"fit: {fit['slope'] * 1e6:.0f} us per hop")
    ax.set_xlabel("stages - 1 (hops between nodes)")
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency against the number of stages (8 parts)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _plot_pipelining(plt: Any, data: Mapping[str, Any]) -> Any:
    labels = list(data["runs"])
    rps = [[r["rps"] for r in data["runs"][k]] for k in labels]
    med = np.array([np.median(v) for v in rps])
    err = [med - [np.percentile(v, 10) for v in rps], [np.percentile(v, 90) for v in rps] - med]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(
        range(len(labels)), med, xerr=err, capsize=3, color=[f"C{i}" for i in range(len(labels))]
    )
    ax.set_yticks(range(len(labels)), [lbl.replace(": ", ":\n") for lbl in labels], fontsize=8)
    ax.axvline(med[-1] * PIPELINE_TARGET, color="k", ls="--", lw=1, label="90 % of ceiling")
    ax.set_xlabel("requests/s (median of rounds, p10-p90)")
    ax.set_title("Pipelining under concurrent load")
    ax.legend(fontsize=8)
    return fig


def _plot_backends(plt: Any, data: Mapping[str, Any]) -> Any:
    parts = data["parts_s"]
    n = len(parts["keras"])
    series: list[tuple[str, Sequence[Any]]] = [
        (f"{name}, in process (median)", parts[fmt])
        for fmt, name in (("keras", "Keras"), ("litert", "LiteRT"))
    ]
    for fmt, name in (("keras", "Keras"), ("litert", "LiteRT")):
        means = data["node_part_means_s"].get(fmt)
        if means:
            series.append(
                (f"{name}, on node (mean)", [means.get(str(i), np.nan) for i in range(n)])
            )
    fig, ax = plt.subplots(figsize=(7, 4))
    _grouped_bars(ax, series, [f"part {i}" for i in range(n)])
    ax.set_ylabel("ms per run")
    ax.set_title("Per-part run time: Keras and LiteRT")
    return fig


def _plot_planner(plt: Any, data: Mapping[str, Any], proto: Mapping[str, Any] | None) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if data.get("stages") and proto is not None:
        e = proto["setups"][0]
        means = {int(k): v for k, v in e["part_means_s"].items()}
        measured = [sum(means.get(p, np.nan) for p in range(a, b)) for a, b in e["stages"]]
        predicted = data["stages"][0]["predicted_compute_s"]
        series = [("predicted (FLOPs / speed)", predicted), ("measured on node", measured)]
        _grouped_bars(axes[0], series, [f"stage {i}" for i in range(len(measured))])
        axes[0].set_ylabel("ms")
        axes[0].set_title(f"{e['label']}: compute per stage")
    else:
        axes[0].set_axis_off()
    splits = data["splits"]
    series = [
        (f"{method} (ops {'/'.join(map(str, d['ops']))}), median", d["parts_s"])
        for method, d in splits.items()
    ]
    _grouped_bars(axes[1], series, [f"part {i}" for i in range(len(series[0][1]))])
    axes[1].set_ylabel("ms per run (in process, Keras)")
    axes[1].set_title("Balanced against equal-operations split")
    return fig


def make_plots(sections: Mapping[int, Section], footer: str) -> list[str]:
    """Write the PNGs of the sections that ran, each with ``footer`` (machine, command)
    under it; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {n: sec.data for n, sec in sections.items() if sec.data and not sec.error}
    figures = {}
    latency = [data[n] for n in (1, 6) if n in data]
    if latency:
        figures["inference-latency.png"] = _plot_latency(plt, latency)
    if 2 in data:
        figures["inference-hops.png"] = _plot_hops(plt, data[2])
    if 3 in data:
        figures["inference-pipelining.png"] = _plot_pipelining(plt, data[3])
    if 4 in data:
        figures["inference-backends.png"] = _plot_backends(plt, data[4])
    if 5 in data:
        figures["inference-planner.png"] = _plot_planner(plt, data[5], data.get(1))
    for name, fig in figures.items():
        fig.text(0.01, 0.01, footer, fontsize=7, color="0.35", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
        fig.savefig(RESULTS / name, dpi=110)
        plt.close(fig)
    return list(figures)


# -- main --------------------------------------------------------------------------------------

SECTIONS: dict[int, tuple[str, Callable[[Context, Section], Any]]] = {
    1: ("Prototype table: local whole model against 5 nodes", section_prototype),
    2: ("Hops: latency against the number of nodes", section_hops),
    3: ("Pipelining: requests/s under concurrent load", section_pipelining),
    4: ("Backends: Keras against LiteRT", section_backends),
    5: ("Planner: predicted against measured", section_planner),
    6: ("A second model: multi-input parts", section_second_model),
}


def plot_footer(command: str, when: str) -> str:
    """The line under every figure: what ran, where, when."""
    return f"{command}  |  {os.cpu_count()} cores, {platform.machine()}  |  {when}"


def machine_lines() -> list[str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for module in ("tensorflow", "keras", "ai_edge_litert", "grpc"):
        with contextlib.suppress(Exception):
            mod = __import__(module)
            versions.append(f"{module} {getattr(mod, '__version__', '?')}")
    return [
        f"- machine: {os.cpu_count()} cores ({cpu or platform.processor() or '?'}), "
        f"{platform.platform()}, Python {platform.python_version()}; {', '.join(versions)}"
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs, to try the script out")
    parser.add_argument(
        "--sections",
        default=",".join(map(str, ALL_SECTIONS)),
        help="comma-separated section numbers (default: all)",
    )
    parser.add_argument("--model", default="MobileNetV3Large")
    parser.add_argument("--second-model", default="DenseNet121")
    parser.add_argument("--runs", type=int, help="single requests per latency setup (100)")
    parser.add_argument("--hop-runs", type=int, help="single requests per cluster size (100)")
    parser.add_argument("--load-seconds", type=float, help="window per throughput point (15)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument(
        "--hop-backend",
        choices=("litert", "keras"),
        default="litert",
        help="parts of the hop measurement (default litert: see the notes)",
    )
    parser.add_argument(
        "--workdir", help="keep splits and node logs here and reuse its splits (default: temp)"
    )
    args = parser.parse_args(argv)
    try:
        args.section_list = sorted({int(x) for x in args.sections.split(",") if x.strip()})
    except ValueError:
        parser.error("--sections: expected numbers like 1,2,3")
    if not set(args.section_list) <= set(ALL_SECTIONS):
        parser.error(f"--sections: choose from {ALL_SECTIONS}")
    return args


async def run_sections(ctx: Context) -> dict[int, Section]:
    done: dict[int, Section] = {}
    try:
        for number in ctx.args.section_list:
            title, fn = SECTIONS[number]
            sec = Section(number=number, title=title)
            say(f"section {number}: {title}")
            started = time.monotonic()
            try:
                await fn(ctx, sec)
            except Exception as exc:  # report and go on: one failure must not lose the others
                sec.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            sec.seconds = time.monotonic() - started
            done[number] = sec
            print(f"\n## {number}. {title}\n")
            print("\n".join(sec.lines) if not sec.error else f"FAILED: {sec.error}")
    finally:
        await ctx.client.aclose()
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/inference.py", *sys.argv[1:]])
    from edgenode.model.tfsetup import configure

    configure()  # the same TensorFlow set-up as a node (default threads)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices: every part is its own tf.function
    from edgenode.runtime.selfbench import measure_speed
    from edgenode.transport import run, tune_malloc

    tune_malloc()
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="edgenode-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    selfbench = measure_speed() / 1e9
    started = time.monotonic()
    ctx = Context(
        settings=Settings.make(args),
        args=args,
        work=work,
        run_id=f"inf{uuid.uuid4().hex[:4]}",
        splits=Splits(work / "splits"),
        client=Client(),
    )
    failed = True
    try:
        sections = run(run_sections(ctx))
        failed = any(sec.error for sec in sections.values())
    finally:
        if failed and not keep:
            say(f"kept {work} (node logs) for a look at what failed")
        elif not keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    plots = make_plots(sections, plot_footer(command, time.strftime("%Y-%m-%d %H:%M")))
    s = ctx.settings
    speeds = ", ".join(f"{k} {v} GFLOP/s" for k, v in ctx.calibrated.items())
    lines = [
        "# Inference benchmark",
        "",
        f"- command: `{command}`",
        *machine_lines(),
        f"- run: {time.strftime('%Y-%m-%d %H:%M')}, {elapsed / 60:.1f} min; load average "
        f"(1 min) {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
        + (" (--quick: few runs, noisy)" if args.quick else ""),
        "- every node is an `edgenode run` process on 127.0.0.1 (mDNS on loopback, insecure); "
        "the client is this process; figures are medians with p10-p90 over repeated runs (or "
        "mean and std where the prototype's table used them)",
        f"- speeds: the node self-benchmark (`measure_speed`) gave {selfbench:.2f} GFLOP/s in "
        "this process; the benchmark pins one `speed_gflops` for all nodes of a cluster instead "
        f"(measured on the whole model: {speeds}), lowered where needed so that the planner "
        "uses every node (see each section)",
    ]
    if ctx.splits.seconds:
        made = ", ".join(f"{k} {v:.0f} s" for k, v in ctx.splits.seconds.items())
        lines.append(f"- splits made for this run: {made}")
    if ctx.targets:
        lines += ["", "Targets (issue 7):", "", *(f"- {t}" for t in ctx.targets)]
    for number, sec in sections.items():
        lines += ["", f"## {number}. {sec.title}", ""]
        if sec.error:
            lines.append(f"**Failed** after {sec.seconds:.0f} s: `{sec.error}`")
        else:
            lines += sec.lines
        lines += ["", f"_section time: {sec.seconds:.0f} s_"]
    lines += ["", "## Notes", "", *NOTES]
    text = "\n".join(lines) + "\n"
    (RESULTS / "inference.md").write_text(text)
    raw = {
        "command": command,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": args.quick,
        "settings": dataclasses.asdict(s),
        "elapsed_s": elapsed,
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "selfbench_gflops": selfbench,
        "calibration": ctx.calibration,
        "split_seconds": ctx.splits.seconds,
        "sections": {
            str(n): {
                "title": sec.title,
                "error": sec.error,
                "seconds": sec.seconds,
                "data": sec.data,
            }
            for n, sec in sections.items()
        },
        "plots": plots,
        "targets": ctx.targets,
    }
    (RESULTS / "inference.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    say(f"wrote {RESULTS / 'inference.md'}, inference.json and {', '.join(plots)}")
    return 1 if any(sec.error for sec in sections.values()) else 0


NOTES = [
    "- The machine has 2 cores and every process shares them: up to 8 node processes, and the "
    "client (this process, which also runs the local baselines). One request at a time keeps "
    "one node busy at a time; under load (section 3) the unpinned client takes its share "
    "(column 'client CPU %') from the same two cores as the pinned nodes, in every setup.",
    "- The planner plans for gigabit Ethernet (125 MB/s, 0.5 ms per hop) even on loopback; at "
    "the speed the model really reaches here, sends cost as much as compute, so it merges "
    "parts and puts the spare nodes in replicas (requests then alternate between pipelines). "
    "To measure N stages on N nodes the benchmark pins a lower `speed_gflops` (planning only: "
    "it does not change how fast a node runs); each section says which.",
    "- Measured stage times come from the nodes (`GetStatus` stages: count and mean run time "
    "per owned part, differenced before and after the timed requests); a node times a part "
    "on the thread that runs it (its event loop or a worker), from its inputs to its "
    "outputs: no queueing or "
    "hand-off is in the figure. These columns have no spread: nodes also report the median "
    "and p90 of their last 256 runs, but only counts and means can be differenced between "
    "two snapshots.",
    "- LiteRT nodes do not import TensorFlow: they start and agree in ~2 s, Keras nodes in "
    "10-30 s on this machine.",
    "- The hop measurement uses LiteRT parts by default: its nodes start in a second or two, "
    "so a size whose cluster does not agree can be started again cheaply. With 7-8 nodes on "
    "2 cores, agreement can fail: while confirming a plan every node asks every other one "
    "for its digest every 20 ms, which keeps the cores busy, a peer that does not answer "
    "within 0.5 s twice is marked dead, and nodes whose members then disagree keep "
    "confirming without ever probing the dead peer again. The 8 parts run at every size, so "
    "the slope (the cost of a hop) does not depend on the backend's speed.",
]


if __name__ == "__main__":
    sys.exit(main())
