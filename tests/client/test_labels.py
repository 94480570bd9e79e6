"""ImageNet labels shipped with the package, top-k, and output summaries."""

from __future__ import annotations

import numpy as np
import pytest

from edgenode.client.labels import (
    imagenet_labels,
    imagenet_wnids,
    is_class_vector,
    summarize,
    to_probabilities,
    top_k,
)
from edgenode.errors import ModelError, UsageError


def test_labels_are_keras_names() -> None:
    labels = imagenet_labels()
    wnids = imagenet_wnids()
    assert len(labels) == 1000 and len(wnids) == 1000
    assert len(set(wnids)) == 1000
    assert labels[0] == "tench"
    assert labels[281] == "tabby" and wnids[281] == "n02123045"
    assert labels[967] == "espresso"
    assert labels[999] == "toilet_tissue"
    assert labels[134] == labels[517] == "crane"  # two synsets, one name, as in Keras
    assert imagenet_labels() is not labels  # callers get their own list


def test_top_k_order_and_ties() -> None:
    probs = np.zeros(1000, dtype=np.float32)
    probs[[281, 5, 999, 7]] = [0.4, 0.2, 0.2, 0.2]
    result = top_k(probs, 4)
    assert [i for i, _, _ in result] == [281, 5, 7, 999]  # ties: lower index first
    assert result[0][1] == "tabby"
    assert result[0][2] == pytest.approx(0.4)
    assert [i for i, _, _ in top_k(probs[np.newaxis], 2)] == [281, 5]


def test_top_k_applies_softmax_to_logits() -> None:
    logits = np.random.default_rng(1).normal(size=(1, 1000)) * 3
    result = top_k(logits, 5)
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert [i for i, _, _ in result] == list(np.argsort(-expected)[:5])
    assert [p for _, _, p in result] == pytest.approx(np.sort(expected)[::-1][:5].tolist())


def test_probabilities_kept_as_they_are() -> None:
    probs = np.full(1000, 1 / 1000)
    np.testing.assert_array_equal(to_probabilities(probs), probs)
    assert len(top_k(probs, 5000)) == 1000


def test_top_k_errors() -> None:
    with pytest.raises(UsageError, match="k >= 1"):
        top_k(np.zeros(1000), 0)
    with pytest.raises(UsageError, match=r"shape \(2, 1000\)"):
        top_k(np.zeros((2, 1000)), 5)
    with pytest.raises(UsageError, match=r"shape \(10,\)"):
        top_k(np.zeros(10), 5)
    with pytest.raises(ModelError, match="NaN"):
        top_k(np.full(1000, np.nan), 5)
    assert is_class_vector(np.zeros((1, 1000)))
    assert not is_class_vector(np.zeros((1, 1001)))


def test_summarize() -> None:
    boxes = np.array([[[0.5, -1.0, 2.0, 3.0]]], dtype=np.float32)
    assert summarize("boxes", boxes) == (
        "boxes: shape (1, 1, 4) float32 min -1 max 3 mean 1.125 [0.5, -1, 2, 3]"
    )
    line = summarize("scores", np.arange(10, dtype=np.int64))
    assert line == "scores: shape (10,) int64 min 0 max 9 mean 4.5 [0, 1, 2, 3, 4, 5, ...]"
    assert summarize("none", np.zeros((0, 4))) == "none: shape (0, 4) float64 (empty)"
    assert summarize("names", np.array(["a", "b"])) == "names: shape (2,) <U1"
    assert "no finite values" in summarize("bad", np.array([np.nan]))
    assert "\n" not in summarize("big", np.ones((3, 100, 100)))
