"""End to end with real node processes: a cluster's wire format, as its answers show it.

float32 (the default) is bit-exact: the cluster answers what the parts chained here answer.
int8: the answer is within a tolerance derived from the int8 scales of the hops: the error
that quantizing each crossing tensor by its own scale (within scale/2 per element) causes in
the final outputs, measured by running the parts here with the codec on the agreed plan's
hops, doubled.
The same check refuses another input's answer, and the float32 tolerance refuses the int8
answer: the hops were encoded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.nodes import node_config, running_cluster

pytestmark = [pytest.mark.tf, pytest.mark.slow]

INPUTS = 4
NOISE = 1e-5  # Keras in another process (tests/reference.py: NODE_TOLERANCE)


def _split(directory: Path, wire_format: str) -> dict[str, Any]:
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model
    from tests.model import models

    model = models.build("multi_io")
    result = split_model(model, directory, cuts=[2, 4, 6], wire_format=wire_format)  # type: ignore[arg-type]
    return {"model": model, "graph": build_graph(model), "result": result, "dir": directory}


def _answers(address: str, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    from edgenode.transport import ControlClient, run

    async def go() -> list[dict[str, np.ndarray]]:
        client = ControlClient()
        try:
            return [await client.infer(address, b, timeout_s=60) for b in batches]
        finally:
            await client.aclose()

    return run(go())


def _travel(x: np.ndarray, fmt: str) -> np.ndarray:
    from edgenode.transport.codec import FrameDecoder, RequestId, Tensor, encode_frames

    decoder = FrameDecoder()
    tensor = Tensor(RequestId("r"), "t", x, "", fmt)  # type: ignore[arg-type]
    [got] = [t for f in encode_frames([tensor]) for t in decoder.feed(f)]
    return np.asarray(got.array)


def _chain(split: dict[str, Any], inputs: dict[str, np.ndarray], encoded: set[int], fmt: str):
    """The parts chained here, the non-final outputs of the parts in ``encoded`` sent through
    the codec in ``fmt``; the final outputs by the model's names."""
    result = split["result"]
    finals = set(result.manifest.model.outputs)
    values: dict[str, np.ndarray] = dict(inputs)
    for part in result.parts:
        out = part.model({n: values[n] for n in part.inputs}, training=False)
        for name, t in out.items():
            array = np.asarray(t)
            cross = part.index in encoded and name not in finals
            values[name] = _travel(array, fmt) if cross else array
    return result.manifest.model.name_outputs({n: values[n] for n in result.graph.outputs})


def _diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(np.asarray(a[n], np.float64) - b[n]).max()) for n in a)


def _crossings(found: dict[str, dict[str, Any]], parts: int) -> list[set[int]]:
    """Per replica of the agreed plan: the parts whose outputs leave their node."""
    plan = next(iter(found.values()))["plan"]  # agreed: the same on every node
    by_replica: dict[int, dict[int, str]] = {}
    for a in plan["assignments"]:
        owners = by_replica.setdefault(int(a.get("replica", 0)), {})
        owners.update(dict.fromkeys(range(a["start"], a["stop"]), a["node_id"]))
    return [
        {i for i in range(parts - 1) if owners.get(i) != owners.get(i + 1)}
        for owners in by_replica.values()
    ]


def _cluster_answers(tmp_path: Path, fmt: str):
    from tests.model import models

    split = _split(tmp_path / f"split-{fmt}", fmt)
    assert split["result"].manifest.wire_format == fmt
    batches = [models.sample_inputs(split["model"], seed=s, batch=1) for s in range(INPUTS)]
    workdir = tmp_path / fmt
    workdir.mkdir()
    with running_cluster(split["dir"], workdir, config=node_config(workdir)) as (
        nodes,
        found,
    ):
        owners = [st for st in found.values() if st["parts"]]
        assert len(owners) >= 2, "the plan should spread the parts over several nodes"
        answers = _answers(nodes[0].address, batches)
    crossings = _crossings(found, len(split["result"].parts))
    assert any(crossings), f"no part's output crosses nodes: {crossings}"
    return split, batches, answers, crossings


def test_float32_cluster_is_bit_exact(tmp_path: Path) -> None:
    split, batches, answers, _ = _cluster_answers(tmp_path, "float32")
    locals_ = [_chain(split, b, set(), "float32") for b in batches]
    for i, answer in enumerate(answers):
        assert _diff(answer, locals_[i]) == 0.0, f"input {i}"
    # the reference moves with its input: another input's answer is not bit-equal
    assert all(_diff(answers[0], locals_[j]) > 1e-3 for j in range(1, INPUTS))


def test_int8_cluster_answers_within_the_scale_of_its_hops(tmp_path: Path) -> None:
    from edgenode.model.slicing import run_model

    split, batches, answers, crossings = _cluster_answers(tmp_path, "int8")
    graph, manifest = split["graph"], split["result"].manifest
    wholes = []
    tolerances = []
    for b in batches:
        outs = run_model(graph, b)
        whole = manifest.model.name_outputs({n: outs[n] for n in graph.outputs})
        wholes.append(whole)
        # what int8 on the plan's hops does to this input's answer, in either replica
        errors = [_diff(_chain(split, b, hops, "int8"), whole) for hops in crossings]
        assert max(errors) > 10 * NOISE, "int8 on these hops should change the answer"
        tolerances.append(2 * max(errors) + NOISE)
    for i, answer in enumerate(answers):
        diff = _diff(answer, wholes[i])
        assert diff <= tolerances[i], f"input {i}: {diff:.3g} > {tolerances[i]:.3g}"
        # the same check refuses the answer for any other input
        for j in range(INPUTS):
            if j != i:
                assert _diff(answer, wholes[j]) > tolerances[i], f"input {i} passes as {j}"
    # the hops were encoded: a float32 cluster's tolerance refuses these answers
    assert max(_diff(a, w) for a, w in zip(answers, wholes, strict=True)) > NOISE
