"""Setups measured in interleaved rounds, and the per-metric median over the rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from harness.report import say

T = TypeVar("T")


def interleaved(
    setups: Sequence[T],
    rounds: int,
    run: Callable[[T], Any],
    *,
    label: Callable[[T], str],
    what: str = "round",
) -> dict[str, list[Any]]:
    """``run`` every setup once per round, setups in turn within a round, so that a noisy
    moment hits all of them alike; each setup's results in round order."""
    runs: dict[str, list[Any]] = {label(s): [] for s in setups}
    for number in range(rounds):
        for setup in setups:
            say(f"{what} {number + 1}/{rounds}: {label(setup)} ...")
            runs[label(setup)].append(run(setup))
    return runs


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median of several runs of one setup (same nested keys)."""

    def merge(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values]) for k in values[0]}
        return statistics.median(values)

    return merge(runs)  # type: ignore[no-any-return]
