"""Read a PyTorch state dict saved in the legacy format, with numpy and without torch.

Before PyTorch 1.6, ``torch.save`` wrote a state dict as five pickles and raw bytes, one
after the other: a magic number, the protocol version, system information (endianness,
type sizes), the state dict itself (each tensor a ``torch._utils._rebuild_tensor_v2``
call whose storage is a persistent id), the list of storage keys, then every storage as
an int64 element count followed by its raw little-endian elements. A tensor is a view of
its storage: an offset, a shape and strides in elements (weights converted from
TensorFlow keep TF's layout through the strides, so the views are not contiguous).

Only the classes a state dict needs are accepted by the unpickler: anything else in the
file is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenode.errors import ModelError

__all__ = ["read_state_dict"]

_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_COUNT = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class _StorageRef:
    dtype: np.dtype[Any]
    key: str
    count: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], *_: Any
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(strides))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a state dict")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ("storage", storage type, key, location, element count, view metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        kind = pid[1]
        if kind not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage {kind!r}")
        return _StorageRef(np.dtype(_STORAGE_DTYPES[kind]).newbyteorder("<"), str(pid[2]), pid[4])


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format ``.pth`` state dict, by name, as numpy arrays."""
    try:
        with path.open("rb") as f:
            if _Unpickler(f).load() != _MAGIC:
                raise ModelError(f"{path} is not a PyTorch legacy-format file")
            if _Unpickler(f).load() != _PROTOCOL:
                raise ModelError(f"{path}: unsupported PyTorch file protocol")
            info = _Unpickler(f).load()
            if not (isinstance(info, dict) and info.get("little_endian")):
                raise ModelError(f"{path}: only little-endian PyTorch files are supported")
            state = _Unpickler(f).load()
            keys = _Unpickler(f).load()
            data = f.read()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"{path} is not a readable PyTorch state dict: {reason}") from exc
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ModelError(f"{path} does not hold a state dict")
    refs = {t.storage.key: t.storage for t in state.values() if isinstance(t, _TensorRef)}
    storages: dict[str, np.ndarray] = {}
    position = 0
    for key in keys:
        ref = refs.get(str(key))
        if ref is None or position + _COUNT.size > len(data):
            raise ModelError(f"{path}: storage {key!r} is missing or truncated")
        (count,) = _COUNT.unpack_from(data, position)
        position += _COUNT.size
        size = count * ref.dtype.itemsize
        if count < 0 or position + size > len(data):
            raise ModelError(f"{path}: storage {key!r} is truncated")
        storages[ref.key] = np.frombuffer(data, dtype=ref.dtype, count=count, offset=position)
        position += size
    return {str(name): _view(str(name), t, storages, path) for name, t in state.items()}


def _view(name: str, tensor: Any, storages: dict[str, np.ndarray], path: Path) -> np.ndarray:
    if not isinstance(tensor, _TensorRef) or tensor.storage.key not in storages:
        raise ModelError(f"{path}: {name} is not a tensor")
    storage = storages[tensor.storage.key]
    shape, strides = tensor.shape, tensor.strides
    if len(shape) != len(strides) or min(shape, default=1) < 0 or min(strides, default=0) < 0:
        raise ModelError(f"{path}: {name} has a bad shape or strides")
    last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if tensor.offset < 0 or (0 not in shape and last >= storage.size):
        raise ModelError(f"{path}: {name} reaches past its storage")
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :], shape=shape, strides=[s * itemsize for s in strides]
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")
