"""NodeControl: the status a node reports about itself, part run times included."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from edgenode.runtime.control import RECENT_RUNS, NodeControl
from edgenode.runtime.negotiation import PlanState
from tests.runtime.fakes import chain_manifest, peer_info


def control(tmp_path: Path) -> NodeControl:
    manifest = chain_manifest(3)
    me = peer_info("a", 1, manifest)
    return NodeControl(
        local=lambda: me,
        address=lambda: "127.0.0.1:1",
        plan=lambda: PlanState(computed=None, agreed=None, members=(), version=0),
        loaded=lambda: (0, 1),
        served=lambda: 0,
        peers=lambda: (),
        manifest=manifest,
        directory=tmp_path,
        clock=lambda: 10.0,
    )


def test_part_run_times_give_the_mean_of_all_and_percentiles_of_the_recent(tmp_path) -> None:
    c = control(tmp_path)
    assert c.status().stages == ()  # no run yet: nothing to report
    runs = [i / 1000 for i in range(1, 301)]  # 1 ms .. 300 ms, in order
    for seconds in runs:
        c.record_stage(1, seconds)
    c.record_stage(0, 0.005)
    zero, one = c.status().stages
    assert (zero.part, zero.count, zero.mean_s, zero.p50_s, zero.p90_s) == (
        0,
        1,
        0.005,
        0.005,
        0.005,
    )
    recent = runs[-RECENT_RUNS:]  # 45 ms .. 300 ms
    assert one.part == 1 and one.count == 300
    assert one.mean_s == pytest.approx(statistics.fmean(runs))
    assert one.p50_s == pytest.approx(statistics.median(recent))
    # interpolated (edgenode._stats.percentile): 0.9 * 255 = 229.5, half-way between ranks
    assert one.p90_s == pytest.approx((recent[229] + recent[230]) / 2)


def _plan(*stages: tuple[str, int, int]) -> PlanState:
    from edgenode.planning import ClusterPlan
    from edgenode.planning.cluster import Assignment

    members = tuple(sorted({node for node, _, _ in stages} | {"a"}))
    plan = ClusterPlan(
        manifest_digest="m",
        members=members,
        assignments=tuple(Assignment(node_id=n, start=s, stop=e) for n, s, e in stages),
        idle=(),
        bottleneck_s=1.0,
        latency_s=1.0,
    )
    return PlanState(computed=plan, agreed=plan, members=members, version=1)


@pytest.mark.parametrize(
    ("plan", "loaded", "owned", "state"),
    [
        (None, (), (), "waiting"),
        (None, (0, 1), (), "waiting"),  # parts of a plan since replaced by none
        ((("a", 0, 3), ("b", 3, 7)), (0, 1, 2), (0, 1, 2), "ready"),
        ((("a", 0, 3), ("b", 3, 7)), (0, 1, 2, 3, 4, 5, 6), (0, 1, 2), "unloading"),
        ((("a", 0, 3), ("b", 3, 7)), (1,), (0, 1, 2), "loading"),
        ((("a", 3, 6), ("b", 0, 3)), (0, 1, 2), (3, 4, 5), "loading"),  # old parts, new not yet
        ((("b", 0, 7),), (), (), "ready"),  # idle
        ((("b", 0, 7),), (0,), (), "unloading"),
    ],
)  # fmt: skip
def test_status_tells_the_parts_the_plan_gives_from_the_parts_loaded(
    tmp_path, plan, loaded, owned, state
) -> None:
    c = control(tmp_path)
    c.plan = lambda: (
        _plan(*plan) if plan else PlanState(computed=None, agreed=None, members=(), version=0)
    )
    c.loaded = lambda: loaded
    status = c.status()
    assert (status.owned, status.parts, status.state) == (owned, loaded, state)


def test_status_counts_requests_entered_here_apart_from_part_runs(tmp_path) -> None:
    c = control(tmp_path)
    c.served, c.failed = (lambda: 3), (lambda: 1)
    for part, seconds in [(0, 0.1), (1, 0.2), (0, 0.1), (1, 0.2), (1, 0.2)]:
        c.record_stage(part, seconds)
    status = c.status()
    assert (status.requests_served, status.requests_failed, status.part_runs) == (3, 1, 5)
