"""BatchNorm calibration: random weights whose answers move with the input, the same everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from edgenode.errors import ModelError
from edgenode.model import calibrate
from edgenode.model.calibrate import calibrate_batchnorm, calibration_batch
from edgenode.model.loading import load_model
from edgenode.verify import ReferenceSet

ROOT = Path(__file__).parents[2]


def probe(seed: int = 0) -> keras.Model:
    """Convolutions with BatchNorm (one after a 1x1 convolution of normalised channels,
    whose mean is mathematically 0), Dropout and noise that must not disturb calibration."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 3))
    y = keras.layers.Rescaling(1 / 255)(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c1")(y)
    y = keras.layers.BatchNormalization(name="bn1")(y)
    y = keras.layers.Conv2D(8, 1, use_bias=False, name="c2")(y)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Dropout(0.5)(y)
    y = keras.layers.GaussianNoise(1.0)(y)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="c3")(y)
    y = keras.layers.BatchNormalization(name="bn3", epsilon=1e-3)(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(4)(y), name="calibration_probe")


def norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]


def sequential_calibration(model: keras.Model, batch: np.ndarray) -> None:
    """The definition: each BatchNorm in turn gets the moments of its input in inference
    mode, with the layers before it already calibrated."""
    for layer in norms(model):
        inputs = np.asarray(keras.Model(model.inputs[0], layer.input)(batch, training=False))
        values = inputs.astype(np.float64).reshape(-1, inputs.shape[-1])
        layer.moving_mean.assign(values.mean(axis=0))
        layer.moving_variance.assign(values.var(axis=0))


def stats(model: keras.Model) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(la.moving_mean), np.asarray(la.moving_variance)) for la in norms(model)]


def test_calibration_pictures_are_seeded_and_image_like() -> None:
    batch = calibration_batch((32, 48, 3), 0)
    assert batch.shape == (calibrate.CALIBRATION_IMAGES, 32, 48, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, calibration_batch((32, 48, 3), 0))
    assert not np.array_equal(batch, calibration_batch((32, 48, 3), 1))
    np.testing.assert_array_equal(batch, np.round(batch))  # whole pixel values, like a photo
    assert batch.min(axis=(1, 2, 3)).tolist() == [0.0] * 4
    assert batch.max(axis=(1, 2, 3)).tolist() == [255.0] * 4
    # from white-ish noise to smooth: neighbouring pixels differ less and less
    roughness = np.abs(np.diff(batch, axis=2)).mean(axis=(1, 2, 3))
    assert list(roughness) == sorted(roughness, reverse=True)


def test_one_pass_equals_sequential_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = calibration_batch((16, 16, 3), 5)
    model = probe()
    sequential_calibration(model, batch)
    want = stats(model)
    # unrounded, the one float64 pass in training mode gives exactly the sequential result
    monkeypatch.setattr(calibrate, "_quantize", lambda v, floor: np.asarray(v, np.float32))
    monkeypatch.setattr(calibrate, "calibration_batch", lambda shape, seed: batch)
    model = probe()
    calibrate_batchnorm(model, 0)
    for (mean, var), (want_mean, want_var), layer in zip(
        stats(model), want, norms(model), strict=True
    ):
        std = np.sqrt(want_var + layer.epsilon)
        np.testing.assert_allclose(var, want_var, rtol=1e-4, atol=1e-7, err_msg=layer.name)
        # the mean relative to the standard deviation it is divided by
        np.testing.assert_allclose(mean / std, want_mean / std, atol=1e-5, err_msg=layer.name)
    assert np.abs(stats(model)[0][0]).max() > 1e-3  # a real mean, not a trivial zero


def test_calibrated_statistics_are_rounded_and_the_model_is_otherwise_untouched() -> None:
    model = probe()
    before = {w.path: np.asarray(w) for w in model.weights}
    calibrate_batchnorm(model, 0)
    changed = {w.path for w in model.weights if not np.array_equal(before[w.path], np.asarray(w))}
    moving = {f"{n}/{s}" for n in ("bn1", "bn2", "bn3") for s in ("moving_mean", "moving_variance")}
    assert changed == moving - {"bn2/moving_mean"}  # 0 before, 0 after: see below
    dropout = next(la for la in model.layers if isinstance(la, keras.layers.Dropout))
    assert dropout.rate == 0.5 and all(la.momentum == 0.99 for la in norms(model))
    for layer, (mean, var) in zip(norms(model), stats(model), strict=True):
        assert np.all(var > 0)
        # 11 significant bits: the low 13 of float32's 23 mantissa bits are zero
        for values in (mean, var):
            bits = values.view(np.uint32) & 0x1FFF
            assert np.all(bits == 0), layer.name
    # bn2 normalises a bias-free 1x1 convolution of normalised channels: its mean is 0
    # in exact arithmetic, float noise otherwise, and calibration makes it exactly +0.0
    mean2 = stats(model)[1][0]
    assert np.all(mean2 == 0) and not np.any(np.signbit(mean2))
    other = probe()
    calibrate_batchnorm(other, 0)
    for a, b in zip(stats(model), stats(other), strict=True):
        np.testing.assert_array_equal(a, b)


def test_quantize_keeps_eleven_bits_above_the_floor() -> None:
    values = np.array([1.0 + 2**-12, 1.0 + 3 * 2**-12, -3e-17, 2.5e-17, 1e5 + 1.0, 0.0])
    got = calibrate._quantize(values, 1.0)
    assert got.tolist() == [1.0, 1.0 + 2**-10, 0.0, 0.0, 100032.0, 0.0]
    assert not np.any(np.signbit(got))


def test_a_model_without_one_fixed_image_input_is_refused() -> None:
    x = keras.Input((None, None, 3))
    model = keras.Model(x, keras.layers.BatchNormalization()(x))
    with pytest.raises(ModelError, match="one image input with a fixed size"):
        calibrate_batchnorm(model, 0)


@pytest.mark.slow
def test_random_weight_applications_answer_with_logits_that_move() -> None:
    model = load_model("MobileNetV3Small", logits=True)
    probs = load_model("MobileNetV3Small")
    inputs = [calibration_batch((224, 224, 3), seed)[i : i + 1] for i, seed in ((2, 11), (2, 12))]
    logits = [np.asarray(model(x, training=False)) for x in inputs]
    refs = ReferenceSet([{"logits": z} for z in logits], tolerance=1e-6)  # not vacuous
    assert refs.spread() > 0.1
    assert all(0.01 < float(z.std()) < 1000 for z in logits)  # was ~1e-11: vanished
    for x, z in zip(inputs, logits, strict=True):  # the same model up to its softmax
        np.testing.assert_allclose(np.asarray(probs(x)), keras.ops.softmax(z), atol=1e-6)
    with pytest.raises(ModelError, match=r"applies to keras\.applications names"):
        load_model(str(ROOT / "missing.keras"), logits=True)


_HASH = """
import sys
from edgenode.model.tfsetup import configure
configure(threads=int(sys.argv[1]))
from edgenode.model.graph import build_graph
from edgenode.model.loading import load_model, model_sha256
for name in sys.argv[2:]:
    print(name, model_sha256(build_graph(load_model(name))))
"""


@pytest.mark.slow
def test_every_process_and_thread_count_builds_the_same_model() -> None:
    """MobileNetV3Small and EfficientNetB0 have BatchNorm means that are 0 up to float
    noise, which differs between 1 and 2 threads: it must not reach the hash."""
    names = ["MobileNetV3Small", "EfficientNetB0"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _HASH, threads, *names],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        for threads in ("1", "2")
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert len(outputs[0].splitlines()) == 2 and outputs[0] == outputs[1]
