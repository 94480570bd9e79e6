"""ClusterClient: entering a cluster, typed status reports, the manifest, requests.

Two nodes' control planes run on real gRPC servers on 127.0.0.1 (runtime's NodeControl,
answering GetStatus and FetchFile from a real manifest file); the request path behind them
is a complete in-memory stand-in (y = k * x, k differing per node), since these tests are
about the client above it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from edgenode.client.cluster import ClusterClient
from edgenode.errors import PeerUnavailable, UsageError
from edgenode.mesh import PeerInfo
from edgenode.model.manifest import MANIFEST_NAME
from edgenode.planning import ClusterPlan
from edgenode.planning.cluster import Assignment
from edgenode.runtime.control import NodeControl
from edgenode.runtime.negotiation import PlanState
from edgenode.transport import GrpcTransport, NodeReport
from edgenode.transport._control import _status_reply, control_handlers
from edgenode.transport._reports import message_of, report_of
from tests.runtime.fakes import chain_manifest, peer_info

MANIFEST = chain_manifest(4)
PLAN = ClusterPlan(
    manifest_digest=MANIFEST.digest,
    members=("a", "b"),
    assignments=(
        Assignment(node_id="a", start=0, stop=2),
        Assignment(node_id="b", start=2, stop=4),
    ),
    idle=(),
    bottleneck_s=0.1,
    latency_s=0.2,
)


@dataclass
class Scale:
    """A node's request path: y = k * x."""

    k: float
    input_names: frozenset[str] = frozenset({"input"})
    served: int = 0

    def check_admission(self) -> None:
        pass

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.served += 1
        return {"t3": self.k * inputs["input"]}


@dataclass
class Node:
    node_id: str
    path: Scale
    directory: Path
    peers: list[PeerInfo] = field(default_factory=list)
    port: int = 0
    transport: GrpcTransport | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self) -> PeerInfo:
        return peer_info(self.node_id, self.port, MANIFEST)

    def control(self) -> NodeControl:
        state = PlanState(computed=PLAN, agreed=PLAN, members=PLAN.members, version=1)
        return NodeControl(
            local=self.record,
            address=lambda: self.address,
            plan=lambda: state,
            loaded=lambda: tuple(PLAN.parts_of(self.node_id)),
            served=lambda: self.path.served,
            peers=lambda: tuple(self.peers),
            manifest=MANIFEST,
            directory=self.directory,
        )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[dict[str, Node]]:
    """Nodes a (y = 2x) and b (y = 3x), each counting the other as a peer."""
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(MANIFEST.to_json()))
    nodes = {n: Node(n, Scale(k), tmp_path) for n, k in (("a", 2.0), ("b", 3.0))}
    try:
        for node in nodes.values():
            control = node.control()
            handlers = control_handlers(lambda c=control: c, lambda n=node: n.path)
            node.transport = GrpcTransport("127.0.0.1", 0, handlers=handlers)
            await node.transport.__aenter__()
            node.port = int(node.transport.address.rsplit(":", 1)[1])
        nodes["a"].peers.append(nodes["b"].record())
        nodes["b"].peers.append(nodes["a"].record())
        yield nodes
    finally:
        for node in nodes.values():
            if node.transport is not None:
                await node.transport.aclose()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def x(value: float) -> dict[str, np.ndarray]:
    return {"input": np.full((1, 256), value, np.float32)}


async def test_connect_enters_at_the_first_node_that_answers(cluster) -> None:
    a = cluster["a"]
    async with ClusterClient() as client:
        entry = await client.connect({closed_port(): None, a.address: None})
        assert isinstance(entry, NodeReport)
        assert (client.entry_address, entry.node_id, entry.state) == (a.address, "a", "ready")
        assert entry.assigned == {0, 1} and entry.plan.agreed
        assert (entry.plan.bottleneck_s, entry.plan.latency_s) == (0.1, 0.2)  # the prediction
        assert [p.node_id for p in entry.peers] == ["b"]
        manifest = await client.manifest()
        assert manifest.identity == MANIFEST.identity
        # requests enter at a: its answer, for each input (not b's, not a constant)
        for value in (1.0, -4.5):
            out = await client.infer(x(value), timeout_s=10)
            np.testing.assert_array_equal(out["t3"], 2.0 * x(value)["input"])


async def test_a_request_fails_over_to_a_peer_the_entry_node_counts(cluster) -> None:
    """Entered at a (found alone): when a goes away, requests go to b, which a's status
    listed as its peer; and a request may name its origin."""
    a, b = cluster["a"], cluster["b"]
    async with ClusterClient() as client:
        await client.connect({a.address: None})
        out = await client.infer(x(1.0), timeout_s=10, origin=b.address)
        np.testing.assert_array_equal(out["t3"], 3.0 * x(1.0)["input"])
        assert a.transport is not None
        await a.transport.aclose()
        out = await client.infer(x(5.0), timeout_s=10)
        np.testing.assert_array_equal(out["t3"], 3.0 * x(5.0)["input"])
        assert (a.path.served, b.path.served) == (0, 2)


async def test_nothing_answers_is_one_error_naming_every_address() -> None:
    dead = [closed_port(), closed_port()]
    async with ClusterClient() as client:
        with pytest.raises(PeerUnavailable) as caught:
            await client.connect(dict.fromkeys(dead))
        for address in dead:
            assert address in str(caught.value)
        with pytest.raises(UsageError, match="not connected"):
            client.entry  # noqa: B018
        with pytest.raises(UsageError, match="not connected"):
            await client.infer(x(1.0), timeout_s=1)


async def test_crawl_finds_the_peers_of_the_seeds(cluster) -> None:
    async with ClusterClient() as client:
        reports, errors = await client.crawl([cluster["b"].address, closed_port()])
    assert [r.node_id for r in reports] == ["a", "b"]
    assert [r.address for r in reports] == [cluster["a"].address, cluster["b"].address]
    assert len(errors) == 1 and "127.0.0.1" in errors[0]


def test_a_report_is_the_wire_message_typed_and_prints_as_it() -> None:
    """report_of and message_of are inverses, and to_json is the message's own JSON (proto
    names, 64-bit counts as numbers): what `status --json` printed before reports."""
    node = Node("a", Scale(2.0), Path("."), port=4001)
    control = node.control()
    for part, seconds in ((0, 0.01), (1, 0.02), (0, 0.03)):
        control.record_stage(part, seconds)
    message = _status_reply(control.status())
    report = report_of(message)
    assert message_of(report) == message
    assert report.stages[0].count == 2 and report.node.incarnation == 4001
    expected = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data = report.to_json()
    assert data["node"]["incarnation"] == 4001 == int(expected["node"]["incarnation"])
    assert data["stages"][0]["count"] == 2 and expected["stages"][0]["count"] == "2"
    assert set(data) == set(expected) and list(data)[:3] == ["node", "address", "plan"]
    assert data["plan"] == expected["plan"]
