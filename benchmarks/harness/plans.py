"""The plan the nodes would compute, offline, and how to read one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.report import say, two_digits

if TYPE_CHECKING:
    from edgenode.planning import Assignment


def offline_plan(manifest: Any, node_ids: Sequence[str], speed_gflops: float) -> Any:
    """The plan the nodes compute: same planner, link model and inputs as the negotiation."""
    from edgenode.planning import NodeSpec, plan_cluster
    from edgenode.runtime.negotiation import DEFAULT_LINK
    from edgenode.runtime.selfbench import total_memory_bytes

    members = [
        NodeSpec(node_id=n, speed=speed_gflops * 1e9, memory_bytes=total_memory_bytes())
        for n in node_ids
    ]
    return plan_cluster(
        manifest.cost_graph(), members, DEFAULT_LINK, manifest_digest=manifest.digest
    )


def stage_ranges(assignments: Sequence[Assignment], replica: int = 0) -> list[tuple[str, int, int]]:
    """(node, start, stop) of one replica's stages in pipeline order."""
    rows = [(a.node_id, a.start, a.stop) for a in assignments if a.replica == replica]
    return sorted(rows, key=lambda r: r[1])


def describe_plan(assignments: Sequence[Assignment]) -> str:
    """'[0] [1] [2-3] [4]': the parts of each stage; further pipelines as '+ replica [..]'."""
    replicas = sorted({a.replica for a in assignments})
    texts = []
    for r in replicas:
        stages = stage_ranges(assignments, r)
        texts.append(" ".join(f"[{a}]" if b - a == 1 else f"[{a}-{b - 1}]" for _, a, b in stages))
    return " + replica ".join(texts) if texts else "(none)"


def plan_ok(plan: Any, stages: int, one_part_each: bool) -> bool:
    ranges = stage_ranges(plan.assignments)
    return (
        plan.replicas == 1
        and not plan.idle
        and len(ranges) == stages
        and (not one_part_each or all(b - a == 1 for _, a, b in ranges))
    )


def planning_speed(
    manifest: Any, groups: Sequence[Sequence[str]], calibrated: float, *, one_part_each: bool
) -> float:
    """The highest speed (calibrated, halved step by step) at which the planner uses every
    node of each group as a stage of one pipeline (no replica, no idle node)."""
    speed = calibrated
    for _ in range(16):
        if all(plan_ok(offline_plan(manifest, g, speed), len(g), one_part_each) for g in groups):
            return speed
        speed = two_digits(speed / 2)
    say(f"warning: no speed makes the planner use all nodes; using {speed} GFLOP/s")
    return speed
