"""The request path over the in-memory transport: answers equal the whole model's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from edgenode.errors import PlanError
from edgenode.model.graph import build_graph
from edgenode.model.slicing import run_model
from edgenode.model.split import split_model
from edgenode.planning import Assignment, ClusterPlan
from edgenode.runtime.parts import PartHost
from edgenode.runtime.requests import RequestTimeout, Router
from edgenode.transport import MemoryNetwork
from tests.model import models

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("split")
    model = models.build("multi_io")
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    return model, build_graph(model), manifest, directory


def plan_of(manifest, stages: list[tuple[str, int, int]]) -> ClusterPlan:
    return ClusterPlan(
        manifest_digest=manifest.identity,
        members=tuple(sorted({s[0] for s in stages} | {"origin"})),
        assignments=tuple(Assignment(node_id=n, start=a, stop=b) for n, a, b in stages),
        idle=(),
        bottleneck_s=0.0,
        latency_s=0.0,
    )


@contextlib.asynccontextmanager
async def cluster(split, stages, *, deadline_s: float = 10.0) -> AsyncIterator[dict[str, Router]]:
    _, _, manifest, directory = split
    plan = plan_of(manifest, stages)
    network = MemoryNetwork()
    names = sorted({s[0] for s in stages} | {"origin"})
    async with contextlib.AsyncExitStack() as stack:
        routers: dict[str, Router] = {}
        for name in names:
            transport = await stack.enter_async_context(network.transport(f"addr-{name}"))
            host = await stack.enter_async_context(PartHost(manifest, directory))
            await host.load(plan.parts_of(name))
            routers[name] = Router(
                node_id=name,
                manifest=manifest,
                host=host,
                transport=transport,
                plan=lambda: plan,
                address_of=lambda node: f"addr-{node}",
                deadline_s=deadline_s,
                sweep_interval_s=0.05,
            )
        tasks = [asyncio.create_task(r.run()) for r in routers.values()]
        try:
            yield routers
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


STAGINGS = {
    "one node": [("a", 0, 4)],
    "origin owns the first parts": [("origin", 0, 2), ("b", 2, 4)],
    "four nodes": [("a", 0, 1), ("b", 1, 2), ("c", 2, 3), ("d", 3, 4)],
    "finals from different nodes": [("a", 0, 3), ("b", 3, 4)],
}


@pytest.mark.parametrize("staging", sorted(STAGINGS))
async def test_distributed_answer_equals_the_whole_model(split, staging: str) -> None:
    model, graph, manifest, _ = split
    inputs = models.sample_inputs(model, batch=1)
    expected = run_model(graph, inputs)
    async with cluster(split, STAGINGS[staging]) as routers:
        out = await routers["origin"].infer(inputs)
    assert set(out) == set(manifest.model.outputs)
    for name in manifest.model.outputs:
        np.testing.assert_allclose(out[name], expected[name], rtol=0, atol=1e-5)


async def test_32_concurrent_requests_each_get_their_own_answer(split) -> None:
    model, graph, manifest, _ = split
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(32)]
    expected = [run_model(graph, b) for b in batches]
    async with cluster(split, STAGINGS["four nodes"]) as routers:
        outs = await asyncio.gather(*(routers["origin"].infer(b) for b in batches))
    for out, want in zip(outs, expected, strict=True):
        for name in manifest.model.outputs:
            np.testing.assert_allclose(out[name], want[name], rtol=0, atol=1e-5)
    assert routers["origin"].served == 32


async def test_a_missing_stage_times_out_clearly_and_frees_buffers(split) -> None:
    model, _, _, _ = split
    async with cluster(split, [("a", 0, 2), ("b", 2, 4)], deadline_s=0.5) as routers:
        routers["b"]._transport.inbox.close()  # b stops taking tensors: its part never runs
        with pytest.raises(RequestTimeout, match=r"no answer within 0\.5 s"):
            await routers["origin"].infer(models.sample_inputs(model, batch=1))
        assert routers["origin"]._pending == {}


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
