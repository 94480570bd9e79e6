"""The legacy PyTorch state-dict reader, on files written here in torch's own format."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgenode.errors import ModelError
from edgenode.model.torch_legacy import read_state_dict

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
SYS_INFO = {"protocol_version": PROTOCOL, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}  # fmt: skip


class _Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


def _fake_torch(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type, object]:
    """Stand-ins named like torch's, so pickle writes the globals torch.save writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    def _rebuild_tensor_v2(*args: object) -> None:
        raise AssertionError("only pickled, never called")

    for cls in (FloatStorage, LongStorage):
        cls.__module__, cls.__qualname__ = "torch", cls.__name__
        setattr(torch, cls.__name__, cls)
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return FloatStorage, LongStorage, _rebuild_tensor_v2


def write_legacy(
    path: Path, tensors: dict[str, np.ndarray | tuple[np.ndarray, tuple, tuple]], monkeypatch
) -> None:
    """``torch.save`` (legacy format) of ``name -> array`` or ``name -> (storage array,
    shape, strides in elements)``: a tensor viewing its own storage through those."""
    float_storage, long_storage, rebuild = _fake_torch(monkeypatch)
    storages = {}

    class Tensor:
        def __init__(self, key: str, data: np.ndarray, shape, strides) -> None:
            self.storage, self.shape, self.strides = _Storage(key, data), shape, strides

        def __reduce__(self):
            return (rebuild, (self.storage, 0, self.shape, self.strides, False,
                              collections.OrderedDict()))  # fmt: skip

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                kind = long_storage if obj.data.dtype == np.int64 else float_storage
                storages[obj.key] = obj.data
                return ("storage", kind, obj.key, "cpu", obj.data.size, None)
            return None

    state = collections.OrderedDict()
    for i, (name, given) in enumerate(tensors.items()):
        data, shape, strides = given if isinstance(given, tuple) else (given, None, None)
        shape = shape or data.shape
        state[name] = Tensor(str(1000 + i), data.reshape(-1), shape, strides or _c(shape))
    out = io.BytesIO()
    pickle.dump(MAGIC, out, protocol=2)
    pickle.dump(PROTOCOL, out, protocol=2)
    pickle.dump(SYS_INFO, out, protocol=2)
    Pickler(out, protocol=2).dump(state)
    keys = list(storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        out.write(struct.pack("<q", storages[key].size))
        out.write(storages[key].astype(storages[key].dtype.newbyteorder("<")).tobytes())
    path.write_bytes(out.getvalue())


def _c(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def test_reads_contiguous_permuted_and_scalar_tensors(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    hwio = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # stored as TF keeps it
    plain = rng.standard_normal((4, 5)).astype(np.float32)
    count = np.array(7, np.int64)
    # The tensor is OIHW (4, 2, 3, 3) viewing the HWIO storage: strides of O, I, H, W.
    oihw_strides = (1, 4, 24, 8)
    path = tmp_path / "w.pth"
    write_legacy(path, {"conv": hwio, "fc": plain, "n": count}, monkeypatch)
    monkeypatch.undo()
    got = read_state_dict(path)
    assert set(got) == {"conv", "fc", "n"}
    np.testing.assert_array_equal(got["conv"], hwio)
    np.testing.assert_array_equal(got["fc"], plain)
    assert got["n"].shape == () and int(got["n"]) == 7 and got["n"].dtype == np.int64

    # the same storage seen through OIHW strides, as the converted checkpoints store it
    write_legacy(path, {"conv": (hwio, (4, 2, 3, 3), oihw_strides)}, monkeypatch)
    monkeypatch.undo()
    view = read_state_dict(path)["conv"]
    np.testing.assert_array_equal(view, hwio.transpose(3, 2, 0, 1))
    assert view.flags["C_CONTIGUOUS"]


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    out = io.BytesIO()
    pickle.dump(MAGIC, out, protocol=2)
    pickle.dump(PROTOCOL, out, protocol=2)
    pickle.dump(Evil(), out, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(out.getvalue())
    with pytest.raises(ModelError, match=r"refusing .*system"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 10, 200, -5])
def test_truncated_or_foreign_files_are_one_line_errors(tmp_path: Path, monkeypatch, cut) -> None:
    path = tmp_path / "w.pth"
    write_legacy(path, {"fc": np.ones((8, 8), np.float32)}, monkeypatch)
    monkeypatch.undo()
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut else b"PK\x03\x04 a zip, not a legacy file")
    with pytest.raises(ModelError) as caught:
        read_state_dict(path)
    assert len(str(caught.value).splitlines()) == 1


def test_a_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        read_state_dict(tmp_path / "absent.pth")
