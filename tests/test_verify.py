"""ReferenceSet: refuses references that cannot tell answers apart, and catches wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgenode.errors import EdgenodeError, UsageError, VacuousReference
from edgenode.verify import ReferenceSet, max_abs_diff

TOLERANCE = 1e-6


def references(count: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Answers for ``count`` inputs: logits and two same-shaped feature maps."""
    rng = np.random.default_rng(seed)
    return [
        {
            "logits": rng.normal(size=(1, 10)).astype(np.float32),
            "left": rng.normal(size=(1, 4, 4, 3)).astype(np.float32),
            "right": rng.normal(size=(1, 4, 4, 3)).astype(np.float32),
        }
        for _ in range(count)
    ]


@pytest.fixture
def refs() -> ReferenceSet:
    return ReferenceSet(references(), tolerance=TOLERANCE)


def test_max_abs_diff() -> None:
    a = {"x": np.array([1.0, 2.0], np.float32), "y": np.zeros((2, 2))}
    b = {"x": np.array([1.0, 2.5], np.float32), "y": np.zeros((2, 2))}
    assert max_abs_diff(a, b) == 0.5
    assert max_abs_diff(a, a) == 0.0
    assert max_abs_diff({"x": np.array([np.nan])}, {"x": np.array([1.0])}) == math.inf
    with pytest.raises(UsageError, match=r"only in the first \['y'\]"):
        max_abs_diff(a, {"x": b["x"]})
    with pytest.raises(UsageError, match=r"x: shape \(2,\) against \(3,\)"):
        max_abs_diff({"x": np.zeros(2)}, {"x": np.zeros(3)})
    # float64 arithmetic: float32 values whose float32 difference would round
    big = {"x": np.array([16777216.0], np.float32)}
    assert max_abs_diff(big, {"x": np.array([16777218.0], np.float32)}) == 2.0


def test_constant_references_are_refused() -> None:
    constant = {"probs": np.full((1, 1000), 0.001, np.float32)}
    with pytest.raises(VacuousReference, match=r"^probs: references 0 and 1 differ by at most 0,"):
        ReferenceSet([constant, dict(constant)], tolerance=TOLERANCE)


def test_near_constant_references_are_refused() -> None:
    """EfficientNetB0 with random weights: the softmax moves by ~3e-8 between inputs."""
    base = np.full((1, 1000), 0.001, np.float64)
    refs = [{"probs": base + k * 3e-8} for k in range(3)]
    with pytest.raises(
        VacuousReference, match=r"probs: references \d and \d differ by at most 3e-08"
    ):
        ReferenceSet(refs, tolerance=TOLERANCE)


def test_one_still_tensor_is_enough_to_refuse() -> None:
    refs = references()
    for ref in refs:
        ref["bias"] = np.ones(3, np.float32)  # every input gives the same boundary tensor
    with pytest.raises(VacuousReference, match=r"^bias:"):
        ReferenceSet(refs, tolerance=TOLERANCE)


def test_two_close_references_among_many_are_refused() -> None:
    refs = references(5)
    refs[3] = {k: v + np.float32(1e-5) for k, v in refs[1].items()}  # 10 x tol, not 100 x
    with pytest.raises(VacuousReference, match="references 1 and 3 differ by at most 1"):
        ReferenceSet(refs, tolerance=TOLERANCE)
    ReferenceSet(refs, tolerance=TOLERANCE, margin=5)  # a smaller margin accepts them


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        ([], "0 reference"),
        (references(1), "1 reference"),
        ([{}, {}], "no tensor"),
        ([references(2)[0], {"logits": np.zeros((1, 10))}], "reference 1 has tensors"),
        (
            [references(2)[0], {**references(2)[1], "left": np.zeros((1, 4, 4, 2), np.float32)}],
            r"left: reference 1 is float32\[1, 4, 4, 2\], reference 0 float32\[1, 4, 4, 3\]",
        ),
        (
            [references(2)[0], {**references(2)[1], "logits": np.ones((1, 10), np.float64)}],
            "logits: reference 1 is float64",
        ),
        (
            [references(2)[0], {**references(2)[1], "logits": np.full((1, 10), np.nan)}],
            "logits",
        ),
        ([{"x": np.zeros((0, 3))}, {"x": np.zeros((0, 3))}], "x: references 0 and 1"),
    ],
)
def test_malformed_sets_are_refused(refs, message: str) -> None:
    with pytest.raises(VacuousReference, match=message) as caught:
        ReferenceSet(refs, tolerance=TOLERANCE)
    assert isinstance(caught.value, EdgenodeError)
    assert "\n" not in str(caught.value)


def test_a_good_set_is_accepted(refs: ReferenceSet) -> None:
    assert len(refs) == 4
    assert refs.tolerance == TOLERANCE
    expected = min(
        max_abs_diff(a, b) for i, a in enumerate(references()) for b in references()[i + 1 :]
    )
    assert refs.spread() > 100 * TOLERANCE
    assert refs.spread() <= expected  # per tensor, so at most the whole-answer distance
    np.testing.assert_array_equal(refs.reference(2)["logits"], references()[2]["logits"])


def test_a_correct_answer_is_ok(refs: ReferenceSet) -> None:
    for i, ref in enumerate(references()):
        verdict = refs.check(i, ref)
        assert verdict.ok and verdict.diff == 0.0
        assert (verdict.worst, verdict.matched, verdict.detail) == ("", None, "")
        nudged = {k: v + np.float32(TOLERANCE / 4) for k, v in ref.items()}
        assert refs.check(i, nudged).ok  # within the tolerance
        as64 = {k: v.astype(np.float64) for k, v in ref.items()}
        assert refs.check(i, as64).ok


def test_swapped_tensors_are_wrong(refs: ReferenceSet) -> None:
    ref = references()[1]
    verdict = refs.check(1, {**ref, "left": ref["right"], "right": ref["left"]})
    assert not verdict.ok and verdict.worst in ("left", "right") and verdict.matched is None
    assert verdict.detail.startswith(f"{verdict.worst}: max abs diff ")


def test_a_zeroed_tensor_is_wrong(refs: ReferenceSet) -> None:
    ref = references()[0]
    verdict = refs.check(0, {**ref, "logits": np.zeros_like(ref["logits"])})
    assert not verdict.ok and verdict.worst == "logits"
    assert verdict.diff == pytest.approx(float(np.max(np.abs(ref["logits"]))))


def test_another_requests_answer_is_wrong_and_named(refs: ReferenceSet) -> None:
    verdict = refs.check(0, references()[3])
    assert not verdict.ok and verdict.matched == 3
    assert verdict.detail.endswith("(equals the reference of input 3)")
    # one tensor from another request: wrong, but equal to no single reference
    mixed = {**references()[0], "logits": references()[2]["logits"]}
    verdict = refs.check(0, mixed)
    assert not verdict.ok and verdict.worst == "logits" and verdict.matched is None


def test_a_missing_or_extra_tensor_is_wrong(refs: ReferenceSet) -> None:
    ref = references()[0]
    verdict = refs.check(0, {k: v for k, v in ref.items() if k != "left"})
    assert not verdict.ok and verdict.diff == math.inf and verdict.worst == "left"
    assert verdict.detail == "tensors: missing ['left'], unexpected []"
    verdict = refs.check(0, {**ref, "extra": ref["left"]})
    assert not verdict.ok and verdict.detail == "tensors: missing [], unexpected ['extra']"


def test_a_wrong_shape_is_wrong(refs: ReferenceSet) -> None:
    ref = references()[0]
    verdict = refs.check(0, {**ref, "logits": ref["logits"].reshape(10, 1)})
    assert not verdict.ok and verdict.diff == math.inf and verdict.worst == "logits"
    assert verdict.detail == "logits: shape (10, 1), expected (1, 10)"


def test_nan_is_wrong(refs: ReferenceSet) -> None:
    ref = references()[0]
    bad = ref["left"].copy()
    bad[0, 0, 0, 0] = np.nan
    verdict = refs.check(0, {**ref, "left": bad})
    assert not verdict.ok and verdict.diff == math.inf and verdict.worst == "left"


def test_bad_arguments(refs: ReferenceSet) -> None:
    with pytest.raises(UsageError, match="no reference 4"):
        refs.check(4, references()[0])
    with pytest.raises(UsageError, match="tolerance"):
        ReferenceSet(references(), tolerance=-1.0)
    with pytest.raises(UsageError, match="margin"):
        ReferenceSet(references(), tolerance=TOLERANCE, margin=0.5)


def test_large_sets_stay_cheap() -> None:
    """Eight answers of 4 MB each: building and checking is a handful of numpy passes."""
    rng = np.random.default_rng(3)
    refs = [{"act": rng.normal(size=(1, 112, 112, 80)).astype(np.float32)} for _ in range(8)]
    checked = ReferenceSet(refs, tolerance=1e-4)
    assert checked.check(5, refs[5]).ok and checked.check(5, refs[6]).matched == 6
