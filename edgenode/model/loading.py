"""Load a model from a ``.keras`` file or build a ``keras.applications`` model."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgenode.errors import ModelError
from edgenode.model import efficientnet_lite
from edgenode.model.calibrate import calibrate_batchnorm
from edgenode.model.graph import LayerGraph

__all__ = ["APPLICATIONS", "application_names", "load_model", "model_sha256"]

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
_DEFAULT_SIZE = 224
# Input sizes keras.applications models were trained at, where not 224.
_NATIVE_SIZE = {
    "efficientnetb1": 240,
    "efficientnetb2": 260,
    "efficientnetb3": 300,
    "efficientnetb4": 380,
    "efficientnetb5": 456,
    "efficientnetb6": 528,
    "efficientnetb7": 600,
    "efficientnetv2b1": 240,
    "efficientnetv2b2": 260,
    "efficientnetv2b3": 300,
    "efficientnetv2s": 384,
    "efficientnetv2m": 480,
    "efficientnetv2l": 480,
    "inceptionv3": 299,
    "inceptionresnetv2": 299,
    "xception": 299,
    "nasnetlarge": 331,
}


def _collect_applications() -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for attr in dir(keras.applications):
        builder = getattr(keras.applications, attr)
        if attr[:1].isupper() and callable(builder):
            found[attr] = builder
    return found


APPLICATIONS = _collect_applications()


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def application_names() -> list[str]:
    """Names of the models that can be built by name (``keras.applications`` and
    ``EfficientNetLite0``)."""
    return sorted([*APPLICATIONS, efficientnet_lite.NAME])


def _resolve_application(name: str) -> tuple[str, Callable[..., Any]] | None:
    wanted = _key(name)
    for attr, builder in APPLICATIONS.items():
        if _key(attr) == wanted:
            return attr, builder
    return None


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = DEFAULT_SEED,
    logits: bool = False,
) -> Any:
    """A functional Keras model from a ``.keras`` path or an application name.

    ``weights``: ``None``/``"none"`` (random, seeded so every process builds the same
    model, BatchNorm calibrated so its answers move with the input: see
    ``edgenode.model.calibrate``), ``"imagenet"`` (downloaded by Keras where the machine
    can), or a path to a weights file. ``input_shape`` without the batch dimension.
    ``logits``: an application's classifier without its softmax
    (``classifier_activation=None``), what comparisons should compare.
    """
    path = Path(spec)
    if path.suffix in (".keras", ".h5") or path.exists():
        if input_shape is not None:
            raise ModelError("--input-shape applies to keras.applications names, not to files")
        if logits:
            raise ModelError("logits applies to keras.applications names, not to files")
        return _load_file(path, weights)
    if efficientnet_lite.is_named(spec):
        return _build_efficientnet_lite0(weights, input_shape, seed)
    found = _resolve_application(spec)
    if found is None:
        close = [n for n in application_names() if _key(spec)[:6] and _key(spec)[:6] in _key(n)]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise ModelError(
            f"unknown model {spec!r}: not a file and not a keras.applications name{hint}"
        )
    attr, builder = found
    size = _NATIVE_SIZE.get(_key(attr), _DEFAULT_SIZE)
    shape = input_shape or (size, size, 3)
    mode = weights or "none"
    if mode.lower() in ("none", "imagenet"):
        mode = mode.lower()
    options = _classifier_options(attr, builder, logits)
    keras.utils.set_random_seed(seed)
    if mode == "imagenet":
        model = _build_imagenet(attr, builder, shape, options)
    else:
        try:
            model = builder(input_shape=shape, weights=None, **options)
        except ValueError as exc:
            raise ModelError(f"cannot build {attr} with input shape {shape}: {exc}") from exc
    if mode == "none":
        calibrate_batchnorm(model, seed)
    elif mode != "imagenet":
        _load_weights(model, Path(mode))
    return model


def _classifier_options(attr: str, builder: Callable[..., Any], logits: bool) -> dict[str, Any]:
    """Builder keywords that leave the softmax out, when ``logits`` is asked for."""
    if not logits:
        return {}
    if "classifier_activation" not in inspect.signature(builder).parameters:
        raise ModelError(f"{attr} cannot be built without its classifier activation (logits)")
    return {"classifier_activation": None}


def _build_efficientnet_lite0(
    weights: str | None, input_shape: tuple[int, ...] | None, seed: int
) -> Any:
    mode = weights or "none"
    keras.utils.set_random_seed(seed)
    model = efficientnet_lite.build_efficientnet_lite0(input_shape)
    if mode.lower() == "none":
        calibrate_batchnorm(model, seed)
    elif mode.lower() == "imagenet":
        efficientnet_lite.load_torch_weights(model, efficientnet_lite.pretrained_weights_path())
    else:
        path = Path(mode)
        if path.suffix == ".pth":
            if not path.is_file():
                raise ModelError(f"weights file {path} does not exist")
            efficientnet_lite.load_torch_weights(model, path)
        else:
            _load_weights(model, path)
    return model


def _build_imagenet(
    attr: str, builder: Callable[..., Any], shape: tuple[int, ...], options: dict[str, Any]
) -> Any:
    try:
        return builder(input_shape=shape, weights="imagenet", **options)
    except ValueError as exc:
        raise ModelError(f"cannot build {attr} with input shape {shape}: {exc}") from exc
    except Exception as exc:  # keras.utils.get_file raises a bare Exception offline
        raise ModelError(
            f"cannot download ImageNet weights for {attr} ({_first_line(exc)}); download "
            "the weights file on a machine with internet access and pass --weights PATH"
        ) from exc


def _load_file(path: Path, weights: str | None) -> Any:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        raise ModelError(f"cannot load model file {path}: {_first_line(exc)}") from exc
    if weights not in (None, "none"):
        _load_weights(model, Path(weights))
    return model


def _load_weights(model: Any, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load weights from {path}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    return type(value).__name__


def model_sha256(graph: LayerGraph) -> str:
    """Content hash of a model: its graph, operation configs and weights.

    Independent of file names, zip timestamps and the process that built the model,
    so nodes that build or load the same model agree on it.
    """
    digest = hashlib.sha256()
    structure = []
    for op in graph.ops:
        try:
            config = op.operation.get_config()
        except (NotImplementedError, TypeError, AttributeError):
            config = {}
        config = {k: v for k, v in config.items() if k != "name"}
        structure.append([op.name, op.kind, op.inputs, op.outputs, config])
    tensors = [graph.tensors[name].spec() for name in graph.tensors]
    digest.update(
        json.dumps(
            [structure, tensors, graph.inputs, graph.outputs], sort_keys=True, default=_jsonable
        ).encode()
    )
    seen: set[int] = set()
    for op in graph.ops:
        for weight in getattr(op.operation, "weights", ()):
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()
