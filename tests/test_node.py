"""Real node processes on 127.0.0.1: discovery, agreement, part loading, leaving, dying."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, agreed_cluster, statuses, wait_until

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, list[NodeProcess]]]:
    """A fresh cluster name (tests never see each other's nodes) and cleanup of nodes."""
    config = tmp_path / "node.toml"
    config.write_text(f'[cluster]\nname = "test-{uuid.uuid4().hex[:12]}"\n')
    nodes: list[NodeProcess] = []
    try:
        yield config, nodes
    finally:
        for node in nodes:
            node.stop()


def _start(
    cluster, tmp_path: Path, name: str, model: Path, *extra: str, listen: str = "127.0.0.1:0"
) -> NodeProcess:
    config, nodes = cluster
    node = NodeProcess(
        name,
        tmp_path,
        "--config", str(config),
        "--listen", listen,
        "--model", str(model),
        "--interfaces", "127.0.0.1",
        "--state-dir", str(tmp_path / f"state-{name}"),
        *extra,
    )  # fmt: skip
    nodes.append(node)
    return node


@pytest.mark.parametrize("count", [1, 3, 5])
def test_nodes_agree_and_each_loads_only_its_parts(cluster, split_dir, tmp_path, count) -> None:
    names = [f"n{i}" for i in range(count)]
    nodes = [_start(cluster, tmp_path, name, split_dir) for name in names]
    for node in nodes:
        node.wait_serving()
    found = agreed_cluster(nodes, set(names))
    # every part once in each replica pipeline; more nodes than parts make a second one
    assert_replicas_cover_the_model(found, parts=4)
    for node in nodes:
        assert "agreed" in node.log()


def assert_replicas_cover_the_model(found: dict[str, Any], parts: int) -> None:
    """Each replica pipeline in the agreed plan has every part loaded exactly once."""
    replicas: dict[int, list[int]] = {}
    for st in found.values():
        for a in st["plan"]["assignments"]:
            if a["node_id"] == st["node"]["node_id"]:
                replicas.setdefault(a["replica"], []).extend(st["parts"])
    assert replicas and all(sorted(p) == list(range(parts)) for p in replicas.values()), replicas
    loaded = sum(len(st["parts"]) for st in found.values())
    assert loaded == parts * len(replicas)  # idle nodes load nothing


def test_a_joining_node_gets_its_share(cluster, split_dir, tmp_path) -> None:
    nodes = [_start(cluster, tmp_path, name, split_dir) for name in ("a", "b")]
    for node in nodes:
        node.wait_serving()
    agreed_cluster(nodes, {"a", "b"})
    nodes.append(_start(cluster, tmp_path, "c", split_dir))
    nodes[-1].wait_serving()
    found = agreed_cluster(nodes, {"a", "b", "c"})
    assert found["c"]["parts"]  # in the pipeline or in a replica of its own
    assert_replicas_cover_the_model(found, parts=4)


def test_sigterm_says_goodbye_and_the_others_replan(cluster, split_dir, tmp_path) -> None:
    nodes = [_start(cluster, tmp_path, name, split_dir) for name in ("a", "b", "c")]
    for node in nodes:
        node.wait_serving()
    agreed_cluster(nodes, {"a", "b", "c"})
    assert nodes[2].stop() == 0
    assert "stopped" in nodes[2].log()
    agreed_cluster(nodes[:2], {"a", "b"})
    for node in nodes[:2]:  # told over gRPC (Leave): not found dead, not taken from mDNS alone
        assert node.log().count("membership: peer c left (2 nodes)") == 1
        assert "peer c unreachable" not in node.log()


def test_a_second_node_with_a_members_id_stops_with_one_line(cluster, split_dir, tmp_path) -> None:
    nodes = [_start(cluster, tmp_path, name, split_dir) for name in ("a", "b")]
    for node in nodes:
        node.wait_serving()
    before = agreed_cluster(nodes, {"a", "b"})
    twin_dir = tmp_path / "twin"
    twin_dir.mkdir()
    twin = _start(cluster, twin_dir, "a", split_dir)  # another device given the name "a"
    assert twin.process.wait(timeout=120) == 2
    log = twin.log()
    errors = [line for line in log.splitlines() if line.startswith("edgenode: error:")]
    assert errors == [
        f"edgenode: error: node id 'a' is already used by the node at {nodes[0].address} "
        f"(running since {errors[0].split('running since ')[1].split(')')[0]}): give this node "
        "another node.id (or node.name)"
    ], log
    assert "Traceback" not in log
    after = agreed_cluster(nodes, {"a", "b"})
    for name in ("a", "b"):
        assert after[name]["plan"]["agreed_digest"] == before[name]["plan"]["agreed_digest"]
        assert after[name]["address"] == before[name]["address"]
    assert "it started later and should stop" in nodes[0].log()


def test_a_killed_node_is_detected_and_the_others_replan(cluster, split_dir, tmp_path) -> None:
    nodes = [_start(cluster, tmp_path, name, split_dir) for name in ("a", "b", "c")]
    for node in nodes:
        node.wait_serving()
    agreed_cluster(nodes, {"a", "b", "c"})
    nodes[1].signal(signal.SIGKILL)  # no goodbye: its mDNS record lingers
    nodes[1].process.wait()
    agreed_cluster([nodes[0], nodes[2]], {"a", "c"})
    assert "membership: peer b unreachable, marked dead (2 nodes)" in nodes[0].log()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_static_peers_without_multicast(cluster, split_dir, tmp_path) -> None:
    pa, pb = _free_port(), _free_port()
    a = _start(cluster, tmp_path, "a", split_dir, "--no-multicast", "--peer",
               f"127.0.0.1:{pb}", listen=f"127.0.0.1:{pa}")  # fmt: skip
    b = _start(cluster, tmp_path, "b", split_dir, "--no-multicast", "--peer",
               f"127.0.0.1:{pa}", listen=f"127.0.0.1:{pb}")  # fmt: skip
    a.wait_serving()
    b.wait_serving()
    agreed_cluster([a, b], {"a", "b"})


def test_a_node_without_part_files_fetches_them_verified(cluster, split_dir, tmp_path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(split_dir / "manifest.json", bare / "manifest.json")
    config, _ = cluster
    cluster_line = config.read_text()
    slow, fast = tmp_path / "slow.toml", tmp_path / "fast.toml"
    slow.write_text("[node]\nspeed_gflops = 0.001\n" + cluster_line)
    fast.write_text("[node]\nspeed_gflops = 1000.0\n" + cluster_line)
    # b, which has no part files, is far faster: the plan gives it work
    a = _start((slow, cluster[1]), tmp_path, "a", split_dir)
    b = _start((fast, cluster[1]), tmp_path, "b", bare)
    a.wait_serving()
    b.wait_serving()
    found = agreed_cluster([a, b], {"a", "b"})
    assert found["b"]["parts"], "the plan gave b no part: nothing to fetch"
    from edgenode.model.manifest import file_sha256, load_manifest

    manifest = load_manifest(bare)
    for index in found["b"]["parts"]:
        spec = manifest.parts[index]
        assert file_sha256(bare / spec.file) == spec.sha256
    assert "fetched part-" in b.log()


def test_status_command(cluster, split_dir, tmp_path) -> None:
    nodes = [_start(cluster, tmp_path, name, split_dir) for name in ("a", "b")]
    for node in nodes:
        node.wait_serving()
    agreed_cluster(nodes, {"a", "b"})
    out = subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "status", "--peer", nodes[0].address, "--json",
         "--insecure"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {d["node"]["node_id"] for d in data} == {"a", "b"}  # found b through a
    table = subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "status", "--peer", nodes[1].address, "--insecure"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0 and "agreed" in table.stdout
    assert all(row.split()[4] == "yes" for row in table.stdout.splitlines()[2:])
    wait_until(lambda: statuses([nodes[0].address]), 5, "status")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[node]\nlisten = 5\n", "node.listen: expected a string, got integer 5"),
        ("[nodes]\n", "nodes: unknown key (known: cluster, limits, model, node, security)"),
        ("[cluster]\nname = 'x'\n", "security.key: no cluster credential; create one with "
         "`edgenode keygen` and set security.key, or set security.insecure = true (or "
         "--insecure) for development"),
        ("[security]\nkey = 'nokey.pem'\n", "security.key: {dir}/nokey.pem: No such file or "
         "directory"),
        ("[security]\nkey = 'k.pem'\ninsecure = true\n", "security: both key and insecure = "
         "true are set; choose one"),
        ("[model]\nbackend = 'onnx'\n", "model.backend: expected one of 'keras', 'litert', "
         "got string 'onnx'"),
        ("[model]\nsource = 'missing.keras'\n", "model.source: {dir}/missing.keras does not exist"),
        ("[cluster]\nmulticast = false\n", "cluster.peers: needed when cluster.multicast is false"),
        ("[node\n", "{dir}/node.toml: invalid TOML: Expected ']' at the end of a table "
         "declaration (at line 1, column 6)"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, error: str) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "run", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "edgenode: error: " + error.format(dir=tmp_path)


def test_missing_config_file(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "run", "--config", str(tmp_path / "x.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_prometheus_endpoint(split_dir, tmp_path) -> None:
    import urllib.request

    port = _free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nmetrics_listen = "127.0.0.1:{port}"\n'
        f'[cluster]\nname = "test-{uuid.uuid4().hex[:12]}"\n'
    )
    node = NodeProcess(
        "m", tmp_path, "--config", str(config), "--listen", "127.0.0.1:0", "--model",
        str(split_dir), "--interfaces", "127.0.0.1", "--state-dir", str(tmp_path / "state"),
        "--threads", "2",
    )  # fmt: skip
    try:
        node.wait_serving()
        assert "keras, 2 threads per part" in node.log()  # --threads overrides model.threads

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            return text if "edgenode_plan_agreed 1.0" in text else None

        text = wait_until(scrape, 30, "metrics showing an agreed plan")
        assert "edgenode_membership_size 1.0" in text
        assert "edgenode_queue_depth 0.0" in text

        # Requests one at a time, the node idle between them: after the first (its parts
        # not timed yet: a worker), the stage runs on the event loop, no thread hand-off.
        asyncio.run(_one_at_a_time(node.address, requests=6, idle_s=0.05))

        def runs() -> tuple[float, float] | None:
            text = scrape() or ""
            counts = [re.search(rf'edgenode_stage_runs_total{{on="{on}"}} (\S+)', text)
                      for on in ("loop", "worker")]  # fmt: skip
            if not all(counts) or sum(float(m[1]) for m in counts if m) < 6:
                return None
            return float(counts[0][1]), float(counts[1][1])  # type: ignore[index]

        loop, worker = wait_until(runs, 30, "metrics counting the 6 requests' stage runs")
        assert loop + worker == 6 and loop >= 1 and worker >= 1
    finally:
        assert node.stop() == 0


async def _one_at_a_time(address: str, *, requests: int, idle_s: float) -> None:
    from edgenode.transport import ControlClient
    from tests.model import models

    inputs = models.sample_inputs(models.build("fork_join"), batch=1)
    client = ControlClient(protocol=1)
    try:
        for _ in range(requests):
            await client.infer(address, inputs, timeout_s=30)
            await asyncio.sleep(idle_s)  # the scenario: an idle node, not a wait for an event
    finally:
        await client.aclose()
