"""Mutation tests, in memory: wrong routings are reported wrong by the check that passes right ones.

Real parts of a real Keras model on four in-memory nodes, one part each, so every
part's outputs cross to another node. One part's runner is wrapped
(``edgenode._mutate``, the same wrapper `edgenode run` uses under
EDGENODE_TEST_MUTATE) to send the next stage two same-shaped tensors swapped, another
request's tensors, a zeroed tensor, or its own inputs (the part skipped). Each answer
goes through ``ReferenceSet.check``, which accepts every answer of the unmutated cluster.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgenode._mutate import MutatedRunner, Mutation, mutating
from edgenode.backends import load_runner
from edgenode.errors import UsageError
from edgenode.model.manifest import OutputSpec, PartSpec, TensorSpec
from edgenode.verify import ReferenceSet
from tests.model import models
from tests.reference import NODE_TOLERANCE, reference_set
from tests.runtime.test_requests import cluster

REQUESTS = 4
ONE_PART_PER_NODE = [("a", 0, 1), ("b", 1, 2), ("c", 2, 3), ("d", 3, 4)]


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory):
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model

    directory = tmp_path_factory.mktemp("twin")
    model = models.build("twin_branches")
    manifest = split_model(model, directory, cuts=models.TWIN_CUTS).manifest
    return model, build_graph(model), manifest, directory


@pytest.fixture(scope="module")
def batches(twin) -> list[dict[str, np.ndarray]]:
    model = twin[0]
    return [models.sample_inputs(model, seed=seed, batch=1) for seed in range(REQUESTS)]


@pytest.fixture(scope="module")
def refs(twin, batches) -> ReferenceSet:
    _, graph, manifest, _ = twin
    return reference_set(graph, batches, tolerance=NODE_TOLERANCE, manifest=manifest)


async def answers(twin, batches, factory=None) -> list[dict[str, np.ndarray]]:
    """The cluster's answers, one request at a time (so "other" sees the previous one)."""
    async with cluster(twin, ONE_PART_PER_NODE, factory=factory) as sim:
        return [await sim["origin"].infer(batch) for batch in batches]


@pytest.mark.tf
async def test_the_unmutated_cluster_answers_right(twin, batches, refs) -> None:
    for i, answer in enumerate(await answers(twin, batches)):
        verdict = refs.check(i, answer)
        assert verdict.ok, verdict.detail
    assert refs.spread() > 100 * NODE_TOLERANCE


@pytest.mark.tf
@pytest.mark.parametrize(
    "text",
    [
        "swap@0",  # part 0 sends "left" as "right" and "right" as "left"
        "other@1",  # part 1 sends the previous request's "mix"
        "zero@1",  # part 1 sends zeros as "mix"
        "skip@2",  # part 2 does not run: its input "mix" goes on as "act"
    ],
)
async def test_a_mutated_cluster_is_caught(twin, batches, refs, text: str) -> None:
    factory = mutating(load_runner, Mutation.parse(text))
    verdicts = [refs.check(i, a) for i, a in enumerate(await answers(twin, batches, factory))]
    assert not any(v.ok for v in verdicts), [v.detail for v in verdicts]
    assert all(v.worst == "logits" and np.isfinite(v.diff) for v in verdicts)
    if text.startswith("other"):
        # each answer is exactly the previous request's: the check says whose
        # (the first got the warm-up's tensors, computed from zeros: nobody's)
        assert [v.matched for v in verdicts] == [None, *range(REQUESTS - 1)]
        assert verdicts[1].detail.endswith("(equals the reference of input 0)")
    else:
        assert all(v.matched is None for v in verdicts)


# -- the wrapper itself, without TensorFlow ---------------------------------------------------


def _spec(inputs: dict[str, tuple], outputs: dict[str, tuple]) -> PartSpec:
    return PartSpec(
        index=3, file="part-3.keras", sha256="0" * 64,
        inputs=tuple(TensorSpec(name=n, shape=s, dtype="float32") for n, s in inputs.items()),
        outputs=tuple(
            OutputSpec(name=n, shape=s, dtype="float32", final=False) for n, s in outputs.items()
        ),
        start=0, stop=1, macs=0, flops=0, param_bytes=0,
    )  # fmt: skip


class _Doubler:
    inputs = ("x",)
    outputs = ("a", "b")

    def __call__(self, feed):
        return {"a": feed["x"] * 2, "b": feed["x"] * 3}


def test_mutations_break_outputs_as_their_names_say() -> None:
    spec = _spec({"x": (None, 2)}, {"a": (None, 2), "b": (None, 2)})
    x = {"x": np.array([[1.0, 2.0]], np.float32)}
    y = {"x": np.array([[5.0, 7.0]], np.float32)}
    swap = MutatedRunner(_Doubler(), spec, "swap")(x)
    assert swap["a"].tolist() == [[3.0, 6.0]] and swap["b"].tolist() == [[2.0, 4.0]]
    zero = MutatedRunner(_Doubler(), spec, "zero")(x)
    assert zero["a"].tolist() == [[0.0, 0.0]] and zero["b"].tolist() == [[3.0, 6.0]]
    other = MutatedRunner(_Doubler(), spec, "other")
    other(x)
    assert other(y)["a"].tolist() == [[2.0, 4.0]]  # x's, not y's
    with pytest.raises(UsageError, match="cannot be skipped: no input of shape"):
        MutatedRunner(_Doubler(), spec, "skip")
    skip_spec = _spec({"x": (None, 2), "z": (None, 2)}, {"a": (None, 2), "b": (None, 2)})
    skip = MutatedRunner(_Doubler(), skip_spec, "skip")({**x, "z": y["x"]})
    assert skip["a"].tolist() == [[1.0, 2.0]] and skip["b"].tolist() == [[5.0, 7.0]]
    one = _spec({"x": (None, 2)}, {"a": (None, 2), "b": (None, 3)})
    with pytest.raises(UsageError, match="no two outputs of one shape to swap"):
        MutatedRunner(_Doubler(), one, "swap")


def test_only_the_named_part_is_wrapped() -> None:
    factory = mutating(lambda spec, d: _Doubler(), Mutation.parse("zero@3"))
    spec = _spec({"x": (None, 2)}, {"a": (None, 2), "b": (None, 2)})
    assert isinstance(factory(spec, None), MutatedRunner)  # type: ignore[arg-type]
    other = dataclasses.replace(spec, index=2)
    assert isinstance(factory(other, None), _Doubler)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["swap", "swap@", "flip@1", "zero@x", "@1", ""])
def test_bad_mutation_specs_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="EDGENODE_TEST_MUTATE: expected KIND@PART"):
        Mutation.parse(text)
