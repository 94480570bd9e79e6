"""Faults under load, with real node processes on 127.0.0.1 (harness: tests/faults.py).

Each scenario starts its own cluster of 4 nodes (5 for the replica node) on the multi_io
model cut into 4 parts, with pinned speeds that give every node one part; 8 clients send
requests, each answer checked against its own input's reference in a pool of 32 (a
ReferenceSet, tolerance KERAS_TOLERANCE); then one fault. Every request must end correct or
failed with a clear status: none lost, none wrong; the cluster must re-agree and answer
correctly afterwards. A cluster whose part hands on another request's tensors
(EDGENODE_TEST_MUTATE) has every answer counted wrong by the same check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import (
    POOL_PER_CLIENT,
    SCENARIOS,
    Cluster,
    Layout,
    Load,
    Pool,
    ScenarioResult,
    format_result,
    make_pool,
    multi_io_layout,
    run_named,
    summarize,
)
from tests.nodes import wait_until
from tests.reference import KERAS_TOLERANCE

pytestmark = [pytest.mark.tf, pytest.mark.slow]

CLIENTS = 8
AFTER_S = 2.0  # load kept after the cluster re-agrees
NODE_DEADLINE_S = 10.0
MUTATED_ANSWERS = 40  # answers counted from the cluster with a mutated part


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("split")
    split_model(models.build("multi_io"), directory, cuts=[2, 4, 6])
    return multi_io_layout(directory, deadline_s=NODE_DEADLINE_S)


@pytest.fixture(scope="module")
def pool() -> Pool:
    from edgenode.model.graph import build_graph
    from tests.model import models

    model = models.build("multi_io")
    # Keras nodes answer multi_io within 1e-6 of the whole model; its 32 answers are at least
    # 8e-4 apart, more than the 100 tolerances ReferenceSet asks (1e-5 would not be).
    count = POOL_PER_CLIENT * CLIENTS
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(count)]
    return make_pool(build_graph(model), batches, tolerance=KERAS_TOLERANCE)


def _run(key: str, layout: Layout, pool: Pool, tmp_path: Path) -> ScenarioResult:
    result = run_named(key, layout, pool, tmp_path, clients=CLIENTS, after_s=AFTER_S)
    print(format_result(result, warnings=10))  # shown with -rA or on failure
    return result


def _assert_nothing_lost_or_wrong(result: ScenarioResult) -> None:
    report = format_result(result, warnings=10)
    counts, after = result.counts, result.counts_after
    assert counts is not None, report
    assert counts.lost == 0, f"lost requests\n{report}"
    assert counts.wrong == 0, f"wrong answers\n{report}"
    assert counts.unclear == 0, f"failures without a clear status\n{report}"
    assert counts.sent == counts.correct + counts.failed_total, report
    assert not result.stuck, f"the cluster did not re-agree\n{report}"
    assert after is not None and after.correct > 0, f"no correct answer afterwards\n{report}"


@pytest.mark.parametrize(
    "key",
    [
        "kill-first",
        "kill-middle",
        "kill-final",
        "kill-extra",
        "freeze",
        "freeze-flap",
        "restart",
        "join",
    ],
)
def test_a_fault_loses_nothing_and_answers_nothing_wrong(
    key: str, layout: Layout, pool: Pool, tmp_path: Path
) -> None:
    result = _run(key, layout, pool, tmp_path)
    if result.skipped and key == "kill-extra":
        pytest.skip(result.skipped)  # the plan leaves no idle or replica node
    assert not result.skipped, result.skipped
    _assert_nothing_lost_or_wrong(result)


def test_a_killed_origin_s_requests_are_answered_by_the_others(
    layout: Layout, pool: Pool, tmp_path: Path
) -> None:
    """Clients fail over: requests in flight at the killed origin, and those sent to it
    afterwards, are re-sent to other nodes and answered correctly; none fails."""
    result = _run("kill-origin", layout, pool, tmp_path)
    report = format_result(result)
    _assert_nothing_lost_or_wrong(result)
    counts, victim = result.counts, result.victim_counts
    assert counts is not None and counts.failed_total == 0, f"failed requests\n{report}"
    assert victim is not None and victim.failed_total == 0 and victim.lost == 0, report
    assert victim.failed_over > 0, f"no request was re-sent: the fault missed\n{report}"
    assert victim.correct == victim.sent, report


def test_a_part_handing_on_another_request_s_tensors_makes_every_answer_wrong(
    layout: Layout, pool: Pool, tmp_path: Path
) -> None:
    """The check bites: whichever node runs part 1 hands on the previous request's tensors
    (EDGENODE_TEST_MUTATE, see edgenode/_mutate.py); the load that counts the fault
    scenarios right counts every answer wrong, none lost or failed."""
    from edgenode._mutate import ENV_VAR

    env = {ENV_VAR: "other@1"}
    with Cluster(
        layout.model_dir, tmp_path, layout.speeds, deadline_s=layout.deadline_s, env=env
    ) as cluster:
        load = Load([cluster.address(n) for n in cluster.names()], pool, clients=CLIENTS)
        load.start()
        try:
            wait_until(lambda: len(load.records) >= MUTATED_ANSWERS, 60, "answers")
        finally:
            records = load.stop()
        mutated = [n for n in cluster.history if "TEST ONLY: part 1 answers wrong" in n.log()]
    counts = summarize(records)
    report = (
        f"other@1: sent {counts.sent}, correct {counts.correct}, wrong {counts.wrong_text()}, "
        f"failed {counts.failed_text()}, lost {counts.lost}; smallest diff "
        f"{min(r.diff for r in records):.3g}; {list(counts.wrong_examples[:2])}"
    )
    print(report)  # shown with -rA or on failure
    assert mutated, "no node ran the mutated part"
    assert counts.sent >= MUTATED_ANSWERS, report
    assert counts.wrong == counts.sent, report
    assert all(r.diff > 100 * KERAS_TOLERANCE for r in records), report


def test_every_scenario_is_covered() -> None:
    assert set(SCENARIOS) == {
        "kill-first",
        "kill-middle",
        "kill-final",
        "kill-extra",
        "kill-origin",
        "freeze",
        "freeze-flap",
        "restart",
        "join",
    }
