"""Input files to model inputs: images, .npy, .npz, folders, and every way they break."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgenode.client.inputs import (
    PREPROCESS_FAMILIES,
    collect_files,
    decode_image,
    family_of,
    load_inputs,
)
from edgenode.errors import EdgenodeError, InputError, UsageError
from edgenode.model.manifest import TensorSpec

IMAGES = Path(__file__).resolve().parents[2] / "edgenode" / "data" / "images"
PHOTOS = ["cat.jpg", "coffee.jpg", "rocket.jpg"]


def spec(size: int = 224, name: str = "image", dtype: str = "float32") -> list[TensorSpec]:
    return [TensorSpec(name=name, shape=(None, size, size, 3), dtype=dtype)]


def assert_one_line(exc: pytest.ExceptionInfo[EdgenodeError], path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(str(path))


# -- images -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 240])
@pytest.mark.parametrize("photo", PHOTOS)
def test_photos_decode_to_model_size(photo: str, size: int) -> None:
    out = load_inputs(IMAGES / photo, spec(size), preprocess=None)
    assert list(out) == ["image"]
    array = out["image"]
    assert array.shape == (1, size, size, 3)
    assert array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 255.0
    assert array.std() > 10  # a real picture, not a blank


def test_identity_family_leaves_pixels() -> None:
    raw = load_inputs(IMAGES / "cat.jpg", spec(), preprocess=None)["image"]
    same = load_inputs(IMAGES / "cat.jpg", spec(), preprocess="mobilenet_v3")["image"]
    np.testing.assert_array_equal(raw, same)


def test_channels_first_and_uint8_inputs() -> None:
    nchw = [TensorSpec(name="x", shape=(None, 3, 32, 48), dtype="float32")]
    first = load_inputs(IMAGES / "cat.jpg", nchw, preprocess=None)["x"]
    assert first.shape == (1, 3, 32, 48)
    quant = load_inputs(IMAGES / "cat.jpg", spec(32, name="x", dtype="uint8"), preprocess=None)
    assert quant["x"].dtype == np.uint8
    nhwc = [TensorSpec(name="x", shape=(None, 32, 48, 3), dtype="float32")]
    last = load_inputs(IMAGES / "cat.jpg", nhwc, preprocess=None)["x"]
    np.testing.assert_array_equal(first.transpose(0, 2, 3, 1), last)
    floats = load_inputs(IMAGES / "cat.jpg", spec(32, name="x"), preprocess=None)["x"]
    np.testing.assert_array_equal(quant["x"], floats.astype(np.uint8))
    with pytest.raises(InputError, match="gives floats"):
        load_inputs(IMAGES / "cat.jpg", spec(32, dtype="uint8"), preprocess="resnet50")


def test_grayscale_png(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, mode="L").save(path)
    array = load_inputs(path, spec(8), preprocess=None)["image"]
    assert array.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(array[..., 0], array[..., 1])
    np.testing.assert_array_equal(array[..., 0], array[..., 2])
    assert array[0, 0, 1, 0] == 3.0


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[...] = (10, 20, 30, 0)  # fully transparent: colour kept, as keras.utils.load_img
    Image.fromarray(pixels, mode="RGBA").save(path)
    array = load_inputs(path, spec(4), preprocess=None)["image"]
    assert array.shape == (1, 4, 4, 3)
    assert array[0, 0, 0].tolist() == [10.0, 20.0, 30.0]


def test_palette_with_transparency_converts_without_warning(tmp_path: Path) -> None:
    path = tmp_path / "palette.gif"
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.save(path, transparency=0)
    array = load_inputs(path, spec(6), preprocess=None)["image"]
    assert array[0, 0, 0].tolist() == [200.0, 100.0, 50.0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    image.save(path, exif=exif, quality=95)
    upright = decode_image(path, height=None, width=None)
    assert upright.shape == (40, 20, 3)  # now 20 wide, 40 high
    assert upright[2, 10, 0] > 200 and upright[2, 10, 2] < 50  # red on top
    assert upright[37, 10, 2] > 200 and upright[37, 10, 0] < 50  # blue below


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = (IMAGES / "cat.jpg").read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="broken image") as exc:
        load_inputs(path, spec(), preprocess=None)
    assert_one_line(exc, path)


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 8])
def test_not_an_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not an image") as exc:
        load_inputs(path, spec(), preprocess=None)
    assert_one_line(exc, path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    with pytest.raises(InputError, match="no such file") as exc:
        load_inputs(path, spec(), preprocess=None)
    assert_one_line(exc, path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"unsupported file type '\.txt'") as exc:
        load_inputs(path, spec(), preprocess=None)
    assert_one_line(exc, path)
    with pytest.raises(InputError, match="unsupported"):
        collect_files([path])


def test_image_needs_a_single_image_input() -> None:
    two = spec(name="a") + spec(name="b")
    with pytest.raises(InputError, match="single-input"):
        load_inputs(IMAGES / "cat.jpg", two, preprocess=None)
    flat = [TensorSpec(name="x", shape=(None, 10), dtype="float32")]
    with pytest.raises(InputError, match="not an RGB image"):
        load_inputs(IMAGES / "cat.jpg", flat, preprocess=None)


def test_unknown_family() -> None:
    with pytest.raises(UsageError, match="unknown preprocessing family 'vit'"):
        load_inputs(IMAGES / "cat.jpg", spec(), preprocess="vit")


# Families named after a keras.applications module (efficientnet_lite is edgenode's own).
KERAS_FAMILIES = sorted(f for f, mode in PREPROCESS_FAMILIES.items() if mode != "center_crop")


@pytest.mark.tf
@pytest.mark.parametrize("family", KERAS_FAMILIES)
def test_preprocessing_equals_keras(family: str) -> None:
    raw = load_inputs(IMAGES / "cat.jpg", spec(), preprocess=None)["image"]
    ours = load_inputs(IMAGES / "cat.jpg", spec(), preprocess=family)["image"]
    module = importlib.import_module(f"keras.applications.{family}")
    expected = np.asarray(module.preprocess_input(raw.copy()))
    assert ours.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)  # bit for bit: the same operations in numpy
    if PREPROCESS_FAMILIES[family] == "identity":
        np.testing.assert_array_equal(ours, raw)
    else:
        assert not np.allclose(ours, raw)


def test_efficientnet_lite_gets_tensorflows_evaluation_crop() -> None:
    """The centre 224/(224+32) of the shorter side, as tensorflow/tpu's
    _decode_and_center_crop computes it, resized bicubic; pixels otherwise unchanged."""
    ours = load_inputs(IMAGES / "rocket.jpg", spec(), preprocess="efficientnet_lite")["image"]
    with Image.open(IMAGES / "rocket.jpg") as image:
        rgb = image.convert("RGB")
        height, width = rgb.height, rgb.width
        crop = int(224 / (224 + 32) * min(height, width))
        top, left = ((height - crop) + 1) // 2, ((width - crop) + 1) // 2
        window = rgb.crop((left, top, left + crop, top + crop))
        expected = np.asarray(window.resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    assert (width, height) == (640, 427)  # not square: the crop matters
    np.testing.assert_array_equal(ours[0], expected)
    plain = load_inputs(IMAGES / "rocket.jpg", spec(), preprocess=None)["image"]
    assert not np.array_equal(ours, plain)
    assert family_of("EfficientNetLite0") == "efficientnet_lite"
    assert family_of("EfficientNetB0") == "efficientnet"


@pytest.mark.parametrize("family", ["resnet50", "mobilenet_v2", "densenet"])
def test_preprocessing_never_imports_keras(family: str) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgenode.client import load_inputs\n"
        "from edgenode.model.manifest import TensorSpec\n"
        "spec = TensorSpec(name='image', shape=(None, 224, 224, 3), dtype='float32')\n"
        f"load_inputs(Path({str(IMAGES / 'cat.jpg')!r}), [spec], preprocess={family!r})\n"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.tf
def test_resnet50_preprocessing_is_caffe_mode() -> None:
    import keras

    raw = load_inputs(IMAGES / "coffee.jpg", spec(), preprocess=None)["image"]
    ours = load_inputs(IMAGES / "coffee.jpg", spec(), preprocess="resnet50")["image"]
    expected = keras.applications.resnet50.preprocess_input(raw.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    bgr_mean = np.array([103.939, 116.779, 123.68], dtype=np.float32)
    np.testing.assert_allclose(ours, raw[..., ::-1] - bgr_mean, atol=1e-4)


@pytest.mark.tf
def test_resize_matches_keras_load_img() -> None:
    import keras

    image = keras.utils.load_img(
        IMAGES / "rocket.jpg", target_size=(240, 240), interpolation="bilinear"
    )
    expected = keras.utils.img_to_array(image)[np.newaxis]
    ours = load_inputs(IMAGES / "rocket.jpg", spec(240), preprocess=None)["image"]
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("MobileNetV3Large", "mobilenet_v3"),
        ("MobileNetV3Small", "mobilenet_v3"),
        ("MobileNetV2", "mobilenet_v2"),
        ("MobileNet", "mobilenet"),
        ("ResNet50", "resnet50"),
        ("ResNet101", "resnet"),
        ("ResNet50V2", "resnet_v2"),
        ("EfficientNetB0", "efficientnet"),
        ("EfficientNetV2S", "efficientnet_v2"),
        ("DenseNet121", "densenet"),
        ("InceptionV3", "inception_v3"),
        ("InceptionResNetV2", "inception_resnet_v2"),
        ("Xception", "xception"),
        ("VGG16", "vgg16"),
        ("NASNetMobile", "nasnet"),
        ("ConvNeXtTiny", "convnext"),
        ("mobilenet_v3_large", "mobilenet_v3"),
        ("my_model", None),
        ("", None),
    ],
)
def test_family_of(name: str, family: str | None) -> None:
    assert family_of(name) == family


# -- folders ------------------------------------------------------------------------------


def test_collect_files(tmp_path: Path) -> None:
    for photo in PHOTOS:
        shutil.copy(IMAGES / photo, tmp_path / photo)
    (tmp_path / "README.md").write_text("skipped")
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "a.npy", np.zeros(3))
    single = tmp_path / "sub" / "x.PNG"
    single.write_bytes(b"")
    found = collect_files([tmp_path, single])
    names = [p.name for p in found]
    assert names == ["a.npy", "cat.jpg", "coffee.jpg", "rocket.jpg", "x.PNG"]


def test_collect_files_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder") as exc:
        collect_files([tmp_path / "missing"])
    assert_one_line(exc, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="folder has no image") as exc:
        collect_files([empty])
    assert_one_line(exc, empty)
    (empty / "notes.txt").write_text("not an input")
    with pytest.raises(InputError, match="folder has no image"):
        collect_files([empty])
    with pytest.raises(UsageError, match="no input files"):
        collect_files([])


# -- arrays -------------------------------------------------------------------------------


def test_npy_with_and_without_batch(tmp_path: Path) -> None:
    values = np.random.default_rng(0).random((224, 224, 3)).astype(np.float32)
    np.save(tmp_path / "plain.npy", values)
    np.save(tmp_path / "batched.npy", values[np.newaxis])
    np.save(tmp_path / "double.npy", values.astype(np.float64))
    for name in ["plain.npy", "batched.npy", "double.npy"]:
        out = load_inputs(tmp_path / name, spec(), preprocess="resnet50")  # ignored for arrays
        assert out["image"].shape == (1, 224, 224, 3)
        assert out["image"].dtype == np.float32
        np.testing.assert_allclose(out["image"][0], values)


def test_npy_errors(tmp_path: Path) -> None:
    wrong_shape = tmp_path / "shape.npy"
    np.save(wrong_shape, np.zeros((1, 100, 100, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"shape \(1, 100, 100, 3\) does not fit") as exc:
        load_inputs(wrong_shape, spec(), preprocess=None)
    assert_one_line(exc, wrong_shape)

    wrong_dtype = tmp_path / "dtype.npy"
    np.save(wrong_dtype, np.zeros((1, 8), dtype=np.float32))
    ints = [TensorSpec(name="ids", shape=(None, 8), dtype="int32")]
    with pytest.raises(InputError, match="dtype float32 does not fit") as exc:
        load_inputs(wrong_dtype, ints, preprocess=None)
    assert_one_line(exc, wrong_dtype)

    pickled = tmp_path / "object.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"not a readable \.npy") as exc:
        load_inputs(pickled, spec(), preprocess=None)
    assert_one_line(exc, pickled)

    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"definitely not numpy")
    with pytest.raises(InputError, match=r"not a readable \.npy") as exc:
        load_inputs(garbage, spec(), preprocess=None)
    assert_one_line(exc, garbage)

    with pytest.raises(InputError, match="single-input"):
        load_inputs(wrong_shape, spec(name="a") + spec(name="b"), preprocess=None)


TWO_INPUTS = [
    TensorSpec(name="pixels", shape=(None, 4, 4, 3), dtype="float32"),
    TensorSpec(name="meta/ids", shape=(None, 5), dtype="int64"),
]


def test_npz_happy_path(tmp_path: Path) -> None:
    path = tmp_path / "inputs.npz"
    np.savez(path, **{"pixels": np.ones((4, 4, 3)), "meta/ids": np.arange(5).reshape(1, 5)})
    out = load_inputs(path, TWO_INPUTS, preprocess=None)
    assert list(out) == ["pixels", "meta/ids"]
    assert out["pixels"].shape == (1, 4, 4, 3) and out["pixels"].dtype == np.float32
    assert out["meta/ids"].dtype == np.int64
    assert out["meta/ids"].tolist() == [[0, 1, 2, 3, 4]]


def test_npz_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    np.savez(missing, pixels=np.ones((1, 4, 4, 3)), extra=np.zeros(2))
    with pytest.raises(InputError) as exc:
        load_inputs(missing, TWO_INPUTS, preprocess=None)
    assert_one_line(exc, missing)
    assert "missing 'meta/ids'" in str(exc.value)
    assert "unexpected 'extra'" in str(exc.value)

    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"pixels": np.ones((1, 4, 4, 3)), "meta/ids": np.zeros((1, 6))})
    with pytest.raises(InputError, match=r"\[meta/ids\]: shape \(1, 6\) does not fit") as exc:
        load_inputs(bad, TWO_INPUTS, preprocess=None)
    assert_one_line(exc, bad)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(InputError, match=r"not a readable \.npz") as exc:
        load_inputs(garbage, TWO_INPUTS, preprocess=None)
    assert_one_line(exc, garbage)


def test_npy_and_npz_swapped(tmp_path: Path) -> None:
    npz_named_npy = tmp_path / "archive.npy"
    with npz_named_npy.open("wb") as handle:
        np.savez(handle, image=np.zeros((1, 224, 224, 3)))
    with pytest.raises(InputError, match=r"name it \.npz") as exc:
        load_inputs(npz_named_npy, spec(), preprocess=None)
    assert_one_line(exc, npz_named_npy)
    npy_named_npz = tmp_path / "array.npz"
    with npy_named_npz.open("wb") as handle:
        np.save(handle, np.zeros((1, 224, 224, 3)))
    with pytest.raises(InputError, match=r"name it \.npy") as exc:
        load_inputs(npy_named_npz, spec(), preprocess=None)
    assert_one_line(exc, npy_named_npz)
