"""The request path sends intermediate tensors in the manifest's wire format, the rest exact.

Parts are small numpy functions (no TensorFlow), so each answer can be predicted exactly:
the same chain run locally with each crossing tensor put through the codec, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from edgenode.model.manifest import WIRE_FORMATS, Manifest, PartSpec
from edgenode.planning import Assignment, ClusterPlan
from edgenode.runtime.parts import PartHost
from edgenode.runtime.requests import Router
from edgenode.transport import MemoryNetwork
from edgenode.transport.codec import FrameDecoder, RequestId, Tensor, encode_frames
from tests.runtime.fakes import chain_manifest

PARTS = 3


class Affine:
    """Part i: x * (i + 1.37) + (i - 0.5), in float32: a different answer for every input."""

    def __init__(self, spec: PartSpec) -> None:
        self.inputs = tuple(t.name for t in spec.inputs)
        self.outputs = tuple(t.name for t in spec.outputs)
        self.k = np.float32(spec.index + 1.37)
        self.b = np.float32(spec.index - 0.5)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        [x] = inputs.values()
        return {self.outputs[0]: (x * self.k + self.b).astype(np.float32)}


def travel(x: np.ndarray, fmt: str) -> np.ndarray:
    """What the codec delivers of a float32 array sent in ``fmt``."""
    decoder = FrameDecoder()
    tensor = Tensor(RequestId("r"), "t", x, "", fmt)  # type: ignore[arg-type]
    [got] = [t for f in encode_frames([tensor]) for t in decoder.feed(f)]
    return got.array


def predict(manifest: Manifest, x: np.ndarray, crossing: set[int], fmt: str) -> np.ndarray:
    """The chain run locally; the output of each part in ``crossing`` goes through the codec."""
    for spec in manifest.parts:
        x = Affine(spec)({"x": x})[spec.outputs[0].name]
        if spec.index in crossing:
            x = travel(x, fmt)
    return x


def plan_of(manifest: Manifest, stages: list[tuple[str, int, int]]) -> ClusterPlan:
    return ClusterPlan(
        manifest_digest=manifest.identity,
        members=tuple(sorted({s[0] for s in stages} | {"origin"})),
        assignments=tuple(Assignment(node_id=n, start=a, stop=b, replica=0) for n, a, b in stages),
        idle=(),
        bottleneck_s=0.0,
        latency_s=0.0,
    )


@contextlib.asynccontextmanager
async def cluster(manifest: Manifest, stages: list[tuple[str, int, int]]) -> AsyncIterator[Router]:
    """Routers over the in-memory transport; yields the origin's."""
    plan = plan_of(manifest, stages)
    network = MemoryNetwork()
    routers: dict[str, Router] = {}
    tasks = []
    async with contextlib.AsyncExitStack() as stack:
        for name in plan.members:
            transport = await stack.enter_async_context(network.transport(f"addr-{name}"))
            host = await stack.enter_async_context(
                PartHost(manifest, Path("."), factory=lambda spec, _d: Affine(spec))
            )
            await host.load(plan.parts_of(name))
            routers[name] = Router(
                node_id=name,
                manifest=manifest,
                host=host,
                transport=transport,
                plan=lambda: plan,
                address_of=lambda node: f"addr-{node}" if node in routers else None,
                deadline_s=10.0,
            )
        tasks = [asyncio.create_task(r.run()) for r in routers.values()]
        try:
            yield routers["origin"]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def manifest_in(fmt: str) -> Manifest:
    return dataclasses.replace(chain_manifest(PARTS), wire_format=fmt)  # type: ignore[arg-type]


def inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 256)).astype(np.float32) * 4


STAGINGS = {
    "one part per node": ([("a", 0, 1), ("b", 1, 2), ("c", 2, 3)], {0, 1}),
    "two parts on one node": ([("a", 0, 2), ("b", 2, 3)], {1}),
    "origin runs the first part": ([("origin", 0, 1), ("b", 1, 3)], {0}),
    "all on the origin": ([("origin", 0, 3)], set()),
}


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
@pytest.mark.parametrize("staging", list(STAGINGS))
async def test_only_tensors_between_nodes_are_encoded(fmt: str, staging: str) -> None:
    stages, crossing = STAGINGS[staging]
    manifest = manifest_in(fmt)
    final = manifest.model.outputs[0]
    async with cluster(manifest, stages) as origin:
        for seed in range(3):
            x = inputs(seed)
            answer = (await origin.infer({"input": x}))[final]
            expected = predict(manifest, x, crossing, fmt)
            np.testing.assert_array_equal(answer, expected)
            exact = predict(manifest, x, set(), "float32")
            if fmt == "float32" or not crossing:
                np.testing.assert_array_equal(answer, exact)
            else:  # the encoding happened, and the prediction would have caught its absence
                assert not np.array_equal(answer, exact)
                # ... and the final output was not encoded on its way to the origin
                assert not np.array_equal(answer, travel(answer, fmt))


async def test_a_wrong_prediction_is_caught() -> None:
    """The same comparison fails for an answer predicted with the wrong hops encoded."""
    manifest = manifest_in("int8")
    stages, crossing = STAGINGS["one part per node"]
    async with cluster(manifest, stages) as origin:
        x = inputs(0)
        answer = (await origin.infer({"input": x}))[manifest.model.outputs[0]]
    for wrong in ({0}, {1}, {0, 1, 2}):
        assert wrong != crossing
        assert not np.array_equal(answer, predict(manifest, x, wrong, "int8"))
    other_input = predict(manifest, inputs(1), crossing, "int8")
    assert not np.array_equal(answer, other_input)  # the reference moves with the input
