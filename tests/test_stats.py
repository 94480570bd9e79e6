"""The one percentile definition: linear interpolation between ranks (numpy's default)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgenode._stats import percentile

LATENCIES = st.lists(
    st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=60,
)


def test_two_requests_p95_is_not_below_p50() -> None:
    # infer's summary said "p50 93.0 ms, p95 75.7 ms" for two requests of 75.7 and 110.3 ms:
    # its p95 picked the smaller one, where the median is their mean.
    seconds = [0.1103, 0.0757]
    p50, p95 = percentile(seconds, 0.5), percentile(seconds, 0.95)
    assert p50 == pytest.approx(0.0930)
    assert p95 == pytest.approx(0.0757 + 0.95 * (0.1103 - 0.0757))
    assert p50 <= p95 <= max(seconds)


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([5.0], 0.0, 5.0),
        ([5.0], 0.95, 5.0),
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0], 0.95, 2.9),  # half-way rank 1.9: 2 + 0.9 * (3 - 2)
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0.9, 3.7),
        ([1.0, 2.0, 3.0, 4.0], 1.0, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 0.0, 1.0),
    ],
)
def test_table(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == pytest.approx(expected)


@given(LATENCIES, st.floats(min_value=0.0, max_value=1.0))
def test_numpys_default_definition_and_the_median(values: list[float], fraction: float) -> None:
    got = percentile(values, fraction)
    assert got == pytest.approx(float(np.percentile(values, fraction * 100)), rel=1e-9, abs=1e-9)
    assert min(values) <= got <= max(values)
    assert percentile(values, 0.5) == pytest.approx(statistics.median(values), rel=1e-12)


@given(LATENCIES, st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_a_higher_fraction_never_gives_less(values: list[float], a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert percentile(values, low) <= percentile(values, high)


def test_no_values_or_a_fraction_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match=r"in 0\.\.1"):
        percentile([1.0], 95)
