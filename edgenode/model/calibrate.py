"""Data-dependent BatchNorm calibration: random weights whose answers move with the input.

``keras.applications`` models built with random weights keep BatchNorm's initial
statistics (mean 0, variance 1), so activations shrink or grow layer after layer:
MobileNetV3Large answers exactly 0.001 for every class whatever the image, and a
comparison against it cannot fail. Calibration sets every BatchNorm layer's moving
mean and variance to the moments of its own input over a fixed batch of random
pictures with a photo's spectrum, in order, so each layer's output has zero mean and unit
variance on that batch.

One forward pass in training mode with momentum 0 (and Dropout off) computes exactly
that: each layer normalises with its batch moments, which become its moving
statistics, so the layers after it see what inference with the calibrated statistics
gives them. Every node that builds a model by name must get the same weights (its
``model_sha256``), whatever its thread count or CPU: the pass runs in float64 on a
clone and the statistics are rounded to 11 significant bits (the mean relative to the
standard deviation), so float64 rounding noise (~1e-15) practically never reaches a
rounding boundary.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np

from edgenode.errors import ModelError

__all__ = ["CALIBRATION_IMAGES", "calibrate_batchnorm", "calibration_batch"]

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 4
_STAT_BITS = 11  # significant bits kept (float16's precision, float32's range)
_SLOPES = (0.0, 1.0, 2.0, 3.0)  # spectral slopes of the calibration pictures, in turn
_SEED_SALT = 0xBA7C4  # calibration pictures differ from other draws with the same seed
# What makes the noise layers noisy in training mode; zero switches them off.
_NOISE_ATTRIBUTES = ("rate", "stddev")


def calibration_batch(
    shape: tuple[int, ...], seed: int, *, count: int = CALIBRATION_IMAGES
) -> np.ndarray:
    """``count`` random pictures with a photo's spectrum (integer pixels 0..255, float32, NHWC).

    Each is a sum of octaves of interpolated uniform noise, from 2x2 cells to single
    pixels, the octave at frequency f weighted f^(-beta/2): beta 2 is a photo's power
    spectrum, 0 white noise, 3 a smooth gradient; the batch takes its betas from
    ``_SLOPES`` in turn, so it covers what tests and users send.
    """
    height, width, channels = shape
    rng = np.random.default_rng([seed, _SEED_SALT])
    images = np.empty((count, height, width, channels), np.float64)
    for i in range(count):
        beta = _SLOPES[i % len(_SLOPES)]
        image = np.zeros((height, width, channels))
        cells = 2
        while True:
            rows, cols = min(cells, height), min(cells, width)
            octave = rng.uniform(-1.0, 1.0, size=(rows, cols, channels))
            if rows < height:
                octave = _interpolate(octave, height, axis=0)
            if cols < width:
                octave = _interpolate(octave, width, axis=1)
            image += octave * (cells / 2) ** (-beta / 2)
            if rows == height and cols == width:
                break
            cells *= 2
        low, high = image.min(), image.max()
        images[i] = (image - low) / max(high - low, 1e-12) * 255.0
    return np.round(images).astype(np.float32)


def _interpolate(values: np.ndarray, size: int, *, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` to ``size`` samples along ``axis`` (elementwise)."""
    n = values.shape[axis]
    position = np.linspace(0.0, n - 1.0, size)
    low = np.minimum(np.floor(position).astype(int), n - 2)
    frac = position - low
    shape = [1] * values.ndim
    shape[axis] = size
    frac = frac.reshape(shape)
    below, above = np.take(values, low, axis=axis), np.take(values, low + 1, axis=axis)
    return np.asarray(below * (1 - frac) + above * frac)


def _preprocess(batch: np.ndarray, model_name: str) -> np.ndarray:
    """The batch as the model's family expects it (its own ``preprocess_input``)."""
    from edgenode.model.preprocess import PREPROCESS_FAMILIES, family_of

    family = family_of(model_name)
    if family is None or PREPROCESS_FAMILIES[family] in ("identity", "center_crop"):
        return batch  # the model rescales 0..255 itself
    if batch.shape[-1] != 3:
        return batch / 127.5 - 1.0  # not an RGB model: a centred range
    module = importlib.import_module(f"keras.applications.{family}")
    return np.asarray(module.preprocess_input(batch.copy(), data_format="channels_last"))


def _quantize(values: np.ndarray, floor: np.ndarray | float) -> np.ndarray:
    """``values`` to ``_STAT_BITS`` significant bits, where values below ``floor`` count as
    ``floor``: float noise around a statistic that is mathematically 0 (the mean after a
    1x1 convolution of normalised channels, ~1e-16, different on every thread count)
    becomes exactly 0, not a rounded copy of the noise. As float32, never -0.0."""
    values = np.asarray(values, np.float64)
    _, exponent = np.frexp(np.maximum(np.abs(values), floor))
    step = np.ldexp(1.0, exponent - _STAT_BITS)
    rounded: np.ndarray = np.round(values / step) * step + 0.0
    return rounded.astype(np.float32)


def _calibrated(
    mean: np.ndarray, variance: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Moving statistics from batch moments: the variance to its precision above
    ``epsilon`` (BatchNorm divides by sqrt(variance + epsilon)), the mean to its precision
    relative to the standard deviation it is divided by."""
    variance = _quantize(np.maximum(variance, 0.0), epsilon)
    std = np.sqrt(variance.astype(np.float64) + epsilon)
    return _quantize(mean, std), variance


def _float64_clone(model: Any) -> Any:
    """A copy of ``model`` computing in float64, with its weights."""
    import keras

    def to_float64(layer: Any) -> Any:
        if not isinstance(layer, keras.layers.Layer):
            return layer  # an operation that is not a layer (x + 3.0) has no dtype
        if isinstance(layer, keras.Model):
            raise ModelError(
                f"cannot calibrate {model.name!r}: nested model {layer.name!r} is not supported"
            )
        return type(layer).from_config({**layer.get_config(), "dtype": "float64"})

    clone = keras.models.clone_model(model, clone_function=to_float64)
    for source, target in zip(model.weights, clone.weights, strict=True):
        target.assign(np.asarray(keras.ops.convert_to_numpy(source), np.float64))
    return clone


def calibrate_batchnorm(model: Any, seed: int) -> None:
    """Set every BatchNormalization layer's moving statistics from a seeded image batch."""
    import keras

    norms = {
        layer.name: layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    if not norms:
        return
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else ()
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        raise ModelError(
            f"cannot calibrate {model.name!r}: it needs one image input with a fixed "
            f"size, got inputs {[tuple(t.shape) for t in model.inputs]}"
        )
    batch = _preprocess(calibration_batch(shape, seed), str(model.name))
    clone = _float64_clone(model)
    noise = _noise_layers()
    for layer in clone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the moving statistics become the batch's moments
        elif isinstance(layer, noise):
            for attribute in _NOISE_ATTRIBUTES:
                if hasattr(layer, attribute):
                    setattr(layer, attribute, 0.0)
    clone(batch.astype(np.float64), training=True)
    for layer in clone.layers:
        if layer.name in norms:
            target = norms[layer.name]
            mean, variance = _calibrated(
                keras.ops.convert_to_numpy(layer.moving_mean),
                keras.ops.convert_to_numpy(layer.moving_variance),
                float(target.epsilon),
            )
            target.moving_mean.assign(mean)
            target.moving_variance.assign(variance)
    logger.debug("calibrated %d BatchNorm layers of %s (seed %d)", len(norms), model.name, seed)


def _noise_layers() -> tuple[type, ...]:
    """Keras layers that add noise in training mode only."""
    import keras

    return (
        keras.layers.Dropout,  # and SpatialDropout1D/2D/3D
        keras.layers.GaussianDropout,
        keras.layers.AlphaDropout,
        keras.layers.GaussianNoise,
    )
