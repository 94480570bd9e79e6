"""Real node processes for tests: start `edgenode run`, find its address, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgenode.client.cluster import ClusterClient
from edgenode.transport import ControlClient, Security, run

START_DEADLINE_S = 90.0
# Pinned so slow that compute outweighs every hop: the plan spreads the parts over all nodes.
SLOW_GFLOPS = 0.000001


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`edgenode ARGS --insecure` (the clusters of these tests are insecure), its output."""
    return subprocess.run(
        [sys.executable, "-m", "edgenode.cli", *args, "--insecure"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_until(predicate: Callable[[], Any], deadline_s: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.05)  # polling interval, not a wait for an event


class NodeProcess:
    """One `edgenode run` process; its log goes to a file the test can read."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        insecure: bool = True,
    ) -> None:
        """``insecure``: add --insecure (tests of other things run insecure clusters)."""
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.ready_path = workdir / f"{name}.ready.json"  # `run --ready-file`
        self._log = self.log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgenode.cli", "run", "--name", name]
            + ["--ready-file", str(self.ready_path), *args]
            + (["--insecure"] if insecure else []),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).parents[1],
        )
        self.address = ""

    def log(self) -> str:
        return self.log_path.read_text()

    def ready(self) -> dict[str, Any] | None:
        """The ready file this run wrote once serving (None before: a file a killed earlier
        run of the same name left behind does not count)."""
        try:
            ready: dict[str, Any] = json.loads(self.ready_path.read_text())
        except FileNotFoundError:
            return None
        return ready if ready["pid"] == self.process.pid else None

    def wait_serving(self, deadline_s: float = START_DEADLINE_S) -> str:
        def found() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"node {self.name} exited early:\n{self.log()}")
            ready = self.ready()
            return str(ready["address"]) if ready else None

        self.address = wait_until(found, deadline_s, f"node {self.name} to serve")
        return self.address

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def statuses(addresses: list[str], key: Path | None = None) -> dict[str, dict[str, Any]]:
    """GetStatus of every address that answers, by node id (as a member: ``key``), as
    `edgenode status --json` prints it."""
    from edgenode.security import load_credentials
    from edgenode.transport import Security

    security = Security(load_credentials(key)) if key else Security.insecure()

    async def ask() -> dict[str, dict[str, Any]]:
        found = {}
        async with ClusterClient(security=security) as client:
            for address in addresses:
                try:
                    status = (await client.status(address)).to_json()
                except Exception:  # noqa: BLE001  a node that is starting or stopping does not answer
                    continue
                found[status["node"]["node_id"]] = status
        return found

    return run(ask())


def agreed_cluster(
    nodes: list[NodeProcess], members: set[str], key: Path | None = None, *, loaded: bool = True
) -> dict[str, dict[str, Any]]:
    """Statuses once every node in ``nodes`` serves one agreed plan over exactly ``members``
    (``loaded=False``: agreed, its parts perhaps still loading)."""

    def check() -> dict[str, dict[str, Any]] | None:
        found = statuses([n.address for n in nodes], key)
        if set(found) != {n.name for n in nodes}:
            return None
        return found if all_agreed(found, members, loaded=loaded) else None

    return wait_until(check, START_DEADLINE_S, f"agreement among {sorted(members)}")


def all_agreed(found: dict[str, dict[str, Any]], members: set[str], *, loaded: bool) -> bool:
    """Whether every status in ``found`` (as `status --json` prints them) serves one agreed
    plan over exactly ``members`` and, when ``loaded``, has loaded exactly its parts of it."""
    digests = set()
    for st in found.values():
        plan = st["plan"]
        if set(plan["members"]) != members or not plan["agreed_digest"]:
            return False
        if plan["agreed_digest"] != plan["computed_digest"]:
            return False
        digests.add(plan["agreed_digest"])
    if len(digests) != 1:
        return False
    if not loaded:
        return True
    for st in found.values():  # every node has loaded exactly what the plan gives it
        me = st["node"]["node_id"]
        own = [
            list(range(a["start"], a["stop"]))
            for a in st["plan"]["assignments"]
            if a["node_id"] == me
        ]
        if sorted(st["parts"]) != (own[0] if own else []):
            return False
    return True


def node_config(workdir: Path, *, speed_gflops: float = SLOW_GFLOPS, extra: str = "") -> Path:
    """A node.toml for a test cluster of its own: pinned speeds (the plan does not depend
    on benchmark noise), a unique cluster name, and ``extra`` TOML."""
    config = workdir / "node.toml"
    config.write_text(
        f"[node]\nspeed_gflops = {speed_gflops}\n"
        f'[cluster]\nname = "test-{uuid.uuid4().hex[:12]}"\n{extra}'
    )
    return config


def start_node(
    directory: Path,
    workdir: Path,
    name: str,
    *,
    config: Path,
    env: dict[str, str] | None = None,
    insecure: bool = True,
) -> NodeProcess:
    """`edgenode run` as ``name``, serving the split in ``directory`` on 127.0.0.1 with its
    state in ``workdir / name`` (started, not yet waited for)."""
    return NodeProcess(
        name, workdir, "--config", str(config), "--listen", "127.0.0.1:0",
        "--model", str(directory), "--interfaces", "127.0.0.1",
        "--state-dir", str(workdir / name), env=env, insecure=insecure,
    )  # fmt: skip


def start_nodes(
    directory: Path,
    workdir: Path,
    names: Sequence[str],
    *,
    config: Path,
    env: dict[str, str] | None = None,
) -> list[NodeProcess]:
    """One `edgenode run` per name, as start_node (started, not yet waited for)."""
    return [start_node(directory, workdir, name, config=config, env=env) for name in names]


@contextlib.contextmanager
def running_cluster(
    directory: Path,
    workdir: Path,
    names: Sequence[str] = ("a", "b", "c"),
    *,
    config: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[list[NodeProcess], dict[str, dict[str, Any]]]]:
    """Nodes serving one agreed plan over all of them, with their statuses; every node is
    continued (if a test froze it) and stopped on exit."""
    nodes = start_nodes(directory, workdir, names, config=config or node_config(workdir), env=env)
    try:
        for node in nodes:
            node.wait_serving()
        yield nodes, agreed_cluster(nodes, set(names))
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.signal(signal.SIGCONT)
            node.stop()


def multi_io_split(directory: Path) -> dict[str, Any]:
    """The multi_io test model cut at ops 2, 4 and 6 into ``directory`` (Keras parts):
    {"model", "graph", "manifest", "dir"}, as the secure-cluster tests use it."""
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model
    from tests.model import models

    model = models.build("multi_io")
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    return {"model": model, "graph": build_graph(model), "manifest": manifest, "dir": directory}


def infer_checked(
    address: str, security: Security, split: dict[str, Any], seed: int, *, failover: bool = True
) -> None:
    """Two requests at ``address`` (inputs ``seed`` and ``seed + 10`` of ``split``'s model);
    each must get its own input's answer. ``failover=False``: both at ``address`` itself,
    never at another member."""
    from tests.model import models
    from tests.reference import KERAS_TOLERANCE, assert_answer, reference_set

    batches = [models.sample_inputs(split["model"], seed=s, batch=1) for s in (seed, seed + 10)]

    async def go() -> list[dict[str, Any]]:
        client = ControlClient(security=security)
        try:
            return [
                await client.infer(address, b, timeout_s=60, failover=failover) for b in batches
            ]
        finally:
            await client.aclose()

    refs = reference_set(
        split["graph"], batches, tolerance=KERAS_TOLERANCE, manifest=split["manifest"]
    )
    for i, out in enumerate(run(go())):
        assert_answer(refs, i, out)
