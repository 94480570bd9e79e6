"""Membership: deterministic ordering, events, liveness marks; Debounce timing. Pure tables."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgenode.errors import UsageError
from edgenode.mesh import (
    Capacity,
    Debounce,
    Membership,
    NodeId,
    PeerEvent,
    PeerEventKind,
    peer_changes,
)
from edgenode.planning import NodeSpec

from .conftest import make_info

JOINED, UPDATED, LEFT = PeerEventKind.JOINED, PeerEventKind.UPDATED, PeerEventKind.LEFT


def node(name: str, incarnation: int = 1, speed: float = 1.0):
    capacity = Capacity(speed=speed, memory_bytes=1)
    return make_info("t", 0, node_id=NodeId(name), incarnation=incarnation, capacity=capacity)


def ev(kind, name, incarnation=1, speed=1.0):
    return PeerEvent(kind, node(name, incarnation, speed))


SELF = node("m")


def run(events, local=SELF):
    membership = Membership.of(local)
    for event in events:
        membership = membership.apply(event)
    return membership


@pytest.mark.parametrize(
    ("events", "ids"),
    [
        ([], ["m"]),
        ([ev(JOINED, "z"), ev(JOINED, "a")], ["a", "m", "z"]),
        ([ev(JOINED, "b"), ev(JOINED, "a"), ev(JOINED, "c")], ["a", "b", "c", "m"]),
        ([ev(JOINED, "a"), ev(JOINED, "a")], ["a", "m"]),
        ([ev(JOINED, "a"), ev(LEFT, "a")], ["m"]),
        ([ev(LEFT, "a")], ["m"]),
        ([ev(UPDATED, "a")], ["a", "m"]),  # an update for an unknown peer adds it
        ([ev(JOINED, "m", incarnation=9)], ["m"]),  # own record
        ([ev(JOINED, "a", 1), ev(LEFT, "a", 2)], ["a", "m"]),  # LEFT of another run
        ([ev(JOINED, "a", 1), ev(JOINED, "a", 2), ev(LEFT, "a", 1)], ["a", "m"]),
        # numbers and dashes sort as text, the same on every node
        ([ev(JOINED, "n10"), ev(JOINED, "n9"), ev(JOINED, "n-1")], ["m", "n-1", "n10", "n9"]),
    ],
)
def test_members_sorted_by_node_id(events, ids):
    assert list(run(events).node_ids) == ids


names = st.sampled_from(["a", "b", "c", "d", "e", "m0", "zz"])


@given(st.lists(st.tuples(names, st.floats(0.5, 9.0)), max_size=12, unique_by=lambda t: t[0]))
def test_same_records_in_any_order_give_the_same_membership(peers):
    events = [ev(JOINED, name, speed=speed) for name, speed in peers]
    forward = run(events)
    assert run(reversed(events)) == forward
    assert forward.node_specs() == tuple(
        NodeSpec(node_id=p.node_id, speed=p.capacity.speed, memory_bytes=1)
        for p in sorted([SELF, *(e.peer for e in events)], key=lambda p: p.node_id)
    )


def test_update_replaces_the_record():
    membership = run([ev(JOINED, "a", speed=1.0), ev(UPDATED, "a", speed=4.0)])
    assert membership.get(NodeId("a")).capacity.speed == 4.0
    assert membership.get(NodeId("m")) == SELF
    assert membership.get(NodeId("nobody")) is None


def test_dead_peer_stays_out_until_a_new_incarnation():
    membership = run([ev(JOINED, "a", 1), ev(JOINED, "b", 1)]).mark_dead(NodeId("a"))
    assert membership.node_ids == ("b", "m")
    assert membership.is_dead(NodeId("a"))
    for lingering in (ev(JOINED, "a", 1), ev(UPDATED, "a", 1, speed=3.0)):
        membership = membership.apply(lingering)
        assert membership.node_ids == ("b", "m")
    assert membership.dead[0].capacity.speed == 3.0  # the latest record is kept for revive()
    membership = membership.apply(ev(JOINED, "a", 2))
    assert membership.node_ids == ("a", "b", "m")
    assert membership.get(NodeId("a")).incarnation == 2
    assert not membership.is_dead(NodeId("a"))


def test_an_older_incarnation_number_is_a_new_run_too():
    # Incarnations are random, not ordered: any other value means another run.
    membership = run([ev(JOINED, "a", 5)]).mark_dead(NodeId("a")).apply(ev(JOINED, "a", 4))
    assert membership.node_ids == ("a", "m")


def test_mark_dead_with_incarnation_spares_a_newer_run():
    membership = run([ev(JOINED, "a", 1), ev(JOINED, "a", 2)])
    assert membership.mark_dead(NodeId("a"), incarnation=1) is membership
    assert membership.mark_dead(NodeId("a"), incarnation=2).node_ids == ("m",)


def test_mark_dead_of_unknown_or_self_changes_nothing():
    membership = run([ev(JOINED, "a")])
    assert membership.mark_dead(NodeId("zz")) is membership
    assert membership.mark_dead(NodeId("m")) is membership


def test_revive_restores_the_same_run():
    membership = run([ev(JOINED, "a", 1)]).mark_dead(NodeId("a"))
    assert membership.revive(NodeId("a"), incarnation=7) is membership
    revived = membership.revive(NodeId("a"))
    assert revived.node_ids == ("a", "m")
    assert revived == run([ev(JOINED, "a", 1)])


def test_left_forgets_a_dead_peer():
    membership = run([ev(JOINED, "a", 1)]).mark_dead(NodeId("a")).apply(ev(LEFT, "a", 1))
    assert membership == Membership.of(SELF)


def test_apply_returns_the_same_object_when_nothing_changes():
    membership = run([ev(JOINED, "a")])
    assert membership.apply(ev(JOINED, "a")) is membership
    assert membership.apply(ev(LEFT, "zz")) is membership


def test_with_local():
    faster = replace(SELF, capacity=Capacity(speed=8.0, memory_bytes=1))
    membership = run([ev(JOINED, "a")]).with_local(faster)
    assert membership.get(NodeId("m")) == faster
    with pytest.raises(UsageError):
        membership.with_local(node("other"))


def test_invariants_are_checked():
    with pytest.raises(UsageError, match="sorted"):
        Membership(local=SELF, alive=(node("b"), node("a")))
    with pytest.raises(UsageError, match="among its peers"):
        Membership(local=SELF, alive=(node("m"),))
    with pytest.raises(UsageError, match="both alive and dead"):
        Membership(local=SELF, alive=(node("a"),), dead=(node("a"),))
    assert Membership.of(SELF, [node("b"), node("a"), SELF]).node_ids == ("a", "b", "m")


# Debounce: (action, time) steps and the expected (pending, due_s, ready) after each.
@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], (False, None, False)),
        ([("change", 10.0)], (True, 10.3, False)),
        ([("change", 10.0), ("check", 10.3)], (True, 10.3, True)),
        ([("change", 10.0), ("change", 10.2)], (True, 10.5, False)),
        # a flapping cluster still re-plans max_delay_s after the first change
        (
            [("change", 10.0), ("change", 10.25), ("change", 10.5), ("change", 10.75)],
            (True, 11.0, False),
        ),
        ([("change", 10.0), ("change", 10.9), ("check", 11.0)], (True, 11.0, True)),
        ([("change", 10.0), ("done", 10.3)], (False, None, False)),
        ([("change", 10.0), ("done", 10.3), ("change", 12.0)], (True, 12.3, False)),
    ],
)
def test_debounce(steps, expected):
    debounce = Debounce(quiet_s=0.3, max_delay_s=1.0)
    now = 0.0
    for action, now in steps:
        if action == "change":
            debounce = debounce.changed(now)
        elif action == "done":
            debounce = debounce.done()
    pending, due, ready = expected
    assert debounce.pending is pending
    assert debounce.due_s == (None if due is None else pytest.approx(due))
    assert debounce.ready(now) is ready


def test_debounce_rejects_bad_windows():
    with pytest.raises(UsageError):
        Debounce(quiet_s=2.0, max_delay_s=1.0)
    with pytest.raises(UsageError):
        Debounce(quiet_s=-1.0, max_delay_s=1.0)


# -- peer_changes: one line per change of a peer's state ---------------------------------

A1 = node("a")
MOVED_A1 = replace(A1, port=A1.port + 1)
FASTER_A1 = replace(A1, capacity=Capacity(speed=5.0, memory_bytes=1))  # a measured link
A2 = node("a", incarnation=2)
B = node("b")


def _changes(before: Membership, after: Membership) -> list[tuple[str, str]]:
    return [(c.peer.node_id, c.state) for c in peer_changes(before, after)]


def _m(alive=(), dead=(), local=SELF) -> Membership:
    return Membership(local=local, alive=alive, dead=dead)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (_m(), _m(), []),
        (_m(), _m(alive=(A1, B)), [("a", "joined"), ("b", "joined")]),
        (_m(alive=(A1, B)), _m(alive=(B,)), [("a", "left")]),
        (_m(alive=(A1,)), _m(dead=(A1,)), [("a", "unreachable")]),
        (_m(dead=(A1,)), _m(alive=(A1,)), [("a", "back")]),
        (_m(dead=(A1,)), _m(alive=(A2,)), [("a", "restarted")]),
        (_m(dead=(A1,)), _m(), [("a", "left")]),
        (_m(alive=(A1,)), _m(alive=(A2,)), [("a", "restarted")]),
        (_m(alive=(A1,)), _m(alive=(MOVED_A1,)), [("a", "moved")]),
        (_m(alive=(A1, B)), _m(alive=(A2,), dead=(B,)), [("a", "restarted"), ("b", "unreachable")]),
        # not a change of state: a new capacity, a dead peer's record refreshed, this node
        (_m(alive=(A1,)), _m(alive=(FASTER_A1,)), []),
        (_m(dead=(A1,)), _m(dead=(MOVED_A1,)), []),
        (_m(), _m(local=replace(SELF, port=1)), []),
    ],
)
def test_peer_changes(before: Membership, after: Membership, expected: list[tuple[str, str]]):
    assert _changes(before, after) == expected


def test_peer_changes_follow_the_events():
    """What ``apply``, ``mark_dead`` and ``revive`` do reads as one change each."""
    joined = run([ev(JOINED, "a"), ev(JOINED, "b")])
    dead = joined.mark_dead(NodeId("a"))
    back = dead.revive(NodeId("a"))
    left = back.apply(ev(LEFT, "b"))
    steps = [Membership.of(SELF), joined, dead, back, left]
    said = [_changes(x, y) for x, y in itertools.pairwise(steps)]
    assert said == [
        [("a", "joined"), ("b", "joined")],
        [("a", "unreachable")],
        [("a", "back")],
        [("b", "left")],
    ]
