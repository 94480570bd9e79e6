"""End to end with real node processes: `edgenode infer` equals the whole model run locally.

Every answer is checked against its own input's reference in a ReferenceSet of several
inputs (tests/reference.py): a reference that did not move with its input, or an answer
that belongs to another request, fails.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.nodes import agreed_cluster, node_config, running_cluster, start_nodes
from tests.nodes import cli as _cli
from tests.reference import APPLICATION_TOLERANCE, KERAS_TOLERANCE, assert_answer, reference_set

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def multi_io(tmp_path_factory: pytest.TempPathFactory):
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("split")
    model = models.build("multi_io")
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    return model, build_graph(model), manifest, directory


@pytest.fixture
def nodes(multi_io, tmp_path: Path):
    _, _, _, directory = multi_io
    with running_cluster(directory, tmp_path) as (started, found):
        owners = [st for st in found.values() if st["parts"]]
        assert len(owners) >= 2, "the plan should spread the parts over several nodes"
        yield started


def test_cli_answer_equals_the_local_model(multi_io, nodes, tmp_path: Path) -> None:
    from tests.model import models

    model, graph, manifest, _ = multi_io
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(3)]
    files = []
    for i, inputs in enumerate(batches):
        np.savez(tmp_path / f"x{i}.npz", **inputs)
        files.append(str(tmp_path / f"x{i}.npz"))
    out = _cli("infer", *files, "--peer", nodes[1].address,
               "--save-outputs", str(tmp_path / "y.npz"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["summary"]["images"] == 3
    refs = reference_set(graph, batches, tolerance=KERAS_TOLERANCE, manifest=manifest)
    got = np.load(tmp_path / "y.npz")
    # the model's names (finals of different parts), per input file
    assert set(got.files) == {f"x{i}.npz/{n}" for i in range(3) for n in ("early", "late")}
    for i in range(3):
        assert_answer(refs, i, {n: got[f"x{i}.npz/{n}"] for n in ("early", "late")})


def test_32_concurrent_requests_through_any_node(multi_io, nodes) -> None:
    from edgenode.transport import ControlClient, run
    from tests.model import models

    model, graph, manifest, _ = multi_io
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(32)]

    async def go():
        client = ControlClient(protocol=1)
        try:
            return await asyncio.gather(
                *(
                    client.infer(nodes[i % 3].address, b, timeout_s=60)
                    for i, b in enumerate(batches)
                )
            )
        finally:
            await client.aclose()

    outs = run(go())
    refs = reference_set(graph, batches, tolerance=KERAS_TOLERANCE, manifest=manifest)
    for i, out in enumerate(outs):
        assert_answer(refs, i, out)


def test_bad_inputs_are_one_line_errors(nodes, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = _cli("infer", str(broken), "--peer", nodes[0].address)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("edgenode: error: ") and "broken.jpg" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((1, 3), np.float32))
    out = _cli("infer", str(wrong), "--peer", nodes[0].address)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1


def test_no_cluster_is_a_clear_error(tmp_path: Path) -> None:
    image = Path(__file__).parents[1] / "edgenode" / "data" / "images" / "cat.jpg"
    out = _cli("infer", str(image), "--peer", "127.0.0.1:9")
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "127.0.0.1:9" in out.stderr


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory):
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import load_model
    from edgenode.model.split import split_model

    directory = tmp_path_factory.mktemp("mobilenet")
    model = load_model("MobileNetV3Large", logits=True)  # calibrated random weights
    manifest = split_model(model, directory, parts=8).manifest
    return build_graph(model), manifest, directory


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_mobilenet_v3_large_on_n_nodes(mobilenet, tmp_path: Path, count: int) -> None:
    from edgenode.model.calibrate import calibration_batch
    from edgenode.transport import ControlClient, run

    graph, manifest, directory = mobilenet
    # equal pinned speeds: the plan depends on the model, not on benchmark noise
    config = node_config(tmp_path, speed_gflops=20.0)
    names = [f"n{i}" for i in range(count)]
    with running_cluster(directory, tmp_path, names, config=config) as (started, found):
        owners = [st for st in found.values() if st["parts"]]
        assert len(owners) == count  # equal speeds, 8 parts: every node gets some
        pictures = calibration_batch((224, 224, 3), 100 + count, count=33)  # photo-like
        batches = [{"input": pictures[i : i + 1]} for i in range(33)]

        async def go():
            client = ControlClient(protocol=1)
            try:
                single = await client.infer(started[0].address, batches[0], timeout_s=120)
                many = await asyncio.gather(
                    *(
                        client.infer(started[i % count].address, b, timeout_s=120)
                        for i, b in enumerate(batches[1:])
                    )
                )
                return [single, *many]
            finally:
                await client.aclose()

        outs = run(go())
        refs = reference_set(graph, batches, tolerance=APPLICATION_TOLERANCE, manifest=manifest)
        for i, out in enumerate(outs):
            assert_answer(refs, i, out)  # logits: the softmax of random weights barely moves


def test_a_flood_is_refused_with_resource_exhausted_and_nothing_is_lost(
    multi_io, tmp_path: Path
) -> None:
    from edgenode.errors import Overloaded
    from edgenode.transport import ControlClient, run
    from tests.model import models

    model, graph, manifest, directory = multi_io
    config = node_config(tmp_path, extra="[limits]\nmax_inflight_requests = 2\n")
    started = start_nodes(directory, tmp_path, ("a", "b"), config=config)
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(16)]

    async def flood() -> list[Any]:
        client = ControlClient(protocol=1)
        try:
            return await asyncio.gather(
                *(client.infer(started[0].address, b, timeout_s=60) for b in batches),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    try:
        for node in started:
            node.wait_serving()
        found = agreed_cluster(started, {"a", "b"})
        assert found["a"]["parts"] and found["b"]["parts"]
        started[1].signal(signal.SIGSTOP)  # b holds what a sends it: nothing completes
        outs = run(flood())
    finally:
        started[1].signal(signal.SIGCONT)
        for node in started:
            node.stop()
    refused = [o for o in outs if isinstance(o, Overloaded)]  # RESOURCE_EXHAUSTED
    answered = [(i, o) for i, o in enumerate(outs) if isinstance(o, dict)]
    assert len(refused) == 12 and len(answered) == 4, outs  # 2 running + 2 waiting
    assert all("busy: 2 requests running and 2 waiting" in str(e) for e in refused)
    refs = reference_set(graph, batches, tolerance=KERAS_TOLERANCE, manifest=manifest)
    for i, out in answered:  # b was dropped while frozen: re-sent, still right
        assert_answer(refs, i, out)
