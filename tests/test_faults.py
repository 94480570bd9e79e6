"""Faults under load, with real node processes on 127.0.0.1 (harness: tests/faults.py).

Each scenario starts its own cluster of 4 nodes (5 for the replica node) on the multi_io
model cut into 4 parts, with pinned speeds that give every node one part; 8 clients send
requests whose answers are checked against the whole model run locally; then one fault.
Every request must end correct or failed with a clear status: none lost, none wrong; the
cluster must re-agree and answer correctly afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import (
    SCENARIOS,
    Layout,
    Sample,
    ScenarioResult,
    format_result,
    make_samples,
    multi_io_layout,
    run_named,
)

pytestmark = [pytest.mark.tf, pytest.mark.slow]

CLIENTS = 8
AFTER_S = 2.0  # load kept after the cluster re-agrees
NODE_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("split")
    split_model(models.build("multi_io"), directory, cuts=[2, 4, 6])
    return multi_io_layout(directory, deadline_s=NODE_DEADLINE_S)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    from edgenode.model.graph import build_graph
    from tests.model import models

    model = models.build("multi_io")
    batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(16)]
    return make_samples(build_graph(model), batches)


def _run(key: str, layout: Layout, samples: list[Sample], tmp_path: Path) -> ScenarioResult:
    result = run_named(key, layout, samples, tmp_path, clients=CLIENTS, after_s=AFTER_S)
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
    key: str, layout: Layout, samples: list[Sample], tmp_path: Path
) -> None:
    result = _run(key, layout, samples, tmp_path)
    if result.skipped and key == "kill-extra":
        pytest.skip(result.skipped)  # the plan leaves no idle or replica node
    assert not result.skipped, result.skipped
    _assert_nothing_lost_or_wrong(result)


def test_a_killed_origin_s_requests_are_answered_by_the_others(
    layout: Layout, samples: list[Sample], tmp_path: Path
) -> None:
    """Clients fail over: requests in flight at the killed origin, and those sent to it
    afterwards, are re-sent to other nodes and answered correctly; none fails."""
    result = _run("kill-origin", layout, samples, tmp_path)
    report = format_result(result)
    _assert_nothing_lost_or_wrong(result)
    counts, victim = result.counts, result.victim_counts
    assert counts is not None and counts.failed_total == 0, f"failed requests\n{report}"
    assert victim is not None and victim.failed_total == 0 and victim.lost == 0, report
    assert victim.failed_over > 0, f"no request was re-sent: the fault missed\n{report}"
    assert victim.correct == victim.sent, report


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
