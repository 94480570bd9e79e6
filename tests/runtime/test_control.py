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
    assert one.p90_s == pytest.approx(recent[231 - 1])  # nearest rank: ceil(0.9 * 256) = 231
