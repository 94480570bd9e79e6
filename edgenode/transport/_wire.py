"""Wire formats of float32 tensors between nodes: float16, and int8 affine (scale, zero point).

``encode`` turns a float32 array into the data and header fields of its wire format (None
when the format cannot carry it faithfully: the codec then sends float32); ``check_encoding``
validates a received header's fields and ``decode`` gives back float32. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import InvalidTensor
from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, WireFormat

__all__ = ["ENCODED_DTYPES", "FLOAT32", "FORMATS", "RAW", "Wire", "check_encoding", "decode",
           "encode"]  # fmt: skip

FLOAT32 = np.dtype("<f4")

# The element type of the encoded data, per encoding (None: the tensor's own dtype).
ENCODED_DTYPES: dict[int, np.dtype[Any] | None] = {
    pb.ENCODING_NONE: None,
    pb.ENCODING_FLOAT16: np.dtype("<f2"),
    pb.ENCODING_INT8_AFFINE: np.dtype("i1"),
}
FORMATS: dict[int, WireFormat] = {
    pb.ENCODING_NONE: DEFAULT_WIRE_FORMAT,
    pb.ENCODING_FLOAT16: "float16",
    pb.ENCODING_INT8_AFFINE: "int8",
}
_INT8_MIN, _INT8_MAX = -128, 127
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass(frozen=True, slots=True)
class Wire:
    """How one tensor's data is encoded: TensorHeader.encoding, scale and zero_point."""

    encoding: int = pb.ENCODING_NONE
    scale: float = 0.0
    zero_point: int = 0


RAW = Wire()


def encode(array: npt.NDArray[Any], wire_format: WireFormat) -> tuple[memoryview, Wire] | None:
    """A non-empty float32 array in ``wire_format``; None when that would lose more than the
    format's rounding (the caller sends it as float32)."""
    if wire_format == "float16":
        with np.errstate(over="ignore"):  # overflow is detected below, not warned about
            half = np.ascontiguousarray(array, dtype="<f2")
        lo, hi = float(array.min()), float(array.max())  # NaN if any: the slow check
        if not max(-lo, hi) <= _FLOAT16_MAX and (np.isinf(half) & np.isfinite(array)).any():
            return None  # a finite value beyond float16's range would arrive as inf
        return half.reshape(-1).view(np.uint8).data, Wire(pb.ENCODING_FLOAT16)
    if wire_format == "int8":
        return _quantize(array)
    raise InvalidTensor(f"unknown wire format {wire_format!r}")


def _quantize(array: npt.NDArray[Any]) -> tuple[memoryview, Wire] | None:
    """int8 affine over the array's range with zero included: value = scale * (q - zero_point),
    q = round(value / scale) + zero_point; each element decodes within scale/2."""
    lo, hi = float(array.min()), float(array.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None  # NaN or inf: int8 cannot carry it
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = _int8_scale(hi - lo)
    if max(-lo, hi) + scale > _FLOAT32_MAX:
        return None  # within a step of float32's largest value: it could decode as inf
    # -lo / scale is within 0..255, so the zero point is an int8 and lo..hi maps into
    # -128.5..127.5 before rounding: no element is clipped by more than rounding.
    zero_point = min(max(round(_INT8_MIN - lo / scale), _INT8_MIN), _INT8_MAX)
    q = np.empty(array.size, dtype=np.float64)
    np.divide(array.reshape(-1), scale, out=q)
    q += zero_point
    np.rint(q, out=q)
    np.clip(q, _INT8_MIN, _INT8_MAX, out=q)
    return q.astype("i1").view(np.uint8).data, Wire(pb.ENCODING_INT8_AFFINE, scale, zero_point)


def _int8_scale(width: float) -> float:
    """The smallest float32 step (a header's ``float scale``) with 255 steps >= width."""
    if width == 0.0:
        return 1.0  # an all-zero tensor: any positive scale decodes it exactly
    scale = np.float32(width / 255)
    while float(scale) * 255 < width:
        scale = np.nextafter(scale, np.float32(np.inf))
    return float(scale)


def check_encoding(header: pb.TensorHeader, dtype: np.dtype[Any], label: str) -> Wire:
    """The header's encoding, scale and zero point; InvalidTensor unless they go together."""
    encoding = int(header.encoding)
    scale, zero_point = float(header.scale), int(header.zero_point)
    if encoding not in ENCODED_DTYPES:
        raise InvalidTensor(f"{label}: unknown encoding {encoding}")
    if encoding == pb.ENCODING_NONE:
        wire = RAW
    elif dtype != FLOAT32:
        raise InvalidTensor(
            f"{label}: encoding {pb.Encoding.Name(encoding)} on dtype {dtype}; only float32 "
            "tensors are encoded"
        )
    elif encoding == pb.ENCODING_INT8_AFFINE:
        if not (math.isfinite(scale) and scale > 0):
            raise InvalidTensor(f"{label}: int8 scale {scale!r} must be finite and positive")
        if not _INT8_MIN <= zero_point <= _INT8_MAX:
            raise InvalidTensor(
                f"{label}: int8 zero point {zero_point} is outside {_INT8_MIN}..{_INT8_MAX}"
            )
        return Wire(encoding, scale, zero_point)
    else:
        wire = Wire(encoding)
    if scale != 0.0 or zero_point != 0:
        raise InvalidTensor(
            f"{label}: scale {scale!r} and zero point {zero_point} given, but the encoding "
            f"is {pb.Encoding.Name(encoding)}, not int8"
        )
    return wire


def decode(data: npt.NDArray[np.uint8], dtype: np.dtype[Any], wire: Wire) -> npt.NDArray[Any]:
    """The tensor's elements (flat) from its data: a view when sent as is, else float32."""
    if wire.encoding == pb.ENCODING_NONE:
        return data.view(dtype)
    if wire.encoding == pb.ENCODING_FLOAT16:
        return data.view("<f2").astype(np.float32)
    out = data.view(np.int8).astype(np.float32)
    out -= np.float32(wire.zero_point)
    with np.errstate(over="ignore"):  # only a hand-made scale gets here: inf, not a warning
        out *= np.float32(wire.scale)
    return out
