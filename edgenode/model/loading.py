"""Load a model from a ``.keras`` file or build a ``keras.applications`` model.

Importing this module does not import Keras (which imports TensorFlow, seconds): the CLI
checks a model argument with ``check_model_source`` before paying for that.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgenode.errors import ModelError
from edgenode.model.calibrate import calibrate_batchnorm

if TYPE_CHECKING:
    from edgenode.model.graph import LayerGraph

__all__ = ["application_names", "check_model_source", "load_model", "model_sha256"]

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
# edgenode.model.efficientnet_lite.NAME, which cannot be imported without Keras
# (tests/test_exit_and_errors.py holds the two equal).
_LITE_NAME = "EfficientNetLite0"
# Where Keras 3 keeps the generated public API of keras.applications, by version.
_KERAS_API_FILES = ("applications/__init__.py", "api/applications/__init__.py")
# Model files name the module of every class; these come with Keras itself.
_KERAS_MODULES = ("keras", "builtins")
# The packages whose classes Keras imports by itself when it loads a file
# (keras/src/saving/serialization_lib.py): classes of any other package must have been
# imported (registered) before, which nothing in edgenode does.
_KERAS_IMPORTS = ("keras_hub", "keras_cv", "keras_nlp")
_CLASS_KEYS = ("class_name", "module", "registered_name")  # of a serialized object


@functools.cache
def _applications() -> dict[str, Callable[..., Any]]:
    import keras

    found: dict[str, Callable[..., Any]] = {}
    for attr in dir(keras.applications):
        builder = getattr(keras.applications, attr)
        if attr[:1].isupper() and callable(builder):
            found[attr] = builder
    return found


@functools.cache
def keras_application_names() -> frozenset[str] | None:
    """The model names ``keras.applications`` exports, read from Keras' generated API
    file without importing Keras; None where Keras is not installed or keeps it elsewhere."""
    spec = importlib.util.find_spec("keras")  # finds the package, does not run it
    roots = spec.submodule_search_locations if spec is not None else None
    for root in roots or ():
        for name in _KERAS_API_FILES:
            path = Path(root) / name
            if not path.is_file():
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, ValueError):
                return None
            return frozenset(
                alias.asname or alias.name
                for node in tree.body
                if isinstance(node, ast.ImportFrom)
                for alias in node.names
                if (alias.asname or alias.name)[:1].isupper()
            )
    return None


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def application_names() -> list[str]:
    """Names of the models that can be built by name (``keras.applications`` and
    ``EfficientNetLite0``); imports Keras."""
    return sorted([*_applications(), _LITE_NAME])


def _resolve_application(name: str) -> tuple[str, Callable[..., Any]] | None:
    wanted = _key(name)
    for attr, builder in _applications().items():
        if _key(attr) == wanted:
            return attr, builder
    return None


def _unknown_model(spec: str, names: Iterable[str]) -> ModelError:
    close = [n for n in names if _key(spec)[:6] and _key(spec)[:6] in _key(n)]
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    return ModelError(f"unknown model {spec!r}: not a file and not a keras.applications name{hint}")


def _is_file_spec(path: Path) -> bool:
    return path.suffix in (".keras", ".h5") or path.exists()


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelError(f"{what} file {path} does not exist")


def check_model_source(spec: str, *, weights: str | None = None) -> None:
    """ModelError for a model argument that cannot load (a missing model or weights file, a
    name Keras does not know), without importing Keras, so the error comes at once."""
    path = Path(spec)
    if _is_file_spec(path):
        _check_file(path, "model")
    else:
        names = keras_application_names()
        if names is not None and _key(spec) not in {_key(n) for n in (*names, _LITE_NAME)}:
            raise _unknown_model(spec, sorted([*names, _LITE_NAME]))
    if weights is not None and weights.lower() not in ("none", "imagenet"):
        _check_file(Path(weights), "weights")


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
    import keras

    from edgenode.model import efficientnet_lite

    path = Path(spec)
    if _is_file_spec(path):
        if input_shape is not None:
            raise ModelError("--input-shape applies to keras.applications names, not to files")
        if logits:
            raise ModelError("logits applies to keras.applications names, not to files")
        return _load_file(path, weights)
    if efficientnet_lite.is_named(spec):
        return _build_efficientnet_lite0(weights, input_shape, seed)
    found = _resolve_application(spec)
    if found is None:
        raise _unknown_model(spec, application_names())
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
    import keras

    from edgenode.model import efficientnet_lite

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
            f"cannot download ImageNet weights for {attr} ({_reason(exc)}); download "
            "the weights file on a machine with internet access and pass --weights PATH"
        ) from exc


def _load_file(path: Path, weights: str | None) -> Any:
    import keras

    _check_file(path, "model")
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        # Keras' message quotes the whole config of the class it could not find.
        reason = _unavailable_class(path) or _reason(exc)
        raise ModelError(f"cannot load model file {path}: {reason}") from exc
    if weights not in (None, "none"):
        _load_weights(model, Path(weights))
    return model


def _load_weights(model: Any, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load weights from {path}: {_reason(exc)}") from exc


def _unavailable_class(path: Path) -> str | None:
    """Why a ``.keras`` file cannot load when one of its classes comes from a package that
    is not installed, or that Keras does not import: which class, which package, and what
    to install where installing helps."""
    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    for class_name, module, registered in _classes(config):
        package = module.partition(".")[0]
        if package in _KERAS_MODULES:
            continue
        if registered and keras.saving.get_registered_object(registered) is not None:
            continue  # imported here by someone: not what failed
        source = package if module == package else f"{package} (module {module})"
        if package == "__main__":
            return (
                f"class {class_name} was defined in the script that saved the model, not in "
                "a package, so it cannot be loaded here"
            )
        if package not in _KERAS_IMPORTS:
            return (
                f"class {class_name} comes from {source}, which Keras does not import when "
                f"it loads a file (only {', '.join(_KERAS_IMPORTS)})"
            )
        try:
            installed = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            installed = False
        if not installed:
            return (
                f"class {class_name} comes from {source}, which is not installed here: "
                f"install it (pip install {package.replace('_', '-')})"
            )
    return None


def _classes(config: Any) -> Iterator[tuple[str, str, str | None]]:
    """(class name, module, registered name) of every serialized object in a Keras config
    that names its module, once each."""
    seen: set[tuple[str, str]] = set()
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            name, module, registered = (item.get(k) for k in _CLASS_KEYS)
            if isinstance(name, str) and isinstance(module, str) and (module, name) not in seen:
                seen.add((module, name))
                yield name, module, registered if isinstance(registered, str) else None
            stack.extend(reversed(list(item.values())))


_REASON_MAX_CHARS = 200  # Keras' messages can quote a whole model config
_UNREGISTERED = re.compile(r"Could not locate class '([^']+)'")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    unregistered = _UNREGISTERED.search(text)
    if unregistered:
        return f"Keras knows no class {unregistered.group(1)} (another version of its package?)"
    lines = text.splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= _REASON_MAX_CHARS else line[: _REASON_MAX_CHARS - 3] + "..."


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
    import keras

    seen: set[int] = set()
    for op in graph.ops:
        for weight in getattr(op.operation, "weights", ()):
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()
