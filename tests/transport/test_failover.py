"""Clients fail over: Failover over an in-memory cluster, and over real gRPC nodes.

The in-memory ``FakeNodes`` is a complete InferNodes: each node has a behaviour per request
(answer, go away mid-request, refuse with a code), a view of the cluster, and counts of
the requests and status calls it got. The gRPC tests stop a real server under a request.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np
import pytest

from edgenode.errors import InferenceFailed, Overloaded, PeerUnavailable
from edgenode.transport import ControlClient, GrpcTransport
from edgenode.transport._failover import (
    DOWN_HOLD_S,
    REFRESH_GAP_S,
    Failover,
    View,
    next_step,
)
from edgenode.transport._session import Refusal
from tests.transport.test_session import TwiceX, handlers_of, request

Code = grpc.StatusCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNodes:
    """Nodes by address: ``behaviour[address]`` is "ok", "gone" (the call ends under the
    request), "hang" (never answers) or a status code the node answers the request with."""

    def __init__(self, members: Mapping[str, str], identity: str = "c/model") -> None:
        self.members = dict(members)  # node id -> address
        self.identity = identity
        self.behaviour: dict[str, object] = {a: "ok" for a in members.values()}
        self.requests: dict[str, int] = {}
        self.views: list[str] = []
        self.view_of: dict[str, View] = {}  # overrides: a node with another view

    async def infer_once(self, address: str, inputs: Mapping[str, np.ndarray]):
        self.requests[address] = self.requests.get(address, 0) + 1
        await asyncio.sleep(0)  # a real hop yields to the loop
        what = self.behaviour.get(address, "unreachable")
        if what == "ok":
            return {"y": inputs["x"] * 2}
        if isinstance(what, str) and what.startswith("gone"):
            return Refusal(address, Code.UNAVAILABLE, "Stream removed", answered=False)
        if what == "unreachable":
            return Refusal(address, Code.UNAVAILABLE, "not reachable", answered=False, sent=False)
        if what == "hang":
            await asyncio.Event().wait()
        assert isinstance(what, grpc.StatusCode)
        return Refusal(address, what, f"{what.name.lower()} at {address}", answered=True)

    async def view(self, address: str) -> View:
        self.views.append(address)
        await asyncio.sleep(0)
        if self.behaviour.get(address, "unreachable") in ("gone", "unreachable"):
            raise PeerUnavailable(f"{address}: UNAVAILABLE: not reachable")
        if address in self.view_of:
            return self.view_of[address]
        node = next(n for n, a in self.members.items() if a == address)
        return View(node_id=node, identity=self.identity, members=dict(self.members))


THREE = {"a": "10.0.0.1:1", "b": "10.0.0.2:1", "c": "10.0.0.3:1"}
A, B, C = THREE.values()


def x(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), value, np.float32)}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeNodes, Failover, Clock]]:
    nodes, clock = FakeNodes(THREE), Clock()
    cluster = Failover(nodes, [A], clock=clock)
    try:
        assert await cluster.refresh()
        yield nodes, cluster, clock
    finally:
        await cluster.aclose()


@pytest.mark.parametrize(
    ("refusal", "step"),
    [
        (Refusal(A, Code.UNAVAILABLE, "Stream removed", answered=False), "down"),
        (Refusal(A, Code.INTERNAL, "Internal error from Core", answered=False), "down"),
        (Refusal(A, Code.CANCELLED, "", answered=False), "down"),
        (Refusal(A, Code.UNAVAILABLE, "ended", answered=False, sent=False), "down"),
        (Refusal(A, Code.UNAVAILABLE, "node a is stopping", answered=True), "down"),
        (Refusal(A, Code.DEADLINE_EXCEEDED, "no answer within 10 s", answered=True), "elsewhere"),
        (Refusal(A, Code.FAILED_PRECONDITION, "no plan yet", answered=True), "elsewhere"),
        (Refusal(A, Code.INVALID_ARGUMENT, "wrong shape", answered=True), "fail"),
        (Refusal(A, Code.INTERNAL, "part 2 raised", answered=True), "fail"),
        (Refusal(A, Code.RESOURCE_EXHAUSTED, "busy", answered=True), "fail"),
        (Refusal(A, Code.RESOURCE_EXHAUSTED, "too many open", answered=False), "fail"),
        (Refusal(A, Code.INVALID_ARGUMENT, "bad frame", answered=False), "fail"),
        (Refusal(A, Code.PERMISSION_DENIED, "not a member", answered=False), "fail"),
        (Refusal(A, Code.DATA_LOSS, "malformed answer", answered=True), "fail"),
    ],
)
def test_what_a_client_does_after_each_refusal(refusal: Refusal, step: str) -> None:
    assert next_step(refusal) == step


async def test_the_members_come_from_the_first_nodes_view(fake) -> None:
    nodes, cluster, _ = fake
    assert cluster.addresses == (A, B, C)
    assert all(cluster.knows(a) for a in (A, B, C))
    assert nodes.views == [A]


async def test_a_request_whose_origin_goes_away_is_answered_by_another(fake, caplog) -> None:
    nodes, cluster, _ = fake
    nodes.behaviour[A] = "gone"
    with caplog.at_level(logging.DEBUG, "edgenode.transport._failover"):
        answers = await asyncio.gather(
            *(cluster.request(x(i), timeout_s=5, origin=A) for i in range(20))
        )
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer.result()["y"], x(i)["x"] * 2)
        assert answer.address == B  # the one after the origin
        assert [r.address for r in answer.refusals] == [A]
    warnings = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not per request
    assert warnings[0].levelno == logging.WARNING
    assert "10.0.0.1:1 went away (UNAVAILABLE: Stream removed)" in warnings[0].getMessage()


async def test_origins_fail_over_to_different_nodes(fake) -> None:
    nodes, cluster, _ = fake
    nodes.behaviour[B] = "gone"
    answer = await cluster.request(x(1), timeout_s=5, origin=B)
    assert answer.address == C
    nodes.behaviour[C] = "gone"
    answer = await cluster.request(x(1), timeout_s=5, origin=C)
    assert answer.address == A


async def test_a_node_gone_is_tried_last_for_a_while_then_again(fake, caplog) -> None:
    nodes, cluster, clock = fake
    nodes.behaviour[A] = "gone"
    await cluster.infer(x(1), timeout_s=5, origin=A)
    assert nodes.requests[A] == 1
    await cluster.infer(x(1), timeout_s=5, origin=A)  # straight to another node
    assert nodes.requests[A] == 1
    assert cluster.addresses[-1] == A
    clock.now += DOWN_HOLD_S
    nodes.behaviour[A] = "ok"
    with caplog.at_level(logging.INFO, "edgenode.transport._failover"):
        answer = await cluster.request(x(1), timeout_s=5, origin=A)
    assert answer.address == A and not answer.refusals
    assert "10.0.0.1:1 answers again" in caplog.text


async def test_a_bad_request_is_not_sent_elsewhere(fake) -> None:
    nodes, cluster, _ = fake
    for code, error in [
        (Code.INVALID_ARGUMENT, InferenceFailed),
        (Code.INTERNAL, InferenceFailed),
        (Code.RESOURCE_EXHAUSTED, Overloaded),
    ]:
        nodes.behaviour[A] = code
        nodes.requests.clear()
        message = f"{A}: {code.name.lower()} at {A}"
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            await cluster.infer(x(1), timeout_s=5, origin=A)
        assert nodes.requests == {A: 1}


async def test_a_node_without_a_plan_or_out_of_time_is_not_counted_gone(fake) -> None:
    nodes, cluster, _ = fake
    for code in (Code.FAILED_PRECONDITION, Code.DEADLINE_EXCEEDED):
        nodes.behaviour[A] = code
        answer = await cluster.request(x(1), timeout_s=5, origin=A)
        assert answer.address == B and [r.code for r in answer.refusals] == [code]
        assert cluster.addresses[0] == A  # alive: still the first choice


async def test_when_every_node_is_gone_one_error_lists_what_was_tried(fake) -> None:
    nodes, cluster, _ = fake
    for address in (A, B, C):
        nodes.behaviour[address] = "gone"
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await cluster.request(x(1), timeout_s=30, origin=B)
    assert loop.time() - started < 1  # long before the deadline
    assert isinstance(answer.error, PeerUnavailable) and not answer.timed_out
    message = str(answer.error)
    assert message.startswith("no node of the cluster could answer: ")
    assert "\n" not in message
    for address in (A, B, C):
        assert f"{address}: UNAVAILABLE: Stream removed" in message
    assert [r.address for r in answer.refusals] == [B, C, A]


async def test_a_single_node_keeps_its_own_error() -> None:
    nodes = FakeNodes({"a": A})
    nodes.behaviour[A] = "unreachable"
    async with Failover(nodes, [A]) as cluster:
        with pytest.raises(PeerUnavailable, match=r"^10\.0\.0\.1:1: not reachable$"):
            await cluster.infer(x(1), timeout_s=5)


async def test_the_deadline_is_the_callers_and_says_what_was_tried(fake) -> None:
    nodes, cluster, _ = fake
    nodes.behaviour[A] = "gone"
    nodes.behaviour[B] = "hang"
    answer = await cluster.request(x(1), timeout_s=0.2, origin=A)
    assert answer.timed_out
    assert str(answer.error) == (
        "10.0.0.2:1: no answer within 0.2 s (before: 10.0.0.1:1: UNAVAILABLE: Stream removed)"
    )


async def test_the_members_are_asked_again_only_now_and_then(fake) -> None:
    nodes, cluster, clock = fake
    for _ in range(50):
        await cluster.infer(x(1), timeout_s=5, origin=A)
    assert nodes.views == [A]  # the fixture's refresh is fresh
    clock.now += 10.0
    for _ in range(50):
        await cluster.infer(x(1), timeout_s=5, origin=A)
    assert nodes.views == [A, A]  # one refresh, in the background of those requests


async def test_a_restarted_node_and_a_new_member_are_found(fake) -> None:
    nodes, cluster, clock = fake
    moved = "10.0.0.2:2"
    nodes.behaviour[B] = "gone"
    nodes.members["b"] = moved  # b restarted on another port
    nodes.members["d"] = "10.0.0.4:1"  # and d joined
    nodes.behaviour[moved] = nodes.behaviour["10.0.0.4:1"] = "ok"
    answer = await cluster.request(x(1), timeout_s=5, origin=B)
    assert answer.address == C  # B went away: the next one answered
    clock.now += REFRESH_GAP_S
    await cluster.refresh()
    assert cluster.addresses == (A, moved, C, "10.0.0.4:1")
    answer = await cluster.request(x(2), timeout_s=5, origin=B)  # the old address
    assert answer.address == moved and not answer.refusals  # b, where it is now


async def test_members_are_asked_again_before_a_request_gives_up(fake) -> None:
    nodes, cluster, clock = fake
    nodes.members = {"d": "10.0.0.4:1"}  # the whole cluster moved, d kept the status
    nodes.behaviour = {a: "gone" for a in (A, B, C)}
    nodes.behaviour["10.0.0.4:1"] = "ok"
    nodes.view_of[C] = View(node_id="c", identity="c/model", members={"d": "10.0.0.4:1"})
    nodes.behaviour[C] = "gone, but answers status calls"
    clock.now += REFRESH_GAP_S
    answer = await cluster.request(x(1), timeout_s=5, origin=A)
    assert answer.address == "10.0.0.4:1", answer.error


async def test_a_seed_the_members_do_not_list_gets_no_request(fake) -> None:
    """A node of another cluster may sit at an address given as a seed: once a node said
    who the members are, requests fail over to members only."""
    nodes, cluster, _ = fake
    stranger = "10.0.0.9:1"
    nodes.behaviour[stranger] = "ok"
    cluster.add([stranger])
    assert stranger not in cluster.addresses
    for address in (A, B, C):
        nodes.behaviour[address] = "gone"
    answer = await cluster.request(x(1), timeout_s=5, origin=A)
    assert answer.error is not None and stranger not in nodes.requests


async def test_a_node_of_another_cluster_gets_no_request(caplog) -> None:
    stranger = "10.0.0.9:1"
    nodes = FakeNodes(THREE)
    nodes.behaviour[stranger] = "ok"
    async with Failover(nodes, [A, stranger]) as cluster:  # no view yet: both tried
        assert await cluster.refresh()  # A's view
        with caplog.at_level(logging.WARNING):
            other = View(node_id="z", identity="other/model", members={"z": stranger})
            assert not cluster.learn(stranger, other)
        assert "10.0.0.9:1 answers as a node of another cluster or model" in caplog.text
        answer = await cluster.request(x(1), timeout_s=5, origin=stranger)  # even if asked
        assert answer.address == A and stranger not in nodes.requests


# -- real gRPC ---------------------------------------------------------------------------------


async def test_a_server_stopped_under_a_request_fails_it_over_on_grpc() -> None:
    """A node stopping under a request ends its session call: the client sends the request
    to the other node it was given; a request that is wrong is not sent on."""
    first, second = TwiceX(), TwiceX()
    first.gates[5.0] = asyncio.Event()  # held at the first node until it goes
    async with (
        GrpcTransport("127.0.0.1", 0, handlers=handlers_of(second)) as other,
        ControlClient(protocol=1) as client,
    ):
        transport = GrpcTransport("127.0.0.1", 0, handlers=handlers_of(first))
        await transport.__aenter__()
        try:
            cluster = client.cluster([transport.address, other.address])
            held = asyncio.create_task(
                cluster.request(request(5.0), timeout_s=10, origin=transport.address)
            )
            deadline = asyncio.get_running_loop().time() + 5
            while client.in_flight(transport.address) < 1:  # sent and held at the node
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)  # polling, with a deadline
            bad = await cluster.request({"x": np.zeros((1, 3), np.float32)}, timeout_s=10)
        finally:
            await transport.__aexit__(None, None, None)
        answer = await held
        assert answer.address == other.address, answer
        np.testing.assert_array_equal(answer.result()["y"], np.full((1, 3), 11, np.float32))
        assert [r.address for r in answer.refusals] == [transport.address]
        assert answer.refusals[0].lost and answer.refusals[0].sent
    assert isinstance(bad.error, InferenceFailed) and "missing ['w']" in str(bad.error)
    assert [r.address for r in bad.refusals] == [transport.address]  # not sent elsewhere
