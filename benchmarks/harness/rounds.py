"""Setups measured in interleaved rounds, and the per-metric median over the rounds."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from harness.report import say

T = TypeVar("T")


def _schedule(
    setups: Sequence[T], rounds: int, label: Callable[[T], str], what: str, rotate: bool
) -> Iterator[T]:
    """Every setup once per round, in turn; ``rotate``: each round starts one setup later,
    so that no setup always runs first (right after a start-up, or after the heaviest)."""
    for number in range(rounds):
        k = number % len(setups) if rotate else 0
        for setup in [*setups[k:], *setups[:k]]:
            say(f"{what} {number + 1}/{rounds}: {label(setup)} ...")
            yield setup


def interleaved(
    setups: Sequence[T],
    rounds: int,
    run: Callable[[T], Any],
    *,
    label: Callable[[T], str],
    what: str = "round",
    rotate: bool = False,
) -> dict[str, list[Any]]:
    """``run`` every setup once per round, setups in turn within a round, so that a noisy
    moment hits all of them alike; each setup's results in round order."""
    runs: dict[str, list[Any]] = {label(s): [] for s in setups}
    for setup in _schedule(setups, rounds, label, what, rotate):
        runs[label(setup)].append(run(setup))
    return runs


async def interleaved_async(
    setups: Sequence[T],
    rounds: int,
    run: Callable[[T], Awaitable[Any]],
    *,
    label: Callable[[T], str],
    what: str = "round",
    rotate: bool = False,
) -> dict[str, list[Any]]:
    """`interleaved` for a ``run`` that is awaited (requests to running nodes)."""
    runs: dict[str, list[Any]] = {label(s): [] for s in setups}
    for setup in _schedule(setups, rounds, label, what, rotate):
        runs[label(setup)].append(await run(setup))
    return runs


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median of several runs of one setup (same nested keys)."""

    def merge(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values]) for k in values[0]}
        return statistics.median(values)

    return merge(runs)  # type: ignore[no-any-return]
