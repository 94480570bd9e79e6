"""PartHost: owned parts on worker threads, chained locally, loaded and dropped on demand."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from edgenode.errors import ModelError, PlanError
from edgenode.model.graph import build_graph
from edgenode.model.split import split_model
from edgenode.runtime.parts import PartHost
from tests.model import models
from tests.reference import KERAS_TOLERANCE, ModelTensors, assert_answer

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    """The split, an input, and the whole model's tensors for it and for another input."""
    directory = tmp_path_factory.mktemp("split")
    model = models.build("multi_io")
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    tensors = ModelTensors(build_graph(model), [models.sample_inputs(model, s) for s in (0, 1)])
    return manifest, directory, tensors.batches[0], tensors


def assert_first_input_answer(tensors: ModelTensors, outputs) -> None:
    """``outputs`` (every tensor some parts produced) are the whole model's for input 0."""
    names = [n for n in outputs if n in tensors.shown]
    refs = tensors.references(names, tolerance=KERAS_TOLERANCE)
    assert_answer(refs, 0, {n: outputs[n] for n in names})


def wrapping(around):
    """A runner factory whose runners call ``around(spec, real_runner, feed)``."""

    def factory(spec, d):
        from edgenode.backends import load_runner

        runner = load_runner(spec, d)

        class Wrapped:
            inputs = runner.inputs
            outputs = runner.outputs

            def __call__(self, feed):
                return around(spec, runner, feed)

        return Wrapped()

    return factory


async def test_chain_of_owned_parts_gives_the_model_output(split) -> None:
    manifest, directory, inputs, tensors = split
    async with PartHost(manifest, directory) as host:
        await host.load(range(4))
        assert host.loaded == (0, 1, 2, 3)
        result = await host.run_chain(range(4), inputs)
        empty = await host.run_chain([], inputs)
    produced = {t.name for part in manifest.parts for t in part.outputs}
    assert set(result.outputs) == produced
    assert set(manifest.model.outputs) <= produced
    assert_first_input_answer(tensors, result.outputs)
    assert len(result.seconds) == 4 and all(s > 0 for s in result.seconds)
    assert empty.outputs == {} and empty.seconds == ()


async def test_parts_run_on_their_own_threads_not_the_loop(split) -> None:
    manifest, directory, inputs, _ = split
    seen: list[str] = []

    def record(spec, runner, feed):
        seen.append(threading.current_thread().name)
        return runner(feed)

    async with PartHost(manifest, directory, factory=wrapping(record), inline_max_s=0) as host:
        await host.load([0, 1])
        assert seen == ["part-0_0", "part-1_0"]  # one warm-up call each, when loaded
        seen.clear()
        await asyncio.gather(host.run(0, inputs), host.run(0, inputs))
        values = dict(inputs)
        values.update(await host.run(0, inputs))
        await host.run(1, values)
        assert seen[:3] == ["part-0_0"] * 3 and seen[3] == "part-1_0"
        # A chain runs on its first part's worker, in one hand-off from the loop.
        seen.clear()
        await host.run_chain([0, 1], inputs)
        assert seen == ["part-0_0", "part-0_0"]
    assert threading.main_thread().name not in seen


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_idle_node_runs_short_chains_on_the_loop(split) -> None:
    """One request at a time, a chain skips the two thread hand-offs and runs on the
    event loop; a backlog, a chain already running on a worker, a chain never timed and a
    chain longer than the limit all go to the workers."""
    manifest, directory, inputs, tensors = split
    loop_thread = threading.get_ident()
    seen: list[bool] = []  # per part call: on the loop?
    release = threading.Event()
    release.set()

    def record(spec, runner, feed):
        seen.append(threading.get_ident() == loop_thread)
        release.wait(10)
        return runner(feed)

    clock = Clock()
    async with PartHost(manifest, directory, factory=wrapping(record), clock=clock) as host:
        await host.load(range(4))
        seen.clear()
        await host.run_chain(range(4), inputs)  # never timed yet: a worker
        assert seen == [False] * 4 and host.inlined == 0
        seen.clear()
        await host.run_chain(range(4), inputs)  # right after the last one: a backlog
        assert seen == [False] * 4
        clock.now += 1.0  # idle for a second
        seen.clear()
        result = await host.run_chain(range(4), inputs)
        assert seen == [True] * 4 and host.inlined == 1
        assert_first_input_answer(tensors, result.outputs)
        assert len(result.seconds) == 4 and all(s > 0 for s in result.seconds)

        # A chain running on a worker (it starts right after the last chain, so it may
        # not take the loop): the next one may not take the loop either, however idle.
        release.clear()
        seen.clear()
        first = asyncio.create_task(host.run_chain([0], inputs))
        async with asyncio.timeout(10):
            while not seen:  # the first chain has reached its worker
                await asyncio.sleep(0)
        clock.now += 1.0
        second = asyncio.create_task(host.run_chain([1], {**inputs, **result.outputs}))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, second)
        assert seen == [False, False] and host.inlined == 1

    async with PartHost(
        manifest, directory, factory=wrapping(record), clock=clock, inline_max_s=1e-9
    ) as host:
        await host.load([0])
        await host.run_chain([0], inputs)
        clock.now += 1.0
        seen.clear()
        await host.run_chain([0], inputs)  # longer than the limit: a worker
        assert seen == [False] and host.inlined == 0


async def test_a_part_shared_by_two_chains_runs_one_call_at_a_time(split) -> None:
    """A chain starting at part 0 and one starting at part 1 both call part 1, from two
    worker threads; a LiteRT interpreter must never be entered twice at once."""
    manifest, directory, inputs, tensors = split
    inside: dict[int, int] = {}
    overlaps: list[int] = []
    guard = threading.Lock()

    def exclusive(spec, runner, feed):
        with guard:
            inside[spec.index] = inside.get(spec.index, 0) + 1
            if inside[spec.index] > 1:
                overlaps.append(spec.index)
        try:
            threading.Event().wait(0.002)  # widen the window a real overlap needs
            return runner(feed)
        finally:
            with guard:
                inside[spec.index] -= 1

    async with PartHost(manifest, directory, factory=wrapping(exclusive)) as host:
        await host.load(range(4))
        first = await host.run_chain([0], inputs)
        middle = {**inputs, **first.outputs}
        results = await asyncio.gather(
            *[host.run_chain(range(4), inputs) for _ in range(6)],
            *[host.run_chain(range(1, 4), middle) for _ in range(6)],
        )
    assert overlaps == []
    for result in results:
        assert_first_input_answer(tensors, result.outputs)


async def test_load_drops_parts_no_longer_owned(split) -> None:
    manifest, directory, inputs, _ = split
    async with PartHost(manifest, directory) as host:
        await host.load([0, 1])
        await host.load([1, 2])
        assert host.loaded == (1, 2)
        with pytest.raises(PlanError, match="part 0 is not loaded"):
            await host.run(0, inputs)
        with pytest.raises(ModelError, match="part 9 is not in the manifest"):
            await host.load([9])


async def test_bad_inputs_are_refused_and_the_part_keeps_working(split) -> None:
    manifest, directory, inputs, _ = split
    async with PartHost(manifest, directory) as host:
        await host.load([0])
        bad = {k: v.astype(np.float64) for k, v in inputs.items()}
        with pytest.raises(ModelError, match="dtype float64"):
            await host.run(0, bad)
        with pytest.raises(ModelError, match="missing"):
            await host.run(0, {})
        wrong_shape = {k: v[..., :1] for k, v in inputs.items()}
        with pytest.raises(ModelError, match="shape"):
            await host.run(0, wrong_shape)
        assert await host.run(0, inputs)


def test_missing_part_file(split, tmp_path: Path) -> None:
    manifest, _, _, _ = split

    async def go() -> None:
        async with PartHost(manifest, tmp_path) as host:
            await host.load([0])

    with pytest.raises(ModelError, match=r"does not exist|cannot load"):
        asyncio.run(go())


@pytest.mark.parametrize("tight", [False, True])
async def test_a_new_plan_loads_beside_the_old_unless_both_exceed_the_budget(
    split, tight: bool
) -> None:
    """Plan A's parts {0, 1}, then plan B's {2, 3}: with room for both, B loads while A is
    still loaded (the node serves A meanwhile); with room for one plan only, A goes first."""
    from edgenode.backends import load_runner

    manifest, directory, _, _ = split
    beside: dict[int, tuple[int, ...]] = {}  # part -> what was loaded while it loaded
    holder: list[PartHost] = []

    def factory(spec, d):
        beside[spec.index] = holder[0].loaded
        return load_runner(spec, d)

    probe = PartHost(manifest, directory)
    a, b = probe.needs_bytes([0, 1]), probe.needs_bytes([2, 3])
    assert probe.needs_bytes([0, 1, 2, 3]) > max(a, b)
    budget = max(a, b) if tight else 0  # 0: no budget
    async with PartHost(manifest, directory, factory=factory, memory_bytes=budget) as host:
        holder.append(host)
        await host.load([0, 1])
        await host.load([2, 3])
        assert host.loaded == (2, 3)
    assert beside[2] == (() if tight else (0, 1))
