"""Turn the user's files (images, ``.npy``, ``.npz``) into model inputs.

Every function here blocks (file I/O, image decoding); callers run them
in a worker thread. Every bad input raises one :class:`~edgenode.errors.InputError`
whose one-line message names the file and the problem.

Images are decoded with Pillow, turned upright (EXIF orientation), converted to RGB
(grayscale and palette are expanded, an alpha channel is dropped, as
``keras.utils.load_img`` does) and resized to the model's height and width with a plain
bilinear resize: the aspect ratio is *not* kept and nothing is cropped, which is what
``keras.utils.load_img(path, target_size=(h, w), interpolation="bilinear")`` does.
The pixels (0..255, float32, batch of one) then go through what the model family's own
``keras.applications.<family>.preprocess_input`` does, computed here in numpy (the same
operations in the same order, so bit for bit; Keras is never imported):

- ``"caffe"`` mode (RGB->BGR, minus the ImageNet mean, no scaling): ``resnet``,
  ``resnet50``, ``vgg16``, ``vgg19``;
- ``"tf"`` mode (scaled to [-1, 1]): ``mobilenet``, ``mobilenet_v2``, ``resnet_v2``,
  ``inception_v3``, ``inception_resnet_v2``, ``xception``, ``nasnet``;
- ``"torch"`` mode (scaled to [0, 1], minus mean, divided by std): ``densenet``;
- identity (the model has its own ``Rescaling``/``Normalization`` layers and expects
  0..255): ``mobilenet_v3``, ``efficientnet``, ``efficientnet_v2``, ``convnext``.
- ``"center_crop"``: ``efficientnet_lite`` (edgenode's EfficientNet-Lite0, which
  normalises inside the model) gets the evaluation crop its weights were validated with
  in ``tensorflow/tpu``: the centre ``size / (size + 32)`` of the shorter side, resized
  to the model's size with a bicubic filter, pixels 0..255 otherwise unchanged.
"""

from __future__ import annotations

import logging
import struct
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgenode.errors import InputError, UsageError
from edgenode.model.preprocess import PREPROCESS_FAMILIES, family_of

__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "PREPROCESS_FAMILIES",
    "SUPPORTED_SUFFIXES",
    "InputSpec",
    "collect_files",
    "decode_image",
    "family_of",
    "load_inputs",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
ARRAY_SUFFIXES = frozenset({".npy", ".npz"})
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | ARRAY_SUFFIXES

# Pillow raises many types for broken files; all of them mean "cannot decode this image".
_PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_RGB_CHANNELS = 3
_CROP_PADDING = 32  # pixels: CROP_PADDING of tensorflow/tpu's EfficientNet preprocessing
# keras.applications.imagenet_utils' ImageNet statistics, in its order of operations.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class InputSpec(Protocol):
    """What this module needs of a model input (``edgenode.model.manifest.TensorSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int | None, ...]: ...
    @property
    def dtype(self) -> str: ...


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Input files from files and folders (a folder gives its supported files, sorted)."""
    found: list[Path] = []
    given = list(paths)
    if not given:
        raise UsageError("no input files given")
    for raw in given:
        path = Path(raw)
        if path.is_dir():
            try:
                inside = sorted(
                    p for p in path.iterdir() if p.is_file() and _suffix(p) in SUPPORTED_SUFFIXES
                )
            except OSError as exc:
                raise InputError(f"{path}: cannot list folder ({_reason(exc)})") from exc
            if not inside:
                raise InputError(f"{path}: folder has no image, .npy or .npz files")
            found.extend(inside)
        elif path.is_file():
            _check_suffix(path)
            found.append(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file or folder")
        else:
            raise InputError(f"{path}: no such file or folder")
    return found


def load_inputs(
    path: str | Path, input_specs: Sequence[InputSpec], *, preprocess: str | None
) -> dict[str, np.ndarray]:
    """Model inputs by name from an image, ``.npy`` or ``.npz`` file (blocking)."""
    path = Path(path)
    if preprocess is not None and preprocess not in PREPROCESS_FAMILIES:
        known = ", ".join(sorted(PREPROCESS_FAMILIES))
        raise UsageError(f"unknown preprocessing family {preprocess!r} (known: {known})")
    if not input_specs:
        raise UsageError("the model has no inputs")
    suffix = _check_suffix(path)
    if suffix == ".npy":
        return _load_npy(path, input_specs)
    if suffix == ".npz":
        return _load_npz(path, input_specs)
    return _load_image(path, input_specs, preprocess)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _check_suffix(path: Path) -> str:
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r} (use {kinds})")
    return suffix


def _reason(exc: BaseException) -> str:
    """One line from a foreign exception: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


# -- images -------------------------------------------------------------------------------


def _load_image(
    path: Path, input_specs: Sequence[InputSpec], preprocess: str | None
) -> dict[str, np.ndarray]:
    if len(input_specs) != 1:
        names = ", ".join(s.name for s in input_specs)
        raise InputError(
            f"{path}: an image fits only a single-input model; this one has {names} (use .npz)"
        )
    spec = input_specs[0]
    shape = tuple(spec.shape)
    if len(shape) != 4 or _RGB_CHANNELS not in (shape[1], shape[3]):
        raise InputError(
            f"{path}: model input {spec.name!r} has shape {_shape_text(shape)}, "
            "not an RGB image batch (use .npy)"
        )
    channels_first = shape[3] != _RGB_CHANNELS
    height, width = (shape[2], shape[3]) if channels_first else (shape[1], shape[2])
    target_dtype = _dtype(spec, path)
    if preprocess is not None and target_dtype.kind != "f":
        raise InputError(
            f"{path}: model input {spec.name!r} is {target_dtype}; "
            f"{preprocess!r} preprocessing gives floats"
        )

    center_crop = preprocess is not None and PREPROCESS_FAMILIES[preprocess] == "center_crop"
    pixels = decode_image(path, height=height, width=width, center_crop=center_crop)
    batch = pixels[np.newaxis].astype(np.float32)
    if preprocess is not None:
        batch = _preprocess(batch, preprocess)
    if channels_first:
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return {spec.name: batch.astype(target_dtype, copy=False)}


def decode_image(
    path: Path, *, height: int | None, width: int | None, center_crop: bool = False
) -> np.ndarray:
    """RGB uint8 pixels (H, W, 3) of an image file, resized (bilinear) when H and W are given.

    A ``None`` height or width keeps the image's own size in that dimension.
    ``center_crop``: first keep the centre ``H / (H + 32)`` of the shorter side (a square
    for a square input) and resize it with a bicubic filter, as TensorFlow's EfficientNet
    evaluation does (``_decode_and_center_crop`` in ``tensorflow/tpu``).
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.mode != "RGB":
                # Through RGBA so palette transparency converts without a warning.
                has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB").convert("RGB")
            size = (width or image.width, height or image.height)
            if center_crop and height and width:
                return _center_crop(image, height, width)
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: cannot read file (permission denied)") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not an image Pillow can read (broken or wrong type)") from exc
    except _PIL_ERRORS as exc:
        raise InputError(f"{path}: broken image ({_reason(exc)})") from exc


def _center_crop(image: Image.Image, height: int, width: int) -> np.ndarray:
    side = min(image.width, image.height)
    crop_h = int(height / (height + _CROP_PADDING) * side)
    crop_w = int(width / (width + _CROP_PADDING) * side)
    top = (image.height - crop_h + 1) // 2
    left = (image.width - crop_w + 1) // 2
    box = (left, top, left + crop_w, top + crop_h)
    cropped = image.crop(box).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(cropped, dtype=np.uint8)


def _preprocess(batch: np.ndarray, family: str) -> np.ndarray:
    """``keras.applications.<family>.preprocess_input`` on a channels-last float32 batch,
    in numpy: the same operations in the same order as Keras' ``_preprocess_numpy_input``
    (bit for bit, tested), without importing Keras."""
    mode = PREPROCESS_FAMILIES[family]
    if mode in ("identity", "center_crop"):
        return batch
    x = np.array(batch, dtype=np.float32)  # a copy: the operations below are in place
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:  # caffe
        x = x[..., ::-1]  # RGB -> BGR
        mean, std = _CAFFE_MEAN_BGR, None
    for channel in range(_RGB_CHANNELS):
        x[..., channel] -= mean[channel]
        if std is not None:
            x[..., channel] /= std[channel]
    return x


# -- arrays -------------------------------------------------------------------------------


def _dtype(spec: InputSpec, path: Path) -> np.dtype[np.generic]:
    try:
        return np.dtype(spec.dtype)
    except TypeError as exc:
        raise InputError(
            f"{path}: model input {spec.name!r} has unknown dtype {spec.dtype!r}"
        ) from exc


def _load_npy(path: Path, input_specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    if len(input_specs) != 1:
        names = ", ".join(s.name for s in input_specs)
        raise InputError(f"{path}: a .npy fits only a single-input model; this one has {names}")
    try:
        with path.open("rb") as handle:
            array = np.load(handle, allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({_reason(exc)})") from exc
    if not isinstance(array, np.ndarray):
        array.close()
        raise InputError(f"{path}: a .npz archive, not a .npy array (name it .npz)")
    spec = input_specs[0]
    return {spec.name: _fit(array, spec, f"{path}")}


def _load_npz(path: Path, input_specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    wanted = {spec.name: spec for spec in input_specs}
    try:
        # np.load leaks its own file handle when the zip is broken; ours is always closed.
        with path.open("rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise InputError(f"{path}: a single array, not a .npz archive (name it .npy)")
            with loaded as archive:
                keys = set(archive.files)
                missing = sorted(wanted.keys() - keys)
                extra = sorted(keys - wanted.keys())
                if missing or extra:
                    parts = []
                    if missing:
                        parts.append("missing " + ", ".join(repr(k) for k in missing))
                    if extra:
                        parts.append("unexpected " + ", ".join(repr(k) for k in extra))
                    expected = ", ".join(repr(k) for k in wanted)
                    raise InputError(
                        f"{path}: keys must be the model inputs ({expected}): " + "; ".join(parts)
                    )
                arrays = {name: archive[name] for name in wanted}
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({_reason(exc)})") from exc
    return {name: _fit(arrays[name], wanted[name], f"{path}[{name}]") for name in wanted}


def _fit(array: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """Check an array against a spec; add a missing batch dimension; cast within a kind."""
    shape = tuple(spec.shape)
    if array.ndim == len(shape) - 1 and shape and shape[0] in (None, 1):
        array = array[np.newaxis]
    if array.ndim != len(shape) or any(
        want is not None and want != got for want, got in zip(shape, array.shape, strict=True)
    ):
        raise InputError(
            f"{where}: shape {_shape_text(array.shape)} does not fit model input "
            f"{spec.name!r} {_shape_text(shape)}"
        )
    target = np.dtype(spec.dtype)
    if array.dtype != target:
        if not np.can_cast(array.dtype, target, casting="same_kind"):
            raise InputError(
                f"{where}: dtype {array.dtype} does not fit model input {spec.name!r} ({target})"
            )
        array = array.astype(target)
    return array
