"""Mutation tests in a real 3-process cluster: wrong routings are reported wrong, right ones right.

Each cluster is three `edgenode run` processes on 127.0.0.1 serving a split of a real
Keras model. In the mutated clusters every node gets EDGENODE_TEST_MUTATE=KIND@PART
(read by the CLI only, see edgenode/_mutate.py), so whichever node the plan gives that
part breaks its outputs: two same-shaped tensors swapped, another request's tensors, a
zeroed tensor, or the part skipped. The answers, sent one at a time, each go through
``ReferenceSet.check`` against its own input's reference: the unmutated cluster is
right every time, each mutated one wrong every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgenode._mutate import ENV_VAR
from edgenode.verify import ReferenceSet
from tests.model import models
from tests.nodes import NodeProcess, running_cluster
from tests.reference import NODE_TOLERANCE, reference_set

pytestmark = [pytest.mark.tf, pytest.mark.slow]

REQUESTS = 4


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory):
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model

    directory = tmp_path_factory.mktemp("twin")
    model = models.build("twin_branches")
    manifest = split_model(model, directory, cuts=models.TWIN_CUTS).manifest
    batches = [models.sample_inputs(model, seed=seed, batch=1) for seed in range(REQUESTS)]
    refs = reference_set(build_graph(model), batches, tolerance=NODE_TOLERANCE, manifest=manifest)
    return directory, batches, refs


def cluster_answers(
    twin, tmp_path: Path, mutation: str | None
) -> tuple[list[dict[str, np.ndarray]], list[NodeProcess]]:
    """Three nodes (every one given ``mutation``), the answers to the inputs in order."""
    from edgenode.transport import ControlClient, run

    directory, batches, _ = twin
    env = {ENV_VAR: mutation} if mutation else {}

    async def ask(nodes: list[NodeProcess]) -> list[dict[str, Any]]:
        client = ControlClient()
        try:  # one at a time: "other" hands each request the previous one's tensors
            return [await client.infer(nodes[0].address, b, timeout_s=60) for b in batches]
        finally:
            await client.aclose()

    with running_cluster(directory, tmp_path, env=env) as (nodes, found):
        assert sum(1 for st in found.values() if st["parts"]) >= 2, "the plan should spread"
        return run(ask(nodes)), nodes


def test_the_unmutated_cluster_answers_right(twin, tmp_path: Path) -> None:
    refs: ReferenceSet = twin[2]
    answers, nodes = cluster_answers(twin, tmp_path, None)
    for i, answer in enumerate(answers):
        verdict = refs.check(i, answer)
        assert verdict.ok, verdict.detail
    assert not any("TEST ONLY" in node.log() for node in nodes)


@pytest.mark.parametrize("mutation", ["swap@0", "other@1", "zero@1", "skip@2"])
def test_a_mutated_cluster_is_caught(twin, tmp_path: Path, mutation: str) -> None:
    refs: ReferenceSet = twin[2]
    answers, nodes = cluster_answers(twin, tmp_path, mutation)
    verdicts = [refs.check(i, answer) for i, answer in enumerate(answers)]
    assert not any(v.ok for v in verdicts), [v.detail for v in verdicts]
    if mutation.startswith("other"):
        # An earlier request's answer, named as such. Which one depends on the plan: with
        # replica pipelines each replica's part hands on its own previous request's
        # tensors (and the first request through a part gets its warm-up's, nobody's).
        assert all(v.matched is None or v.matched < i for i, v in enumerate(verdicts))
        assert any(v.matched is not None for v in verdicts)
    else:
        assert all(v.matched is None for v in verdicts)
    part = mutation.split("@")[1]
    marked = [n for n in nodes if f"TEST ONLY: part {part} answers wrong" in n.log()]
    assert marked  # whichever node loaded that part (before and after agreeing) broke it


def test_a_bad_mutation_is_a_one_line_error(twin, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "run", "--insecure", "--name", "x",
         "--listen", "127.0.0.1:0", "--model", str(twin[0]), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, ENV_VAR: "flip@1"},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "edgenode: error: EDGENODE_TEST_MUTATE: expected KIND@PART with KIND one of "
        "swap, other, zero, skip, got 'flip@1'"
    )
