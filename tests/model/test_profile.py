"""Profile calibration: ops timed alone, corrected by segments timed together."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgenode.model.profile import Segment, calibrate, segment_ranges


@given(
    st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), max_size=60),
    st.integers(min_value=1, max_value=80),
)
def test_segments_cover_every_op_once_in_order(weights: list[float], count: int) -> None:
    ranges = segment_ranges(weights, count)
    if not weights:
        assert ranges == []
        return
    assert ranges[0][0] == 0 and ranges[-1][1] == len(weights)
    assert all(a < b for a, b in ranges)
    assert all(x[1] == y[0] for x, y in itertools.pairwise(ranges))
    assert len(ranges) <= count


def test_segments_are_about_equal_in_weight() -> None:
    assert segment_ranges([1.0] * 12, 3) == [(0, 4), (4, 8), (8, 12)]
    # one heavy op is a segment of its own; the light ones share the rest
    assert segment_ranges([10.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 11)]
    assert segment_ranges([0.0] * 6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_calibrate_moves_time_to_where_the_segments_measured_it() -> None:
    """Alone, the four ops look equal; together the second half costs three times the
    first: the calibrated times say so, keep each segment's internal proportions, lose
    the call overhead once per segment and add up to the whole model."""
    net = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 2.0}
    segments = [Segment(0, 2, 1.1), Segment(2, 4, 3.1)]
    out = calibrate(net, segments, overhead_s=0.1, whole_s=8.0)
    assert list(out) == ["a", "b", "c", "d"]
    assert out == pytest.approx({"a": 0.5, "b": 1.5, "c": 3.0, "d": 3.0})
    assert sum(out.values()) == pytest.approx(8.0)


def test_calibrate_shares_equally_when_alone_times_are_zero() -> None:
    out = calibrate(
        {"a": 0.0, "b": 0.0, "c": 1.0}, [Segment(0, 2, 2.0), Segment(2, 3, 2.0)], 0.0, 4.0
    )
    assert out == pytest.approx({"a": 1.0, "b": 1.0, "c": 2.0})


def test_calibrate_refuses_segments_that_miss_an_op() -> None:
    with pytest.raises(ValueError, match="'c'"):
        calibrate({"a": 1.0, "b": 1.0, "c": 1.0}, [Segment(0, 2, 1.0)], 0.0, 1.0)


def test_calibrate_falls_back_to_alone_times_when_segments_are_all_overhead() -> None:
    """A tiny model: every segment within one call's overhead says nothing about its ops."""
    net = {"a": 1.0, "b": 3.0}
    out = calibrate(net, [Segment(0, 1, 0.1), Segment(1, 2, 0.05)], overhead_s=0.2, whole_s=2.0)
    assert out == pytest.approx({"a": 0.5, "b": 1.5})
    zeros = calibrate({"a": 0.0, "b": 0.0}, [Segment(0, 2, 0.1)], overhead_s=0.2, whole_s=2.0)
    assert zeros == pytest.approx({"a": 1.0, "b": 1.0})
