"""The self-benchmark gives a positive, repeatable-order-of-magnitude speed score."""

from __future__ import annotations

from edgenode.runtime.selfbench import measure_speed, total_memory_bytes


def test_speed_score_is_plausible() -> None:
    a, b = measure_speed(runs=5), measure_speed(runs=5)
    assert 1e7 < a < 1e13 and 1e7 < b < 1e13
    assert max(a, b) / min(a, b) < 10  # noisy machines, same order of magnitude


def test_total_memory() -> None:
    assert total_memory_bytes() > 2**28
