"""A tiled model's request path over the in-memory transport: stripes run at once on
different nodes, each node gets only its rows, and the answer equals the whole model's."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from edgenode.backends import load_runner
from edgenode.model.graph import build_graph
from edgenode.model.split import SpatialOptions, split_model
from tests.model.test_spatial import conv_stack, image
from tests.reference import KERAS_TOLERANCE, assert_answer, reference_set
from tests.runtime.test_requests import cluster

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory):
    """conv_stack at an odd height in 2 stripes (parts 0 and 1) and a gather (part 2)."""
    model = conv_stack(23)
    directory = tmp_path_factory.mktemp("tiled")
    options = SpatialOptions(stripes=2, speed=1e9, last_op="cat")
    manifest = split_model(model, directory, spatial=options).manifest
    return model, build_graph(model), manifest, directory


async def test_a_stripe_runs_while_its_neighbour_is_still_busy(tiled) -> None:
    model, graph, manifest, _ = tiled
    gate, held = threading.Event(), threading.Event()
    armed = False
    fed: dict[str, list[str]] = {}

    def factory(spec: Any, directory: Any) -> Any:
        runner = load_runner(spec, directory)

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if armed:
                fed.setdefault(str(spec.index), []).extend(sorted(feed))
            if armed and spec.index == 0:  # stripe 0 on node a: held until released
                held.set()
                assert gate.wait(30)
            return runner(feed)

        return run

    ran: list[tuple[str, range]] = []
    stages = [("a", 0, 1), ("b", 1, 3)]
    batches = [image(model, seed, batch=1) for seed in (0, 1)]
    refs = reference_set(graph, batches, tolerance=KERAS_TOLERANCE, manifest=manifest)
    async with cluster(
        tiled, stages, factory=factory, on_stage=lambda name, parts, _s: ran.append((name, parts))
    ) as sim:
        armed = True
        request = asyncio.create_task(sim["origin"].infer(batches[1]))
        while not (held.is_set() and ("b", range(1, 2)) in ran):
            assert not request.done(), request
            await asyncio.sleep(0.01)  # polling the two nodes' progress, not waiting on time
        # b ran stripe 1 while a's stripe 0 was still held: the gather is all that waits
        assert ("b", range(2, 3)) not in ran
        gate.set()
        assert_answer(refs, 1, await asyncio.wait_for(request, 30))
    assert ran.count(("b", range(2, 3))) == 1
    # each stripe read its own rows only, never the whole image
    slices = [s.name for s in manifest.tiles.slices]
    assert fed["0"] == [slices[0]] and fed["1"] == [slices[1]]
