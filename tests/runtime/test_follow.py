"""The plan followers wait for a new agreed plan however long the plan holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from edgenode.planning import Assignment, ClusterPlan
from edgenode.runtime import follow
from edgenode.runtime.negotiation import PlanState


def _plan(owner: str) -> ClusterPlan:
    return ClusterPlan(manifest_digest="m", members=(owner,),
                       assignments=(Assignment(node_id=owner, start=0, stop=1),), idle=(),
                       bottleneck_s=0.0, latency_s=0.0)  # fmt: skip


class Plans:
    """An in-memory plan source with the Negotiator's wait (predicate, timeout), counting
    the waits that timed out."""

    def __init__(self) -> None:
        self.state = PlanState(computed=None, agreed=None, members=(), version=0)
        self.timeouts = 0
        self._changed = asyncio.Condition()

    async def agree(self, plan: ClusterPlan) -> None:
        async with self._changed:
            self.state = replace(self.state, computed=plan, agreed=plan,
                                 version=self.state.version + 1)  # fmt: skip
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[PlanState], bool], timeout_s: float) -> PlanState:
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.state))
                return self.state
        except TimeoutError:
            self.timeouts += 1
            raise


class Router:
    def __init__(self) -> None:
        self.told = 0

    def plan_changed(self) -> None:
        self.told += 1


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.005)  # polling interval, not a wait for an event


async def test_a_plan_that_holds_longer_than_one_wait_does_not_stop_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each wait ends after WAIT_S (an hour in a node); the follower waited once and,
    on the TimeoutError, ended its task, and with it the node's task group."""
    monkeypatch.setattr(follow, "WAIT_S", 0.01)
    plans, router = Plans(), Router()
    task = asyncio.create_task(follow.tell_router(plans, router))
    try:
        await plans.agree(_plan("a"))
        await until(lambda: router.told == 1, "the first plan")
        await until(lambda: plans.timeouts >= 3, "three waits to time out")
        assert not task.done()
        await plans.agree(_plan("b"))
        await until(lambda: router.told == 2, "the next plan, after the timeouts")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
