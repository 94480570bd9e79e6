"""`edgenode status` (issue 17, items 1 and 5): what its table and JSON say, `--wait-ready N`,
and the README's "A cluster on one machine" block, run as written."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgenode._cli_status import TABLE_WIDTH, readiness, status_table
from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.planning import ClusterPlan
from edgenode.planning.cluster import Assignment
from edgenode.runtime.control import NodeControl
from edgenode.runtime.negotiation import PlanState
from edgenode.transport import NodeReport, Security
from edgenode.transport._control import _status_reply
from edgenode.transport._reports import message_of, report_of
from tests.nodes import (
    NodeProcess,
    cli,
    infer_checked,
    multi_io_split,
    node_config,
    running_cluster,
    statuses,
    wait_until,
)
from tests.runtime.fakes import chain_manifest, peer_info

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = chain_manifest(8)

# The README's "A cluster on one machine", as a user pastes it at the repository root.
README_BLOCK = """\
.venv/bin/edgenode split --model MobileNetV3Large --parts 8 --out parts
.venv/bin/edgenode keygen --out keys          # keys/cluster.pem: the cluster credential
mkdir -p logs; pids=()
for n in a b c; do
  .venv/bin/edgenode run --name $n --listen 127.0.0.1:0 --model parts --interfaces 127.0.0.1 --key keys/cluster.pem > logs/$n.log 2>&1 &
  pids+=($!)
done
.venv/bin/edgenode status --wait-ready 3 --interfaces 127.0.0.1 --key keys/cluster.pem
.venv/bin/edgenode infer edgenode/data/images/ --interfaces 127.0.0.1 --key keys/cluster.pem
kill "${pids[@]}"; wait "${pids[@]}"          # the nodes leave the cluster and exit
"""  # noqa: E501


# -- statuses as a node encodes them ---------------------------------------------------------


def plan(*stages: tuple[str, int, int] | tuple[str, int, int, int]) -> ClusterPlan:
    """A plan of ``(node, start, stop[, replica])`` stages over the 8-part chain."""
    return ClusterPlan(
        manifest_digest="m",
        members=tuple(sorted({s[0] for s in stages})),
        assignments=tuple(
            Assignment(node_id=s[0], start=s[1], stop=s[2], replica=s[3] if len(s) > 3 else 0)
            for s in stages
        ),
        idle=(),
        bottleneck_s=1.0,
        latency_s=1.0,
    )


def status(
    node: str,
    agreed: ClusterPlan | None,
    loaded: tuple[int, ...] | None = None,
    *,
    computed: ClusterPlan | None = None,
    served: int = 0,
    runs: tuple[tuple[int, float], ...] = (),
    address: str | None = None,
) -> NodeReport:
    """What `edgenode status` receives from ``node``: its NodeStatus, encoded and decoded as
    on the wire. ``loaded`` defaults to the parts ``agreed`` gives it."""
    me = peer_info(node, 4000 + ord(node[-1]), MANIFEST)
    if loaded is None:
        loaded = tuple(agreed.parts_of(node)) if agreed else ()
    computed = computed or agreed
    state = PlanState(
        computed=computed,
        agreed=agreed,
        members=computed.members if computed else (node,),
        version=1,
    )
    control = NodeControl(
        local=lambda: me,
        address=lambda: address or f"127.0.0.1:{me.port}",
        plan=lambda: state,
        loaded=lambda: loaded,
        served=lambda: served,
        peers=lambda: (),
        manifest=MANIFEST,
        directory=Path("."),
        clock=lambda: 725.0,
    )
    for part, seconds in runs:
        control.record_stage(part, seconds)
    control.started_s = 0.0
    wire = _status_reply(control.status()).SerializeToString()
    return report_of(pb.NodeStatus.FromString(wire))


THREE = plan(("a", 0, 3), ("b", 3, 5), ("c", 5, 8))
TWO = plan(("a", 0, 4), ("b", 4, 8))


@pytest.mark.parametrize(
    ("found", "want", "summary"),
    [
        ([status(n, THREE) for n in "abc"], 3, "3 of 3 nodes ready"),
        ([status(n, THREE) for n in "abc"], 2, "3 of 3 nodes ready"),
        ([status("a", THREE), status("b", THREE), status("c", THREE, (5,))], 3,
         "2 of 3 nodes ready: c is loading parts 6-7"),
        ([status("a", THREE), status("b", THREE), status("c", THREE, (5, 6))], 3,
         "2 of 3 nodes ready: c is loading part 7"),
        ([status("a", THREE), status("b", THREE)], 3, "2 of 3 nodes ready: c does not answer"),
        ([status("a", THREE), status("b", THREE, tuple(range(8))), status("c", THREE)], 3,
         "2 of 3 nodes ready: b is unloading parts 0-2, 5-7 of an old plan"),
        ([status("a", THREE, computed=TWO), status("b", THREE), status("c", THREE)], 3,
         "2 of 3 nodes ready: a is agreeing on a new plan"),
        ([status("a", TWO), status("b", TWO)], 3,
         "2 of 3 nodes ready: the agreed plan has 2 nodes: a, b"),
        ([status("a", TWO), status("b", TWO), status("c", None)], 3,
         "2 of 3 nodes ready: c has no agreed plan yet"),
        ([status("a", TWO), status("b", TWO), status("c", THREE)], 3,
         "2 of 3 nodes ready: c serves another plan (" + THREE.digest[:8] + ")"),
        # a node outside the plan does not hold the wait once the plan's nodes are ready
        ([*(status(n, THREE) for n in "abc"), status("d", plan(("d", 0, 8)))], 3,
         "3 of 3 nodes ready"),
        ([], 3, "0 of 3 nodes ready: no edgenode found on the network"),
    ],
)  # fmt: skip
def test_readiness_names_what_is_missing(found, want, summary) -> None:
    verdict = readiness(found, want, unreachable="no edgenode found on the network")
    assert verdict.summary() == summary
    assert verdict.done == (":" not in summary)


def test_readiness_is_the_condition_of_agreed_cluster() -> None:
    # A deliberately wrong cluster: every node says "ready", but b and c each serve a plan
    # of their own (both plans agreed and loaded): not one agreed plan, so not ready.
    split = [status("a", TWO), status("b", TWO), status("c", plan(("c", 0, 8)))]
    assert [s.state for s in split] == ["ready"] * 3
    assert not readiness(split, 3).done
    assert readiness(split, 2).done  # two of them do serve one plan


def _cells(table: str) -> list[dict[str, str]]:
    """The rows of a table as {header: cell} (cells split on two or more spaces)."""
    header, _, *lines = table.splitlines()
    names = re.split(r"\s{2,}", header.strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert all(len(row) == len(names) for row in rows), table
    return [dict(zip(names, row, strict=True)) for row in rows]


def test_table_shows_the_plan_apart_from_what_is_loaded() -> None:
    # b still holds parts of an old plan that gave it 0-6; c is still loading
    found = [
        status("a", THREE, runs=((0, 0.010), (1, 0.020), (2, 0.030), (6, 0.5))),
        status("b", THREE, (0, 1, 2, 3, 4, 5, 6)),
        status("c", THREE, (5,)),
    ]
    a, b, c = _cells(status_table(found, wide=True))
    digest = THREE.digest[:12]
    assert a == {
        "node": "a", "address": "127.0.0.1:4097", "parts": "0-2", "plan": digest,
        "agreed": "yes", "state": "ready", "requests here": "0", "part runs": "4",
        "run p50 ms": "60.00",  # the sum of the medians of its parts, not of part 6 (old)
        "up": "12m05s", "GFLOP/s": "1", "MiB predicted/budget": "-/1024", "failed here": "0",
        "MiB resident/peak": "-/-", "MiB baseline": "-", "link Mbit/s": "-",
        "part run ms p50/p90": "0: 10.00/10.00, 1: 20.00/20.00, 2: 30.00/30.00, 6: 500.00/500.00",
    }  # fmt: skip
    assert (b["parts"], b["state"]) == ("3-4", "unloading 0-2, 5-6")
    assert (c["parts"], c["state"]) == ("5-7", "loading 6-7")


def test_table_shows_memory_predicted_against_budget_and_wide_what_is_resident() -> None:
    mib = 2**20
    a = status("a", THREE)
    a = dataclasses.replace(
        a,
        node=dataclasses.replace(
            a.node, capacity=dataclasses.replace(a.node.capacity, baseline_bytes=80 * mib)
        ),
        resident_bytes=300 * mib,
        peak_bytes=351 * mib,
        predicted_bytes=320 * mib,
    )
    # what GetStatus carries, through the wire and back
    assert report_of(pb.NodeStatus.FromString(message_of(a).SerializeToString())) == a
    [cells] = _cells(status_table([a], wide=True))
    assert cells["MiB predicted/budget"] == "320/1024"
    assert (cells["MiB resident/peak"], cells["MiB baseline"]) == ("300/351", "80")
    assert a.to_json()["predicted_bytes"] == 320 * mib


def test_wide_table_shows_each_nodes_own_link() -> None:
    """Measured or configured (node.link_mbps); "-" when the node plans with the cluster's."""
    a = status("a", THREE)
    slow = dataclasses.replace(a.node.capacity, link_bytes_per_s=32e6 / 8)
    b = dataclasses.replace(
        status("b", THREE), node=dataclasses.replace(a.node, node_id="b", capacity=slow)
    )
    cells = _cells(status_table([a, b], wide=True))
    assert [c["link Mbit/s"] for c in cells] == ["-", "32"]
    assert b.to_json()["node"]["link_bytes_per_s"] == 4e6


def test_table_fits_100_columns_and_wide_shows_every_column() -> None:
    # five Pis on a LAN, two pipelines, one node loading, every part run
    big = plan(("raspberrypi-01", 0, 3), ("raspberrypi-02", 3, 5), ("raspberrypi-03", 5, 8),
               ("raspberrypi-04", 0, 4, 1), ("raspberrypi-05", 4, 8, 1))  # fmt: skip
    runs = tuple((p, 0.1234) for p in range(8)) * 40

    def node(i: int) -> dict[str, Any]:
        return status(f"raspberrypi-0{i}", big, address=f"192.168.100.10{i}:50051", runs=runs,
                      served=123456, loaded=(0,) if i == 4 else None)  # fmt: skip

    found = [node(i) for i in range(1, 6)]
    table = status_table(found)
    assert max(len(line) for line in table.splitlines()) <= TABLE_WIDTH
    # the columns that fit, the address and speed only in --wide here
    fourth = _cells(table)[3]
    assert fourth == {
        "node": "raspberrypi-04", "parts": "r1:0-3", "plan": big.digest[:8], "agreed": "yes",
        "state": "loading 1-3", "requests here": "123456", "part runs": "320",
        "run p50 ms": "493.60", "up": "12m05s",
    }  # fmt: skip
    wide = status_table(found, wide=True)
    assert max(len(line) for line in wide.splitlines()) > TABLE_WIDTH
    assert _cells(wide)[3]["address"] == "192.168.100.104:50051"
    assert _cells(wide)[3]["GFLOP/s"] == "1"
    # three nodes on one machine: the address and uptime fit, the speed does not
    small = status_table([status(n, THREE) for n in "abc"])
    assert list(_cells(small)[0]) == ["node", "address", "parts", "plan", "agreed", "state",
        "requests here", "part runs", "run p50 ms", "up"]  # fmt: skip
    assert max(len(line) for line in small.splitlines()) <= TABLE_WIDTH


def test_json_keeps_64_bit_integers_as_numbers() -> None:
    data = status("a", THREE, served=7, runs=((0, 0.01),) * 3).to_json()
    assert data["requests_served"] == 7 and data["part_runs"] == 3
    assert data["stages"][0]["count"] == 3
    assert data["node"]["incarnation"] == 4097 and data["node"]["memory_bytes"] == 2**30
    text = json.dumps(data)
    assert '"requests_served": 7' in text and '"count": 3' in text


# -- real nodes, the real command --------------------------------------------------------------


def _table(stdout: str) -> dict[str, list[str]]:
    """The rows of the status table in ``stdout`` by node id (cells split on two or more
    spaces); what follows the table (an infer report) ends it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("node "))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < 6 or not re.fullmatch(r"\S+:\d+", cells[1]):
            break
        rows[cells[0]] = cells
    return rows


# Before the first test of cluster3 (a module fixture: its nodes a, b, c live until the module
# ends): the README's nodes have the same names, so their mDNS instance names would collide.
@pytest.mark.tf
@pytest.mark.slow
def test_readme_cluster_block_runs_as_written(tmp_path: Path) -> None:
    # The repository as the block sees it: its venv and sample images, nothing else.
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "edgenode" / "data").mkdir(parents=True)
    (tmp_path / "edgenode" / "data" / "images").symlink_to(ROOT / "edgenode" / "data" / "images")
    # as in a user's shell: none of the test suite's quieting of TensorFlow and gRPC
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGENODE_KEY", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}  # fmt: skip
    try:
        out = subprocess.run(
            ["bash", "-e", "-c", README_BLOCK],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        left = _nodes_in(tmp_path)
    finally:
        for pid in _nodes_in(tmp_path):  # a failed step leaves the nodes running: stop them
            os.kill(pid, signal.SIGKILL)
    logs = {p.stem: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{logs}"
    assert sorted(logs) == ["a", "b", "c"]
    assert left == []  # stopped, and reaped by `wait`
    for log in logs.values():  # each node's log went to its file, and ended cleanly
        assert "serving on" in log and "stopped" in log, log
    assert " INFO " not in out.stdout + out.stderr  # no node log line in the terminal
    rows = _table(out.stdout)
    assert set(rows) == {"a", "b", "c"}
    assert all(row[4:6] == ["yes", "ready"] for row in rows.values()), out.stdout
    for image in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        assert re.search(rf"^edgenode/data/images/{image}\s", out.stdout, re.M), out.stdout
    assert re.search(r"^edgenode: \d of 3 nodes ready", out.stderr, re.M), out.stderr


@pytest.fixture(scope="module")
def cluster3(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[NodeProcess], dict[str, Any]]]:
    """Three nodes serving the multi_io model cut in 4 parts, agreed and loaded."""
    split = multi_io_split(tmp_path_factory.mktemp("split"))
    with running_cluster(split["dir"], tmp_path_factory.mktemp("nodes")) as (nodes, _):
        yield nodes, split


@pytest.mark.tf
@pytest.mark.slow
def test_status_counts_requests_entered_here_apart_from_part_runs(cluster3) -> None:
    nodes, split = cluster3
    a = nodes[0]
    infer_checked(a.address, Security.insecure(), split, seed=1, failover=False)  # 2 requests
    out = cli("status", "--peer", a.address, "--json")
    assert out.returncode == 0, out.stderr
    found = {s["node"]["node_id"]: s for s in json.loads(out.stdout)}
    assert set(found) == {"a", "b", "c"}
    assert isinstance(found["a"]["requests_served"], int)  # not "2"
    assert [found[n]["requests_served"] for n in "abc"] == [2, 0, 0]
    parts = len(split["manifest"].parts)
    assert sum(s["part_runs"] for s in found.values()) == 2 * parts  # each request, each part
    # another node ran parts of requests it did not receive (the old column showed 0 there)
    assert any(found[n]["part_runs"] > 0 for n in "bc")
    table = cli("status", "--peer", a.address)
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= TABLE_WIDTH
    rows = _table(table.stdout)
    for node_id, st in found.items():
        row = rows[node_id]
        assert row[4:8] == ["yes", "ready", str(st["requests_served"]), str(st["part_runs"])]


@pytest.mark.tf
@pytest.mark.slow
def test_wait_ready_says_what_is_missing_at_the_timeout(cluster3) -> None:
    nodes, _ = cluster3
    out = cli("status", "--wait-ready", "4", "--timeout", "2", "--peer", nodes[0].address)
    assert out.returncode == 1 and out.stdout == ""
    *progress, error = out.stderr.strip().splitlines()
    assert error == (
        "edgenode: error: 3 of 4 nodes ready after 2 s: the agreed plan has 3 nodes: a, b, c"
    )
    assert progress[0] == "edgenode: waiting up to 2 s for 4 ready nodes"
    assert "edgenode: 3 of 4 nodes ready: the agreed plan has 3 nodes: a, b, c" in progress
    ready = cli("status", "--wait-ready", "3", "--peer", nodes[1].address)
    assert ready.returncode == 0, ready.stderr
    assert set(_table(ready.stdout)) == {"a", "b", "c"}


@pytest.mark.tf
@pytest.mark.slow
def test_a_node_that_cannot_load_its_parts_is_not_ready(tmp_path: Path) -> None:
    # Only the manifest, and no peer to fetch the part files from: the plan gives the node
    # every part, and it has loaded none (the old "parts" column said "idle").
    split = multi_io_split(tmp_path / "split")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(split["dir"] / "manifest.json", bare)
    config = node_config(tmp_path)
    node = NodeProcess("a", tmp_path, "--config", str(config), "--listen", "127.0.0.1:0",
                       "--model", str(bare), "--interfaces", "127.0.0.1",
                       "--state-dir", str(tmp_path / "state"))  # fmt: skip
    try:
        node.wait_serving()
        wait_until(
            lambda: (
                "no peer could send" in node.log()
                and statuses([node.address]).get("a", {}).get("plan", {}).get("agreed_digest")
            ),
            60,
            "a plan that node a cannot load",
        )
        table = cli("status", "--peer", node.address)
        assert table.returncode == 0, table.stderr
        row = _table(table.stdout)["a"]
        assert (row[2], row[4], row[5]) == ("0-3", "yes", "loading 0-3")
        out = cli("status", "--wait-ready", "1", "--timeout", "1", "--peer", node.address)
        assert out.returncode == 1
        assert out.stderr.strip().splitlines()[-1] == (
            "edgenode: error: 0 of 1 node ready after 1 s: a is loading parts 0-3"
        )
    finally:
        node.stop()


def _nodes_in(directory: Path) -> list[int]:
    """The `edgenode run` processes running in ``directory`` (none once the block stopped
    them: `wait` reaped them)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.joinpath("cwd").resolve() != directory.resolve():
                continue
            command = proc.joinpath("cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"run" in command and any(c.endswith(b"edgenode") for c in command):
            found.append(int(proc.name))
    return found


def test_readme_shows_the_tested_block() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### A cluster on one machine", 1)[-1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    if block is None or "--wait-ready" not in block.group(1):
        pytest.skip("README.md does not show the --wait-ready block yet")
    assert block.group(1) == README_BLOCK


if __name__ == "__main__":  # print the block, for pasting into README.md
    sys.stdout.write(README_BLOCK)
