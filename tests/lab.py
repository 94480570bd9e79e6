"""Real nodes on the edge lab's hosts (benchmarks/harness/lab.py): start, wait, ask, stop.

Everything the test process says to a node goes through the command line run on a lab host
(the lab is not reachable from the test process's own network namespace).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from harness.lab import (  # noqa: E402  (benchmarks/ is put on sys.path just above)
    PROFILES,
    Host,
    Lab,
    LabError,
    is_lab_address,
    measure_rate,
    unavailable,
)

from tests.nodes import START_DEADLINE_S, all_agreed, wait_until  # noqa: E402

__all__ = [
    "PROFILES",
    "Host",
    "Lab",
    "LabError",
    "LabNode",
    "is_lab_address",
    "lab_cli",
    "lab_infer",
    "lab_statuses",
    "lab_wait_agreed",
    "measure_rate",
    "start_lab_nodes",
    "unavailable",
]

CLI_TIMEOUT_S = 120.0


class LabNode:
    """One `edgenode run` on a lab host, listening on all of the host's addresses."""

    def __init__(
        self, host: Host, name: str, workdir: Path, *args: str, cpu: int | None = None
    ) -> None:
        """``cpu``: run on that core only (a device of its own, where cores allow)."""
        self.host = host
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.ready_path = workdir / f"{name}.ready.json"
        with self.log_path.open("w") as log:
            pin = [] if cpu is None else ["taskset", "-c", str(cpu)]  # execs: same pid
            command = [*pin, sys.executable, "-m", "edgenode.cli", "run", "--name", name,
                       "--listen", "0.0.0.0:0", "--state-dir", str(workdir / name),
                       "--ready-file", str(self.ready_path), "--insecure", *args]  # fmt: skip
            self.process = host.popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=ROOT,
            )
        self.address = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, deadline_s: float = START_DEADLINE_S) -> str:
        """host:port from the ready file this process wrote (nsenter execs: its pid is ours)."""

        def found() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"node {self.name} exited early:\n{self.log()}")
            try:
                ready = json.loads(self.ready_path.read_text())
            except FileNotFoundError:
                return None
            return str(ready["address"]) if ready["pid"] == self.process.pid else None

        self.address = wait_until(found, deadline_s, f"node {self.name} to serve")
        return self.address

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_lab_nodes(
    hosts: Sequence[Host], workdir: Path, model_dir: Path, config: Path, *extra: str
) -> list[LabNode]:
    """One node per host, named after it, serving ``model_dir``; waited until serving."""
    nodes = [
        LabNode(h, h.name, workdir, "--config", str(config), "--model", str(model_dir), *extra)
        for h in hosts
    ]
    for node in nodes:
        node.wait_serving()
    return nodes


def lab_cli(
    host: Host, *args: str, interfaces: Iterable[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`edgenode ARGS --insecure` run on ``host``, browsing mDNS on ``interfaces`` (default:
    all of the host's, as a user would)."""
    chosen = list(interfaces) if interfaces is not None else []
    return host.run(
        [sys.executable, "-m", "edgenode.cli", *args, "--insecure"]
        + (["--interfaces", ",".join(chosen)] if chosen else []),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=ROOT,
    )


def lab_statuses(client: Host, cluster: str, *args: str) -> dict[str, dict[str, Any]]:
    """`edgenode status --json` from ``client``: every node of ``cluster`` found by mDNS,
    by node id ({} when the command fails, e.g. while a plan changes)."""
    out = lab_cli(client, "status", "--json", "--cluster", cluster, *args)
    if out.returncode != 0:
        return {}
    return {st["node"]["node_id"]: st for st in json.loads(out.stdout)}


def _agreed(found: dict[str, dict[str, Any]], members: set[str]) -> bool:
    return set(found) == members and all_agreed(found, members, loaded=True)


def lab_wait_agreed(
    client: Host, cluster: str, members: set[str], deadline_s: float = START_DEADLINE_S
) -> dict[str, dict[str, Any]]:
    """Statuses, as the client host sees them, once exactly ``members`` serve one agreed plan
    over themselves with their parts loaded."""
    end = time.monotonic() + deadline_s
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < end:
        found = lab_statuses(client, cluster)
        if _agreed(found, members):
            return found
        time.sleep(0.5)  # polling interval, not a wait for an event
    seen = {n: (sorted(st["plan"]["members"]), st.get("state")) for n, st in found.items()}
    raise AssertionError(f"no agreement among {sorted(members)} in {deadline_s} s: {seen}")


def lab_infer(
    client: Host, cluster: str, batches: Sequence[dict[str, np.ndarray]], workdir: Path
) -> list[dict[str, np.ndarray]]:
    """`edgenode infer` from ``client`` on one .npz per batch: each answer by output name."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, batch in enumerate(batches):
        path = workdir / f"x{i}.npz"
        np.savez(path, **batch)
        files.append(path)
    saved = workdir / "answers.npz"
    out = lab_cli(client, "infer", *map(str, files), "--cluster", cluster,
                  "--save-outputs", str(saved), "--timeout", "60")  # fmt: skip
    assert out.returncode == 0, f"infer failed:\n{out.stdout}\n{out.stderr}"
    answers: list[dict[str, np.ndarray]] = [{} for _ in files]
    with np.load(saved) as got:
        for key in got.files:
            name, output = key.split("/", 1) if len(files) > 1 else (files[0].name, key)
            answers[[f.name for f in files].index(name)][output] = got[key]
    return answers
