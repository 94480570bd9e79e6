"""Whether an answer equals the local one: the one place that decides it.

A comparison proves something only if a wrong answer could fail it. So a
``ReferenceSet`` holds the local answers for two or more different inputs and refuses
(``VacuousReference``) unless every tensor differs between every pair of them by far
more than the tolerance: then an answer computed from another request's tensors, a
zeroed tensor or a skipped part cannot pass for the right one, and a crossed answer
is even named (``Verdict.matched``). numpy only: tests, benchmarks and the demo use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgenode.errors import UsageError, VacuousReference

__all__ = ["DEFAULT_MARGIN", "LOGITS_TOLERANCE", "ReferenceSet", "Verdict", "max_abs_diff"]

# Every pair of references must differ by more than this many tolerances.
DEFAULT_MARGIN = 100.0
# Classifier logits through node processes against the whole model run here: a node's
# one-thread traced parts round float32 differently from the eager model (measured up to
# 1.2e-5 on logits of ~10, trained EfficientNetLite0 and calibrated MobileNetV3Large).
LOGITS_TOLERANCE = 1e-4


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference in float64; inf when either holds a NaN."""
    if a.size == 0:
        return 0.0
    worst = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return math.inf if math.isnan(worst) else worst


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest absolute element difference over same-named, same-shaped tensors."""
    if set(a) != set(b):
        raise UsageError(
            f"tensor names differ: only in the first {sorted(set(a) - set(b))}, "
            f"only in the second {sorted(set(b) - set(a))}"
        )
    worst = 0.0
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            raise UsageError(f"{name}: shape {x.shape} against {y.shape}")
        worst = max(worst, _diff(x, y))
    return worst


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one answer equals its own input's reference, and what it equals if not."""

    ok: bool
    diff: float  # max abs diff against the request's own reference (inf: names/shapes differ)
    worst: str  # the tensor with the largest diff ("" when ok)
    matched: int | None  # another reference this answer equals within tolerance, else None
    detail: str  # one line, "" when ok


class ReferenceSet:
    """Local answers for two or more inputs that differ by far more than the tolerance."""

    def __init__(
        self,
        references: Sequence[Mapping[str, np.ndarray]],
        *,
        tolerance: float,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise UsageError(f"tolerance must be a finite number >= 0, got {tolerance}")
        if not (math.isfinite(margin) and margin >= 1):
            raise UsageError(f"margin must be a finite number >= 1, got {margin}")
        refs = [{name: np.asarray(v) for name, v in r.items()} for r in references]
        if len(refs) < 2:
            raise VacuousReference(
                f"{len(refs)} reference(s): at least 2, for different inputs, are needed to "
                "show that the answer moves with its input"
            )
        first = refs[0]
        if not first:
            raise VacuousReference("the references hold no tensor")
        for i, ref in enumerate(refs[1:], 1):
            if set(ref) != set(first):
                raise VacuousReference(
                    f"reference {i} has tensors {sorted(ref)}, reference 0 {sorted(first)}"
                )
            for name, value in ref.items():
                if value.shape != first[name].shape or value.dtype != first[name].dtype:
                    raise VacuousReference(
                        f"{name}: reference {i} is {value.dtype}{list(value.shape)}, "
                        f"reference 0 {first[name].dtype}{list(first[name].shape)}"
                    )
        self._tolerance = float(tolerance)
        self._refs = refs
        # float64 rows, one per reference: every later comparison is one vectorised pass.
        self._stacks = {
            name: np.stack([r[name].reshape(-1) for r in refs]).astype(np.float64) for name in first
        }
        required = margin * self._tolerance
        spread = math.inf
        for name, stack in self._stacks.items():
            closest, (i, j) = _closest_pair(stack)
            if not closest > required:  # also refuses NaN
                raise VacuousReference(
                    f"{name}: references {i} and {j} differ by at most {closest:.3g}, not more "
                    f"than {margin:g} x the tolerance {self._tolerance:g}: this tensor does not "
                    "move with the input, a wrong answer could pass for a right one"
                )
            spread = min(spread, closest)
        self._spread = spread

    def __len__(self) -> int:
        return len(self._refs)

    @property
    def tolerance(self) -> float:
        """The largest max abs diff an answer may have from its reference."""
        return self._tolerance

    def reference(self, index: int) -> Mapping[str, np.ndarray]:
        """The local answer for input ``index``."""
        return self._refs[index]

    def spread(self) -> float:
        """The smallest max abs diff between two references, over every tensor."""
        return self._spread

    def check(self, index: int, got: Mapping[str, np.ndarray]) -> Verdict:
        """Whether ``got`` is the answer for input ``index`` (and whose it is, if not)."""
        if not 0 <= index < len(self._refs):
            raise UsageError(f"no reference {index}: the set holds {len(self._refs)}")
        own = self._refs[index]
        if set(got) != set(own):
            missing, extra = sorted(set(own) - set(got)), sorted(set(got) - set(own))
            return Verdict(
                False, math.inf, (missing or extra)[0], None,
                f"tensors: missing {missing}, unexpected {extra}",
            )  # fmt: skip
        # Per tensor, the max abs diff against every reference: one vectorised pass.
        against = np.zeros(len(self._refs))
        own_diffs: dict[str, float] = {}
        for name, stack in self._stacks.items():
            value = np.asarray(got[name])
            expected = own[name].shape
            if value.shape != expected:
                return Verdict(
                    False, math.inf, name, None, f"{name}: shape {value.shape}, expected {expected}"
                )
            diffs = np.abs(stack - value.reshape(1, -1).astype(np.float64)).max(axis=1)
            diffs[np.isnan(diffs)] = math.inf
            against = np.maximum(against, diffs)
            own_diffs[name] = float(diffs[index])
        worst = max(own_diffs, key=lambda n: own_diffs[n])
        diff = own_diffs[worst]
        if diff <= self._tolerance:
            return Verdict(True, diff, "", None, "")
        others = [j for j in range(len(self._refs)) if j != index]
        close = [j for j in others if against[j] <= self._tolerance]
        matched = min(close, key=lambda j: against[j]) if close else None
        detail = f"{worst}: max abs diff {diff:.3g} > {self._tolerance:g}"
        if matched is not None:
            detail += f" (equals the reference of input {matched})"
        return Verdict(False, diff, worst, matched, detail)


def _closest_pair(stack: np.ndarray) -> tuple[float, tuple[int, int]]:
    """The smallest max abs diff between two rows of ``stack``, and which two (NaN first)."""
    if stack.shape[1] == 0:
        return 0.0, (0, 1)  # a tensor with no elements cannot move
    closest, pair = math.inf, (0, 1)
    for i in range(len(stack) - 1):
        worst = np.abs(stack[i + 1 :] - stack[i]).max(axis=1)
        if np.isnan(worst).any():
            return math.nan, (i, i + 1 + int(np.argmax(np.isnan(worst))))
        k = int(np.argmin(worst))
        if worst[k] < closest:
            closest, pair = float(worst[k]), (i, i + 1 + k)
    return closest, pair
