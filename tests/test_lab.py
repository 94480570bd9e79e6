"""Nodes on separate hosts of the edge lab (issue 19): network namespaces on a private bridge,
links shaped with tbf. Skipped, with one reason, where namespaces cannot be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import (
    Lab,
    LabNode,
    is_lab_address,
    lab_cli,
    lab_infer,
    lab_statuses,
    lab_wait_agreed,
    measure_rate,
    start_lab_nodes,
    unavailable,
)
from tests.nodes import multi_io_split, node_config, wait_until

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One lab for the module, with a client host; tests add their own hosts."""
    with Lab() as it:
        it.add_host("client")
        yield it


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return multi_io_split(tmp_path_factory.mktemp("split"))


def _hosts(lab: Lab, *names: str, **kwargs: Any) -> list[Any]:
    tag = uuid.uuid4().hex[:4]
    return [lab.add_host(f"{n}-{tag}", **kwargs) for n in names]


def _cluster(workdir: Path) -> tuple[Path, str]:
    config = node_config(workdir)
    name = next(line for line in config.read_text().splitlines() if line.startswith("name"))
    return config, name.split('"')[1]


def _check_answers(lab: Lab, split: dict[str, Any], cluster: str, seed: int, work: Path) -> None:
    """Two inputs through the cluster from the client host, each against its own reference."""
    from tests.model import models
    from tests.reference import KERAS_TOLERANCE, assert_answer, reference_set

    batches = [models.sample_inputs(split["model"], seed=s, batch=1) for s in (seed, seed + 10)]
    refs = reference_set(
        split["graph"], batches, tolerance=KERAS_TOLERANCE, manifest=split["manifest"]
    )
    got = lab_infer(lab.hosts["client"], cluster, batches, work)
    for i, answer in enumerate(got):
        assert_answer(refs, i, answer)
        with pytest.raises(AssertionError):  # the other input's answer is caught as wrong
            assert_answer(refs, 1 - i, answer)


def _stop(nodes: list[LabNode]) -> None:
    for node in nodes:
        node.stop()


@pytest.mark.tf
def test_nodes_on_separate_hosts_agree_show_lab_addresses_and_answer_as_local(
    lab: Lab, split: dict[str, Any], tmp_path: Path
) -> None:
    config, cluster = _cluster(tmp_path)
    hosts = _hosts(lab, "a", "b", "c", profile="wifi")
    nodes = start_lab_nodes(hosts, tmp_path, split["dir"], config)
    try:
        found = lab_wait_agreed(lab.hosts["client"], cluster, {n.name for n in nodes})
        assert len({a["node_id"] for a in found[nodes[0].name]["plan"]["assignments"]}) >= 2
        for node in nodes:
            st = found[node.name]
            # each node's own address on its own host, as the client host sees it
            assert st["address"] == node.address
            assert st["address"].rsplit(":", 1)[0] == node.host.address
            assert is_lab_address(st["address"]) and not st["address"].startswith("127.")
            assert st["node"]["addresses"] == [node.host.address]
        _check_answers(lab, split, cluster, seed=3, work=tmp_path / "in")
    finally:
        _stop(nodes)


@pytest.mark.tf
def test_a_killed_stage_is_replanned_around_and_a_late_node_is_admitted(
    lab: Lab, split: dict[str, Any], tmp_path: Path
) -> None:
    config, cluster = _cluster(tmp_path)
    client = lab.hosts["client"]
    hosts = _hosts(lab, "a", "b", "c", profile="fast-wifi")
    nodes = start_lab_nodes(hosts, tmp_path, split["dir"], config)
    late: list[LabNode] = []
    try:
        found = lab_wait_agreed(client, cluster, {n.name for n in nodes})
        assignments = found[nodes[0].name]["plan"]["assignments"]
        # a node with parts that does not enter requests: a stage in the middle or the end
        first = min(assignments, key=lambda a: a["start"])["node_id"]
        victim = next(n for n in nodes if n.name != first and
                      any(a["node_id"] == n.name for a in assignments))  # fmt: skip
        victim.kill()
        survivors = [n for n in nodes if n is not victim]
        lab_wait_agreed(client, cluster, {n.name for n in survivors})
        _check_answers(lab, split, cluster, seed=5, work=tmp_path / "after-kill")

        (host,) = _hosts(lab, "late", profile="fast-wifi")
        late = start_lab_nodes([host], tmp_path, split["dir"], config)
        lab_wait_agreed(client, cluster, {n.name for n in [*survivors, *late]})
        _check_answers(lab, split, cluster, seed=7, work=tmp_path / "after-join")
    finally:
        _stop(nodes + late)


_BROWSE = """
import asyncio, json, sys
from edgenode.mesh.browse import browse
records = asyncio.run(browse(cluster=sys.argv[1], interfaces=sys.argv[2].split(","), timeout_s=3))
print(json.dumps({r.node_id: sorted(r.addresses) for r in records}))
"""


def _advertised(host: Any, cluster: str) -> dict[str, list[str]]:
    """node id -> the addresses its mDNS records carry, as ``host`` hears them on all of
    its interfaces."""
    ifaces = ",".join(i.address for i in host.interfaces)
    out = host.run([sys.executable, "-c", _BROWSE, cluster, ifaces], capture_output=True,
                   text=True, timeout=60, cwd=Path(__file__).parents[1])  # fmt: skip
    assert out.returncode == 0, out.stderr
    found: dict[str, list[str]] = json.loads(out.stdout)
    return found


@pytest.mark.tf
def test_a_host_with_two_interfaces_advertises_only_the_configured_one(
    lab: Lab, split: dict[str, Any], tmp_path: Path
) -> None:
    """Two nodes on hosts with two interfaces (two networks): one told `--interfaces` its
    first address advertises only that; one left at "all" advertises both (so the check
    can see a second address)."""
    config, cluster = _cluster(tmp_path)
    one, both = _hosts(lab, "one", "both", networks=(0, 1))
    (observer,) = _hosts(lab, "observer", networks=(0, 1))
    model = str(split["dir"])
    nodes = [
        LabNode(one, one.name, tmp_path, "--config", str(config), "--model", model,
                "--interfaces", one.address),
        LabNode(both, both.name, tmp_path, "--config", str(config), "--model", model),
    ]  # fmt: skip
    try:
        for node in nodes:
            node.wait_serving()
        assert [i.address for i in one.interfaces] == [
            f"198.18.0.{one.index}",
            f"198.18.1.{one.index}",
        ]

        def heard() -> dict[str, list[str]] | None:
            found = _advertised(observer, cluster)
            return found if set(found) == {one.name, both.name} else None

        found = wait_until(heard, 60, "both nodes' records")
        assert found[one.name] == [one.address]
        assert found[both.name] == sorted(i.address for i in both.interfaces)
        st = lab_statuses(observer, cluster, "--wait", "3")
        assert st[one.name]["node"]["addresses"] == [one.address]
    finally:
        _stop(nodes)


@pytest.mark.tf
def test_nodes_measure_their_own_links_and_the_slow_one_is_known(
    lab: Lab, split: dict[str, Any], tmp_path: Path
) -> None:
    """Two wifi hosts (30 Mbit/s) and a poor-wifi one (8 Mbit/s): each node times a transfer
    to its peers and announces the fastest, rounded to a power of two; the plan's cost then
    uses it. A fourth node told its link in config announces that, unmeasured."""
    config, cluster = _cluster(tmp_path)
    told = tmp_path / "told.toml"
    told.write_text(config.read_text().replace("[node]", "[node]\nlink_mbps = 50", 1))
    assert "link_mbps = 50" in told.read_text()
    wifi = _hosts(lab, "w1", "w2", profile="wifi")
    poor = _hosts(lab, "p1", profile="poor-wifi")
    (configured,) = _hosts(lab, "t1", profile="wifi")
    nodes = start_lab_nodes([*wifi, *poor], tmp_path, split["dir"], config)
    nodes += start_lab_nodes([configured], tmp_path, split["dir"], told)
    mbit = {n.name: 32 for n in nodes[:2]} | {nodes[2].name: 8, nodes[3].name: 50}

    seen: dict[str, float] = {}

    def links() -> bool:
        found = lab_statuses(lab.hosts["client"], cluster)
        seen.clear()
        seen.update({n: st["node"]["link_bytes_per_s"] * 8 / 1e6 for n, st in found.items()})
        return seen == mbit

    try:
        wait_until(links, 90, f"links {mbit} Mbit/s in every node's record")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last seen: {seen}") from None
    finally:
        _stop(nodes)


def test_status_browses_all_interfaces_by_default(lab: Lab) -> None:
    """No --interfaces: zeroconf is given InterfaceChoice.All (the string "all" once made
    `status` and `infer` stop with a TypeError), and nothing found is one line, exit 1."""
    out = lab_cli(lab.hosts["client"], "status", "--json", "--wait", "0.5", "--cluster", "none")
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines() == [
        "edgenode: error: no edgenode of cluster 'none' found on the network (try --peer HOST:PORT)"
    ], out.stderr


def test_poor_wifi_is_much_slower_than_ethernet(lab: Lab) -> None:
    """A loose bound (the benchmark prints the measured rates, benchmarks/edgelab.py)."""
    fast = _hosts(lab, "e1", "e2", profile="ethernet")
    slow = _hosts(lab, "p1", "p2", profile="poor-wifi")
    # IPv6 link-local comes with the links (mDNS may answer over it)
    assert wait_until(lambda: "fe80::" in fast[0].ip("-6", "addr", "show", "dev", "eth0"), 10,
                      "an IPv6 link-local address")  # fmt: skip
    ethernet = measure_rate(*fast, seconds=0.5)
    poor = measure_rate(*slow, seconds=0.5)
    assert ethernet > 3 * poor, (ethernet, poor)
    assert poor < 1.5 * 8e6, poor


def test_a_link_can_be_slower_one_way(lab: Lab) -> None:
    """``shape(up, down=...)``: an 8 Mbit/s upload with a gigabit download."""
    uplink, other = _hosts(lab, "u1", "o1", profile="ethernet")
    uplink.shape("poor-wifi", down="ethernet")
    sent = measure_rate(uplink, other, seconds=0.5)
    received = measure_rate(other, uplink, seconds=0.5)
    assert sent < 1.5 * 8e6, sent
    assert received > 10 * sent, (sent, received)


_KILLED_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from harness.lab import Lab
lab = Lab().__enter__()
host = lab.add_host("h")
sleeper = host.popen(["sleep", "1000"])
print(" ".join(map(str, [*lab.holder_pids, sleeper.pid])), flush=True)
time.sleep(1000)
"""


def _gone(pids: list[int], deadline_s: float = 10.0) -> list[int]:
    """The pids still alive (not a zombie) after up to ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


def test_the_lab_leaves_nothing_behind(tmp_path: Path) -> None:
    """After the context exits, and after the process that made a lab is SIGKILLed, the
    holders and every process run on a host are gone (and with them the namespaces)."""
    links_before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    with Lab() as it:
        host = it.add_host("h")
        sleeper = host.popen(["sleep", "1000"])
        pids = [*it.holder_pids, sleeper.pid]
        assert all(Path(f"/proc/{p}").exists() for p in pids)
        assert os.readlink(f"/proc/{host.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert _gone(pids, deadline_s=0) == []

    killed = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(Path(__file__).parents[1] / "benchmarks")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert killed.stdout is not None
    pids = [int(p) for p in killed.stdout.readline().split()]
    killed.kill()
    killed.wait()
    killed.stdout.close()
    assert len(pids) == 3
    assert _gone(pids) == []
    links_after = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert links_after.count("\n") == links_before.count("\n")
