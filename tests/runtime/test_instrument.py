"""The request path observed: requests by outcome, hops on real gRPC by peer, refusals by
reason, stages, and plan changes of a real negotiation."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable, Mapping

import grpc
import numpy as np
import pytest

from edgenode.errors import (
    EdgenodeError,
    ModelError,
    Overloaded,
    PeerUnavailable,
    PermissionDenied,
    RequestTimeout,
)
from edgenode.runtime.instrument import (
    ObservedRequests,
    TimedTransport,
    stage_observer,
    watch_plans,
)
from edgenode.runtime.metrics import NodeMetrics
from edgenode.security import MEMBER_NAME, issue_member, new_cluster
from edgenode.transport import (
    GrpcPeer,
    GrpcTransport,
    RequestId,
    Security,
    Tensor,
    TransportConfig,
)
from tests.runtime.test_negotiation import Cluster
from tests.transport.conftest import receive

DEADLINE_S = 10.0


class ScriptedRequests:
    """An InferenceService that answers each request from a script: outputs or an error."""

    input_names = frozenset({"x"})

    def __init__(self, *script: dict[str, np.ndarray] | EdgenodeError) -> None:
        self.script = list(script)
        self.busy = False

    def check_admission(self) -> None:
        if self.busy:
            raise Overloaded("busy")

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        outcome = self.script.pop(0)
        if isinstance(outcome, EdgenodeError):
            raise outcome
        return outcome


def _value(metrics: NodeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _eventually(predicate: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval, not a wait for an event


async def test_requests_are_timed_and_counted_by_outcome() -> None:
    answer = {"y": np.ones(2, np.float32)}
    router = ScriptedRequests(
        answer, ModelError("bad shape"), RequestTimeout("late"), Overloaded("queue"), answer
    )
    ticks = iter(range(100))
    metrics = NodeMetrics()
    observed = ObservedRequests(router, metrics, clock=lambda: next(ticks) * 0.25)
    assert observed.input_names == {"x"}
    outcomes = []
    for _ in range(5):
        try:
            observed.check_admission()
            await observed.infer({"x": np.zeros(2, np.float32)})
            outcomes.append("ok")
        except EdgenodeError as exc:
            outcomes.append(type(exc).__name__)
    router.busy = True
    with pytest.raises(Overloaded):
        observed.check_admission()  # refused before its inputs are read: no duration
    assert outcomes == ["ok", "ModelError", "RequestTimeout", "Overloaded", "ok"]
    duration = "edgenode_request_duration_seconds"
    assert _value(metrics, f"{duration}_count", outcome="ok") == 2
    assert _value(metrics, f"{duration}_sum", outcome="ok") == 0.5  # one tick each
    for code in ("INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"):
        assert _value(metrics, f"{duration}_count", outcome=code) == 1
    codes = ("INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "OK")
    failed = {c: _value(metrics, "edgenode_requests_failed_total", code=c) for c in codes}
    assert failed == {
        "INVALID_ARGUMENT": 1, "DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 2, "OK": 0,
    }  # fmt: skip
    assert _value(metrics, "edgenode_refused_calls_total", reason="resource_exhausted") == 2


def _tensor(n: int, size: int = 4) -> Tensor:
    return Tensor(RequestId(f"r{n}"), "x", np.arange(size, dtype=np.float32))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_hops_are_timed_by_peer_over_grpc() -> None:
    metrics = NodeMetrics()
    config = TransportConfig(connect_timeout_s=0.5)
    async with (
        GrpcTransport("127.0.0.1", 0, config=config) as a,
        GrpcTransport("127.0.0.1", 0, config=config) as b,
    ):
        members = {b.address: "node-b"}
        timed = TimedTransport(a, metrics, members.get)
        assert timed.inbox is a.inbox and timed.address == a.address
        for n in range(3):
            await timed.peer(b.address).send([_tensor(n)])
        assert (await timed.peer(b.address).flush()).tensors == 3
        assert [t.request_id for t in await receive(b.inbox, 3)] == ["r0", "r1", "r2"]
        nobody = f"127.0.0.1:{_closed_port()}"  # not a member: labelled by its address
        with pytest.raises(PeerUnavailable):
            await timed.peer(nobody).send([_tensor(9)])
    hop = "edgenode_hop_send_seconds"
    assert _value(metrics, f"{hop}_count", peer="node-b") == 3
    assert 0 < _value(metrics, f"{hop}_sum", peer="node-b") < DEADLINE_S
    assert _value(metrics, f"{hop}_count", peer=nobody) == 1  # a failed send is a hop too


async def test_refused_calls_are_counted_by_reason() -> None:
    ca, member = new_cluster("home")
    _, outsider = new_cluster("home")
    trusting_us = dataclasses.replace(outsider, ca_pem=member.ca_pem)  # gets past TLS
    refused: list[str] = []
    config = TransportConfig(security=Security(member), max_tensor_bytes=64)
    async with GrpcTransport("127.0.0.1", 0, config=config, on_refused=refused.append) as node:
        other = TransportConfig(security=Security(issue_member(ca, member="pi-2")))
        async with GrpcPeer(node.address, config=other) as peer:
            await peer.send([_tensor(1)])  # 16 bytes: served
            assert (await peer.flush()).tensors == 1
            with pytest.raises(EdgenodeError):
                await peer.send([_tensor(2, size=100)])  # 400 bytes: over the limit
                await peer.flush()
        stranger = TransportConfig(security=Security(trusting_us), connect_timeout_s=0.5)
        with pytest.raises(PermissionDenied):
            async with GrpcPeer(node.address, config=stranger) as peer:
                await peer.send([_tensor(3)])
                await peer.flush()
        tls = grpc.ssl_channel_credentials(root_certificates=member.ca_pem)
        options = (("grpc.ssl_target_name_override", MEMBER_NAME),)
        async with grpc.aio.secure_channel(node.address, tls, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError):  # no token at all
                await channel.stream_unary("/edgenode.v1.EdgeNode/Stream")(iter([b""]))
    assert refused == ["resource_exhausted", "permission_denied", "unauthenticated"]


def test_a_stage_is_observed_with_each_of_its_parts() -> None:
    metrics = NodeMetrics()
    observe = stage_observer(metrics)
    observe(range(2, 5), (0.1, 0.2, 0.3))
    observe(range(2, 5), (0.1, 0.2, 0.5))
    stage = "edgenode_stage_run_seconds"
    assert _value(metrics, f"{stage}_count", parts="2-4") == 2
    assert _value(metrics, f"{stage}_sum", parts="2-4") == pytest.approx(1.4)
    assert _value(metrics, "edgenode_part_run_seconds_sum", part="4") == pytest.approx(0.8)
    assert _value(metrics, "edgenode_part_run_seconds_count", part="2") == 2


async def test_plan_changes_and_the_time_to_agree_after_a_join() -> None:
    cluster = Cluster()
    metrics = NodeMetrics()
    watcher = None
    try:
        a = await cluster.start("a", 1)
        watcher = asyncio.create_task(watch_plans(a, metrics))
        changes = "edgenode_plan_changes_total"
        await _eventually(lambda: _value(metrics, changes) == 1, "the first plan")
        await cluster.start("b", 2)
        (state, _) = await cluster.agreed({"a", "b"})
        await _eventually(lambda: _value(metrics, changes) == 2, "the plan with b")
        agreed = a.state.agreed
        assert agreed is not None and agreed is state.agreed
        digest = metrics.registry.get_sample_value("edgenode_plan_info", {"digest": agreed.digest})
        assert digest == 1.0
        convergence = "edgenode_plan_convergence_seconds"
        assert _value(metrics, f"{convergence}_count") == 2  # the start, then b's join
        assert 0 < _value(metrics, f"{convergence}_sum") < DEADLINE_S
    finally:
        if watcher is not None:
            watcher.cancel()
        for node_id in list(cluster.tasks):
            await cluster.stop(node_id)
