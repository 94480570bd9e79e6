"""Which input preprocessing a model expects, by keras.applications family.

Pure (no TensorFlow): ``edgenode split`` records the family in the manifest
(``model.preprocess``), and clients apply it (edgenode/client/inputs.py) without guessing
from the model's name; manifests written before the field existed fall back to
``family_of(model name)``.
"""

from __future__ import annotations

__all__ = ["PREPROCESS_FAMILIES", "family_of", "preprocess_of"]

# keras.applications module -> what its preprocess_input does (checked in keras 3.15 source).
PREPROCESS_FAMILIES: dict[str, str] = {
    "convnext": "identity",
    "densenet": "torch",
    "efficientnet": "identity",
    "efficientnet_lite": "center_crop",
    "efficientnet_v2": "identity",
    "inception_resnet_v2": "tf",
    "inception_v3": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "identity",
    "nasnet": "tf",
    "resnet": "caffe",
    "resnet50": "caffe",
    "resnet_v2": "tf",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "xception": "tf",
}

# Model-name prefixes, most specific first (ResNet50V2 before ResNet50 before ResNet).
_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("convnext", "convnext"),
    ("densenet", "densenet"),
    ("efficientnetv2", "efficientnet_v2"),
    ("efficientnetlite", "efficientnet_lite"),
    ("efficientnet", "efficientnet"),
    ("inceptionresnetv2", "inception_resnet_v2"),
    ("inceptionv3", "inception_v3"),
    ("mobilenetv3", "mobilenet_v3"),
    ("mobilenetv2", "mobilenet_v2"),
    ("mobilenet", "mobilenet"),
    ("nasnet", "nasnet"),
    ("resnet50v2", "resnet_v2"),
    ("resnet101v2", "resnet_v2"),
    ("resnet152v2", "resnet_v2"),
    ("resnet50", "resnet50"),
    ("resnet", "resnet"),
    ("vgg16", "vgg16"),
    ("vgg19", "vgg19"),
    ("xception", "xception"),
)


def family_of(model_name: str) -> str | None:
    """The keras.applications family of a model name ("ResNet50" -> "resnet50"), or None."""
    key = model_name.lower().replace("_", "").replace("-", "")
    for prefix, family in _FAMILY_PREFIXES:
        if key.startswith(prefix):
            return family
    return None


def preprocess_of(name: str, recorded: str | None) -> str | None:
    """The family whose preprocessing a model's images get: the one its manifest recorded,
    else (a manifest from before the field) the one its name suggests."""
    return recorded if recorded is not None else family_of(name)
