"""The client side of ``edgenode infer``: input files to model inputs, outputs to text."""

from __future__ import annotations

from edgenode.client.inputs import (
    IMAGE_SUFFIXES,
    PREPROCESS_FAMILIES,
    SUPPORTED_SUFFIXES,
    InputSpec,
    collect_files,
    decode_image,
    family_of,
    load_inputs,
)
from edgenode.client.labels import (
    imagenet_labels,
    imagenet_wnids,
    is_class_vector,
    label_text,
    summarize,
    to_probabilities,
    top_k,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "PREPROCESS_FAMILIES",
    "SUPPORTED_SUFFIXES",
    "InputSpec",
    "collect_files",
    "decode_image",
    "family_of",
    "imagenet_labels",
    "imagenet_wnids",
    "is_class_vector",
    "label_text",
    "load_inputs",
    "summarize",
    "to_probabilities",
    "top_k",
]
