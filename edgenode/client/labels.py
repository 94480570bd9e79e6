"""ImageNet class names shipped with the package, top-k, and summaries of other outputs.

``edgenode/data/imagenet_class_index.json`` has Keras's format and names
(``{"281": ["n02123045", "tabby"], ...}``: the first WordNet lemma, spaces as
underscores), built from timm's ``imagenet_synsets.txt`` and
``imagenet_synset_to_lemma.txt`` (Apache-2.0); see ``edgenode/data/README.md``.

One rule for labels: machine-readable output (``infer --json``) carries them verbatim
(``golden_retriever``); text for people shows them through ``label_text``, underscores as
spaces (``golden retriever``). No name has a space, so the text maps back to one label.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from edgenode.errors import ModelError, UsageError

__all__ = [
    "IMAGENET_CLASSES",
    "imagenet_labels",
    "imagenet_wnids",
    "is_class_vector",
    "label_text",
    "summarize",
    "to_probabilities",
    "top_k",
]

IMAGENET_CLASSES = 1000
_INDEX_FILE = "data/imagenet_class_index.json"
_PROBABILITY_SUM_TOLERANCE = 1e-3
_SUMMARY_VALUES = 6


@functools.cache
def _class_index() -> tuple[tuple[str, str], ...]:
    """(wnid, name) per class, in class order, read once from the package data."""
    try:
        text = resources.files("edgenode").joinpath(_INDEX_FILE).read_text(encoding="utf-8")
        raw = json.loads(text)
        entries = tuple((str(raw[str(i)][0]), str(raw[str(i)][1])) for i in range(len(raw)))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ModelError(f"edgenode/{_INDEX_FILE} is missing or broken: {exc}") from exc
    if len(entries) != IMAGENET_CLASSES:
        raise ModelError(f"edgenode/{_INDEX_FILE} has {len(entries)} classes, not 1000")
    return entries


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in class order, as Keras names them ("tabby")."""
    return [name for _, name in _class_index()]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet WordNet ids in class order ("n02123045")."""
    return [wnid for wnid, _ in _class_index()]


def label_text(label: str) -> str:
    """A class label as text output shows it: underscores as spaces ("golden retriever")."""
    return label.replace("_", " ")


def is_class_vector(array: np.ndarray) -> bool:
    """Whether an output looks like one ImageNet classification: shape (1000,) or (1, 1000)."""
    return array.shape in ((IMAGENET_CLASSES,), (1, IMAGENET_CLASSES))


def to_probabilities(values: np.ndarray) -> np.ndarray:
    """Float64 probabilities: kept if already a distribution, otherwise softmax (logits).

    keras.applications classifiers end in softmax by default; a model built with
    ``classifier_activation=None`` returns logits, which are turned into probabilities.
    """
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(vector)):
        raise ModelError("classifier output contains NaN or infinity")
    if (
        vector.size
        and vector.min() >= 0.0
        and vector.max() <= 1.0
        and abs(vector.sum() - 1.0) <= _PROBABILITY_SUM_TOLERANCE
    ):
        return vector
    shifted = np.exp(vector - vector.max())
    result: np.ndarray = shifted / shifted.sum()
    return result


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, str, float]]:
    """The k most likely (class index, name, probability), best first; ties by lower index."""
    if k < 1:
        raise UsageError(f"top-k needs k >= 1, got {k}")
    array = np.asarray(probabilities)
    if not is_class_vector(array):
        raise UsageError(
            f"top-k needs a (1000,) or (1, 1000) vector, got shape {tuple(array.shape)}"
        )
    vector = to_probabilities(array)
    order = np.argsort(-vector, kind="stable")[:k]
    names = imagenet_labels()
    return [(int(i), names[int(i)], float(vector[i])) for i in order]


def summarize(name: str, array: np.ndarray) -> str:
    """One line about any output: name, shape, dtype, min/max/mean and the first values."""
    array = np.asarray(array)
    shape = "(" + ", ".join(str(d) for d in array.shape) + ("," if array.ndim == 1 else "") + ")"
    head = f"{name}: shape {shape} {array.dtype}"
    if array.size == 0:
        return f"{head} (empty)"
    if array.dtype.kind not in "biuf":
        return head
    flat = array.reshape(-1)
    numbers = flat.astype(np.float64)
    finite = numbers[np.isfinite(numbers)]
    stats = (
        f"min {_number(finite.min())} max {_number(finite.max())} mean {_number(finite.mean())}"
        if finite.size
        else "no finite values"
    )
    first = ", ".join(_number(float(v)) for v in numbers[:_SUMMARY_VALUES])
    more = ", ..." if flat.size > _SUMMARY_VALUES else ""
    return f"{head} {stats} [{first}{more}]"


def _number(value: float) -> str:
    return f"{value:.4g}"
