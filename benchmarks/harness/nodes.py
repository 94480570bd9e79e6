"""`edgenode run` processes on 127.0.0.1: start, wait until serving, settle, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness import ROOT

START_DEADLINE_S = 180.0  # a node serving, then a cluster agreeing with its parts loaded
POLL_S = 0.1
SETTLE_WINDOW_S = 0.5
SETTLE_DEADLINE_S = 15.0
IDLE_CPU_PCT = 10.0  # an idle node uses ~2 % of a core (gauges, plan checks, mDNS)


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
        self.ready_path = workdir / f"{name}.ready.json"  # `run --ready-file`
        command = ["taskset", "-c", str(core)] if core is not None else []
        command += [
            sys.executable, "-m", "edgenode.cli", "run", "--name", name, "--config", str(config),
            "--listen", "127.0.0.1:0", "--model", str(model_dir), "--interfaces", "127.0.0.1",
            "--state-dir", str(workdir / name), "--ready-file", str(self.ready_path), "--insecure",
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

    def ready_address(self) -> str | None:
        """host:port from the ready file this run wrote once serving (taskset execs the
        node, so its pid is ours; a file an earlier, killed run left behind does not count)."""
        try:
            ready = json.loads(self.ready_path.read_text())
        except FileNotFoundError:
            return None
        return str(ready["address"]) if ready["pid"] == self.process.pid else None

    async def wait_serving(self, deadline: float) -> str:
        while not self.address:
            self.check_alive()
            if address := self.ready_address():
                self.address = address
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
