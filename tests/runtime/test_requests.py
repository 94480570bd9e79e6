"""The request path over the in-memory transport: answers equal the whole model's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from edgenode.backends import load_runner
from edgenode.errors import InferenceFailed, Overloaded, PeerUnavailable, PlanError
from edgenode.model.graph import build_graph
from edgenode.model.split import split_model
from edgenode.planning import Assignment, ClusterPlan
from edgenode.runtime.parts import PartHost
from edgenode.runtime.requests import RequestTimeout, Router
from edgenode.runtime.stages import pick_replica
from edgenode.transport import MemoryNetwork
from edgenode.verify import ReferenceSet
from tests.model import models
from tests.reference import KERAS_TOLERANCE, assert_answer, reference_set
from tests.runtime.fakes import chain_manifest

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("split")
    model = models.build("multi_io")
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    return model, build_graph(model), manifest, directory


def plan_of(manifest, stages: list[tuple[str, int, int]] | list[tuple[str, int, int, int]]):
    """A plan from (node, start, stop[, replica]) stages; "origin" is always a member."""
    assignments = tuple(
        Assignment(node_id=s[0], start=s[1], stop=s[2], replica=s[3] if len(s) > 3 else 0)
        for s in stages
    )
    return ClusterPlan(
        manifest_digest=manifest.identity,
        members=tuple(sorted({s[0] for s in stages} | {"origin"})),
        assignments=assignments,
        idle=(),
        bottleneck_s=0.0,
        latency_s=0.0,
    )


class Sim:
    """Routers over the in-memory transport; each node serves the plan set for it."""

    def __init__(self, manifest, plan: ClusterPlan) -> None:
        self.manifest = manifest
        self.plans: dict[str, ClusterPlan | None] = {}
        self.default = plan
        self.routers: dict[str, Router] = {}
        self.hosts: dict[str, PartHost] = {}
        self.stacks: dict[str, contextlib.AsyncExitStack] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.runs: dict[str, int] = {}  # stages run, by node

    def __getitem__(self, name: str) -> Router:
        return self.routers[name]

    async def switch(self, plan: ClusterPlan, *names: str) -> None:
        """Nodes ``names`` (default: all) now serve ``plan``, with its parts loaded."""
        for name in names or list(self.routers):
            await self.hosts[name].load(plan.parts_of(name))
            self.plans[name] = plan
            self.routers[name].plan_changed()

    async def kill(self, name: str) -> None:
        """The node stops: its router and transport go away (sends to it fail)."""
        self.tasks.pop(name).cancel()
        await self.stacks.pop(name).aclose()


@contextlib.asynccontextmanager
async def cluster(
    split,
    stages,
    *,
    deadline_s: float = 10.0,
    max_inflight: int = 64,
    factory=None,
    links=None,
    on_stage=None,
) -> AsyncIterator[Sim]:
    """``links``: a node's own slow link in bytes/s, by name (Router's ``slow_link``);
    ``on_stage(name, parts, seconds)``: also called after each stage run."""
    _, _, manifest, directory = split
    plan = plan_of(manifest, stages)
    network = MemoryNetwork()
    names = sorted({s[0] for s in stages} | {"origin"})
    sim = Sim(manifest, plan)
    try:
        for name in names:
            stack = sim.stacks[name] = contextlib.AsyncExitStack()
            await stack.__aenter__()
            transport = await stack.enter_async_context(network.transport(f"addr-{name}"))
            host = sim.hosts[name] = await stack.enter_async_context(
                PartHost(manifest, directory, factory=factory)
            )
            await host.load(plan.parts_of(name))
            sim.plans[name] = plan
            sim.routers[name] = Router(
                node_id=name,
                manifest=manifest,
                host=host,
                transport=transport,
                plan=lambda name=name: sim.plans[name],
                address_of=lambda node: f"addr-{node}" if node in sim.stacks else None,
                deadline_s=deadline_s,
                max_inflight=max_inflight,
                on_stage=lambda parts, seconds, name=name: (
                    sim.runs.update({name: sim.runs.get(name, 0) + 1}),
                    on_stage and on_stage(name, parts, seconds),
                ),
                sweep_interval_s=0.05,
                slow_link=lambda name=name: (links or {}).get(name, 0.0),
            )
        for name, router in sim.routers.items():
            sim.tasks[name] = asyncio.create_task(router.run())
        yield sim
    finally:
        for task in sim.tasks.values():
            task.cancel()
        await asyncio.gather(*sim.tasks.values(), return_exceptions=True)
        for stack in sim.stacks.values():
            await stack.aclose()


STAGINGS = {
    "one node": [("a", 0, 4)],
    "origin owns the first parts": [("origin", 0, 2), ("b", 2, 4)],
    "four nodes": [("a", 0, 1), ("b", 1, 2), ("c", 2, 3), ("d", 3, 4)],
    "finals from different nodes": [("a", 0, 3), ("b", 3, 4)],
}


@pytest.fixture(scope="module")
def batches(split) -> list[dict[str, np.ndarray]]:
    """32 different inputs; ``refs`` holds the whole model's answer to each."""
    return [models.sample_inputs(split[0], seed=s, batch=1) for s in range(32)]


@pytest.fixture(scope="module")
def refs(split, batches) -> ReferenceSet:
    _, graph, manifest, _ = split
    return reference_set(graph, batches, tolerance=KERAS_TOLERANCE, manifest=manifest)


@pytest.mark.parametrize("staging", sorted(STAGINGS))
async def test_distributed_answer_equals_the_whole_model(split, batches, refs, staging) -> None:
    async with cluster(split, STAGINGS[staging]) as routers:
        out = await routers["origin"].infer(batches[0])
    assert_answer(refs, 0, out)


async def test_32_concurrent_requests_each_get_their_own_answer(split, batches, refs) -> None:
    async with cluster(split, STAGINGS["four nodes"]) as routers:
        outs = await asyncio.gather(*(routers["origin"].infer(b) for b in batches))
    for i, out in enumerate(outs):
        assert_answer(refs, i, out)
    assert routers["origin"].served == 32


async def test_a_missing_stage_times_out_clearly_and_frees_buffers(split) -> None:
    model, _, _, _ = split
    async with cluster(split, [("a", 0, 2), ("b", 2, 4)], deadline_s=0.5) as routers:
        routers["b"]._transport.inbox.close()  # b stops taking tensors: its part never runs
        with pytest.raises(RequestTimeout, match=r"no answer within 0\.5 s"):
            await routers["origin"].infer(models.sample_inputs(model, batch=1))
        assert routers["origin"]._attempts == {}


async def test_bad_inputs_and_no_plan(split) -> None:
    model, _, manifest, directory = split
    async with cluster(split, STAGINGS["one node"]) as routers:
        with pytest.raises(Exception, match="missing"):
            await routers["origin"].infer({})
    async with PartHost(manifest, directory) as host:
        router = Router(
            node_id="x", manifest=manifest, host=host, transport=MemoryNetwork().transport(),
            plan=lambda: None, address_of=lambda n: None, deadline_s=1.0,
        )  # fmt: skip
        with pytest.raises(PlanError, match="not agreed"):
            await router.infer(models.sample_inputs(model, batch=1))


async def test_join_buffers_of_abandoned_requests_are_freed(split) -> None:
    model, _, _, _ = split
    # c joins tensors from a and b; b never delivers, so c's buffer for the request is
    # left half full until the deadline passes.
    async with cluster(split, STAGINGS["four nodes"], deadline_s=0.3) as routers:
        routers["b"]._transport.inbox.close()
        request = asyncio.create_task(routers["origin"].infer(models.sample_inputs(model, batch=1)))
        async with asyncio.timeout(5):
            while not routers["c"].open_requests:  # c holds a half-full buffer
                await asyncio.sleep(0.01)
        with pytest.raises(RequestTimeout):
            await request
        async with asyncio.timeout(5):
            while routers["c"].open_requests:  # ...until the sweeper frees it
                await asyncio.sleep(0.02)
        assert routers["origin"].open_requests == 0


async def until(predicate, what: str, timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until true; fails the test at the deadline."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)  # polling interval, not a wait for an event


async def test_a_stage_serving_another_plan_makes_the_origin_retry_until_they_agree(
    split, batches, refs
) -> None:
    _, _, manifest, _ = split
    inputs = batches[0]
    old = [("a", 0, 2), ("b", 2, 4)]
    new = plan_of(manifest, [("a", 0, 1), ("b", 1, 4)])
    async with cluster(split, old) as sim:
        await sim.switch(new, "origin", "a")  # b has not switched yet: it refuses the request
        request = asyncio.create_task(sim["origin"].infer(inputs))
        await until(lambda: sim["origin"].retried >= 1, "a retry")
        assert not request.done()
        await sim.switch(new, "b")
        out = await request
    assert_answer(refs, 0, out)
    assert sim["origin"].served == 1


async def test_a_plan_change_resends_the_requests_a_lost_node_held(split, batches, refs) -> None:
    _, _, manifest, _ = split
    batches = batches[:4]
    async with cluster(split, STAGINGS["four nodes"]) as sim:
        sim["b"]._transport.inbox.close()  # b takes tensors and never answers: it is lost
        requests = [asyncio.create_task(sim["origin"].infer(b)) for b in batches]
        await until(lambda: sim["c"].open_requests == 4, "c waiting for b's outputs")
        new = plan_of(manifest, [("a", 0, 2), ("c", 2, 4)])
        await sim.switch(new)  # b was dropped
        assert all(j.plan == new.digest for j in sim["c"]._joins.values())  # old ones freed
        outs = await asyncio.gather(*requests)  # long before the 10 s deadline would pass
    for i, out in enumerate(outs):
        assert_answer(refs, i, out)
    assert sim["origin"].retried == 4 and sim["origin"].served == 4


async def test_replicas_share_requests_and_survive_losing_a_node(split, batches, refs) -> None:
    batches = batches[:16]
    stages = [("a", 0, 2, 0), ("b", 2, 4, 0), ("c", 0, 4, 1)]
    async with cluster(split, stages) as sim:
        outs = await asyncio.gather(*(sim["origin"].infer(b) for b in batches))
        assert sim.runs["a"] > 0 and sim.runs["c"] > 0  # both pipelines served requests
        await sim.kill("b")  # replica 0 is broken; the plan has not changed yet
        outs += await asyncio.gather(*(sim["origin"].infer(b) for b in batches))
    for i, out in enumerate(outs):
        assert_answer(refs, i % 16, out)
    assert sim["origin"].retried > 0 and sim["origin"].served == 32


@pytest.mark.parametrize(("link", "elsewhere"), [(0.0, True), (1_000.0, False)])
async def test_an_origin_on_a_slow_link_runs_what_it_can_itself(
    split, batches, refs, link: float, elsewhere: bool
) -> None:
    """origin and c each hold a whole replica. On a fast link requests are shared; on a
    1 kB/s one, sending a request's inputs to c would take far longer than waiting for the
    origin's own replica, so every request runs at the origin."""
    batches = batches[:8]
    stages = [("origin", 0, 4, 0), ("c", 0, 4, 1)]
    async with cluster(split, stages, links={"origin": link}) as sim:
        outs = await asyncio.gather(*(sim["origin"].infer(b) for b in batches))
    for i, out in enumerate(outs):
        assert_answer(refs, i, out)
    assert sim.runs["origin"] > 0
    assert (sim.runs.get("c", 0) > 0) == elsewhere


def test_pick_replica_weighs_the_wait_here_against_sending_away() -> None:
    plan = plan_of(chain_manifest(4), [("me", 0, 4, 0), ("c", 0, 4, 1)])
    load = {0: 3, 1: 0}
    runs = {p: 0.01 for p in range(4)}  # 40 ms for the whole chain here
    assert pick_replica(plan, "me", load, set(), 0, runs, send_s=0.0) == 1  # least loaded
    assert pick_replica(plan, "me", load, set(), 0, runs, send_s=0.5) == 0  # 120 ms wait here
    assert pick_replica(plan, "me", load, set(), 0, runs, send_s=0.1) == 1  # sending is faster
    assert pick_replica(plan, "me", load, {0}, 0, runs, send_s=0.5) == 1  # replica 0 failed


class _BreaksAfterWarmUp:
    """A runner whose part raises on every call after the warm-up."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.inputs, self.outputs = runner.inputs, runner.outputs
        self._calls = 0

    def __call__(self, inputs):
        self._calls += 1
        if self._calls > 1:
            raise RuntimeError("the accelerator caught fire")
        return self._runner(inputs)


async def test_a_failing_part_fails_the_request_at_once_and_the_node_lives_on(split) -> None:
    model, _, _, _ = split

    def factory(spec, directory):
        runner = load_runner(spec, directory)
        return _BreaksAfterWarmUp(runner) if spec.index == 2 else runner

    inputs = models.sample_inputs(model, batch=1)
    async with cluster(split, STAGINGS["four nodes"], deadline_s=60.0, factory=factory) as sim:
        for _ in range(2):  # no retry, no wait for the deadline, and c keeps serving
            with pytest.raises(InferenceFailed, match=r"c: parts \[2\]: the accelerator"):
                await sim["origin"].infer(inputs)
        assert sim["origin"].retried == 0 and sim["origin"].failed == 2
        assert not sim.tasks["c"].done()


async def test_a_bug_after_a_stage_ran_fails_the_request_instead_of_losing_it(split) -> None:
    """An exception escaping a stage's task (here its observer) once left the request to
    wait for its deadline, with "Task exception was never retrieved" in the log."""
    model, _, _, _ = split

    def broken(name, parts, seconds):
        if name == "c":
            raise AttributeError("'NodeMetrics' object has no attribute 'stage_latency'")

    inputs = models.sample_inputs(model, batch=1)
    async with cluster(split, STAGINGS["four nodes"], deadline_s=60.0, on_stage=broken) as sim:
        async with asyncio.timeout(10):  # far before the 60 s deadline
            with pytest.raises(InferenceFailed, match=r"c: parts \[2\]: .*stage_latency"):
                await sim["origin"].infer(inputs)
        assert sim["origin"].failed == 1 and not sim.tasks["c"].done()


async def test_a_flood_is_queued_up_to_a_bound_then_refused(split) -> None:
    model, _, _, _ = split
    inputs = models.sample_inputs(model, batch=1)
    async with cluster(split, STAGINGS["four nodes"], deadline_s=1.0, max_inflight=2) as sim:
        sim["b"]._transport.inbox.close()  # nothing completes: requests pile up
        origin = sim["origin"]
        admitted = [asyncio.create_task(origin.infer(inputs)) for _ in range(4)]
        await until(lambda: origin._queued == 2, "two requests waiting for a turn")
        with pytest.raises(Overloaded, match="2 requests running and 2 waiting"):
            await origin.infer(inputs)
        results = await asyncio.gather(*admitted, return_exceptions=True)
    assert all(isinstance(r, RequestTimeout) for r in results)  # each one answered: none lost
    assert origin.refused == 1 and origin.failed == 4 and origin.open_requests == 0


async def test_drain_waits_for_requests_started_here_and_refuses_new_ones(
    split, batches, refs
) -> None:
    _, _, manifest, _ = split
    inputs = batches[0]
    async with cluster(split, STAGINGS["four nodes"]) as sim:
        origin = sim["origin"]
        sim["b"]._transport.inbox.close()  # the request cannot finish...
        running = asyncio.create_task(origin.infer(inputs))
        await until(lambda: sim["c"].open_requests == 1, "the request to be under way")
        draining = asyncio.create_task(origin.drain(30.0))
        await until(lambda: origin._draining, "the drain to start")
        with pytest.raises(PeerUnavailable, match="node origin is stopping"):
            await origin.infer(inputs)
        assert not draining.done()
        await sim.switch(plan_of(manifest, [("a", 0, 2), ("c", 2, 4)]))  # ...until b is gone
        assert await draining == 0
        assert_answer(refs, 0, running.result())
        stuck = sim["a"]  # a's requests go through b, still in the old plan for a
        sim.plans["a"] = plan_of(manifest, STAGINGS["four nodes"])
        held = asyncio.create_task(stuck.infer(inputs))
        await until(lambda: stuck._running_here == 1, "the request to start")
        assert await stuck.drain(0.1) == 1  # gives up after its timeout, says how many
        held.cancel()
