"""confirm(): which browsed records count, with a fake Hello (no network)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from edgenode.errors import PeerUnavailable
from edgenode.mesh import Endpoint, PeerInfo
from edgenode.mesh.browse import Confirmation, confirm

from .conftest import make_info

SUFFIX = "browse"


def record(index: int, **changes: object) -> PeerInfo:
    return make_info(SUFFIX, index, **changes)


class FakeHello:
    """Answers Hello from a table: endpoint -> the PeerInfo it answers, or an error text;
    counts the questions per endpoint."""

    def __init__(self, table: dict[Endpoint, PeerInfo | str]) -> None:
        self.table = table
        self.asked: list[Endpoint] = []

    async def __call__(self, endpoint: Endpoint) -> PeerInfo:
        self.asked.append(endpoint)
        answer = self.table.get(endpoint, f"{endpoint}: connection refused")
        if isinstance(answer, str):
            raise PeerUnavailable(answer)
        return answer


async def test_only_records_whose_endpoint_answers_as_them_count() -> None:
    real = [record(1), record(2)]
    ghost = record(3)  # nothing listens at its port
    liar = record(4, port=real[1].port)  # another member's endpoint
    foreign = record(5, cluster="other")
    foreign_answer = replace(foreign, cluster="test-mine")  # says another cluster than its record
    hello = FakeHello({r.endpoint: r for r in real} | {foreign.endpoint: foreign_answer})
    result = await confirm([*real, ghost, liar, foreign], hello)
    assert result.members == tuple(real)
    assert result.found == 5
    assert result.failures == (
        f"{ghost.endpoint}: connection refused",
        f"{liar.endpoint} answers as node {real[1].node_id!r}, not as the record's "
        f"{liar.node_id!r}",
        f"{foreign.endpoint} answers as a node of cluster 'test-mine', not of the record's 'other'",
    )
    # each endpoint asked once, though two records name real[1]'s
    assert len(hello.asked) == len(set(hello.asked)) == 4


async def test_members_are_what_hello_says_at_the_browsed_endpoint() -> None:
    announced = record(1, capacity=record(7).capacity)  # TXT claims another capacity
    answer = replace(record(1), addresses=("10.9.9.9",), port=1)  # where it thinks it is
    result = await confirm([announced], FakeHello({announced.endpoint: answer}))
    [member] = result.members
    assert member.capacity == answer.capacity != announced.capacity
    assert member.endpoint == announced.endpoint


async def test_order_is_the_records_order_whatever_answers_first() -> None:
    records = [record(i) for i in range(1, 6)]
    answered = {r.endpoint: asyncio.Event() for r in records}
    answer_order = []

    async def hello(endpoint: Endpoint) -> PeerInfo:
        index = next(i for i, r in enumerate(records) if r.endpoint == endpoint)
        if index + 1 < len(records):  # the last record's node answers first, and so on
            await answered[records[index + 1].endpoint].wait()
        answer_order.append(index)
        answered[endpoint].set()
        return records[index]

    result = await confirm(records, hello)
    assert answer_order == [4, 3, 2, 1, 0]
    assert [m.node_id for m in result.members] == [r.node_id for r in records]


async def test_every_endpoint_is_asked_at_once() -> None:
    records = [record(i) for i in range(1, 5)]
    waiting = 0
    everyone = asyncio.Event()

    async def hello(endpoint: Endpoint) -> PeerInfo:
        nonlocal waiting
        waiting += 1
        if waiting == len(records):
            everyone.set()
        await everyone.wait()  # asked one after the other, the first would time out
        return next(r for r in records if r.endpoint == endpoint)

    result = await confirm(records, hello, timeout_s=5)
    assert len(result.members) == 4


async def test_an_endpoint_that_never_answers_costs_one_timeout() -> None:
    good = record(1)
    stuck = record(2)
    never = asyncio.Event()

    async def hello(endpoint: Endpoint) -> PeerInfo:
        if endpoint == stuck.endpoint:
            await never.wait()
        return good

    result = await confirm([stuck, good], hello, timeout_s=0.05)
    assert result.members == (good,)
    assert result.failures == (f"{stuck.endpoint}: no answer within 0.05 s",)


async def test_no_record_no_member() -> None:
    hello = FakeHello({})
    result = await confirm([], hello)
    assert result == Confirmation(found=0, members=(), failures=())
    assert hello.asked == []
