"""The one percentile definition every edgenode report uses (infer's summary, status)."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``values``, linearly interpolated between the
    two nearest ranks: numpy's default ``np.percentile`` method (R's type 7), so 0.5 is
    ``statistics.median`` and a higher fraction never gives a smaller value."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a percentile needs a fraction in 0..1, got {fraction}")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("a percentile of no values")
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    a, b = ordered[low], ordered[min(low + 1, len(ordered) - 1)]
    # Clamped: rounding must not take it past the next rank (and above a higher percentile).
    return min(max(a + (b - a) * (position - low), a), b)
