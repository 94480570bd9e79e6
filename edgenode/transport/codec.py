"""Tensors <-> serialized ``edgenode.v1.Frame`` messages: pure (no I/O), with few copies.

Sending, the only copy is the one that joins a frame's pieces (header bytes and a slice of the
array's own memory) into the message bytes. Receiving, a tensor that arrived whole in one frame
is a zero-copy view of that frame's bytes; a chunked tensor is written chunk by chunk into one
buffer allocated from its header. Received arrays are read-only.

Wire formats: a float32 tensor whose ``wire_format`` is float16 or int8 travels encoded
(``TensorHeader.encoding``): rounded to float16, or quantized per tensor to int8 with a scale
and zero point over its range (zero included, so the zero point is an int8; each element
comes back within scale/2). The header keeps the tensor's own dtype (float32) and shape; the
decoder gives back float32 arrays. A tensor the format cannot carry faithfully (NaN or inf
for int8, a value beyond float16's range) and any tensor of another dtype travel as they are.

The Frame and TensorPart wrappers are read and written directly in protobuf wire format
(``_pbwire.py``: a few tags and lengths); the TensorHeader message goes through the generated
class. A float32 tensor may travel in a smaller wire format (``_wire.py``). Tests check both
directions against the generated classes.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NewType

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.defaults import MAX_TENSOR_BYTES
from edgenode.errors import (
    ChecksumMismatch,
    DuplicateTensor,
    IncompleteTensor,
    InvalidTensor,
    ProtocolError,
    TensorTooLarge,
)
from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, RESERVED_PREFIX, WireFormat
from edgenode.transport._pbwire import (
    LEN,
    VARINT,
    add_part,
    read_tag,
    read_varint,
    skip,
    span_end,
)
from edgenode.transport._wire import (
    ENCODED_DTYPES,
    FLOAT32,
    FORMATS,
    RAW,
    Wire,
    check_encoding,
    decode,
    encode,
)

__all__ = [
    "CHUNK_BYTES",
    "CONTROL_PREFIX",
    "DEFAULT_MAX_TENSOR_BYTES",
    "DUPLICATE_WINDOW_REQUESTS",
    "ENCODE_IN_THREAD_BYTES",
    "END",
    "ERROR",
    "FAIL",
    "MAX_NDIM",
    "RETRY",
    "FrameDecoder",
    "RequestId",
    "Tensor",
    "control",
    "control_text",
    "encode_frames",
    "encode_frames_async",
    "is_control",
    "wire_dtypes",
]

CHUNK_BYTES = 1 << 20  # data bytes per frame; far below gRPC's 4 MiB message limit
DEFAULT_MAX_TENSOR_BYTES = MAX_TENSOR_BYTES  # a receiver refuses larger tensors unless configured
MAX_NDIM = 64  # numpy's own limit
DUPLICATE_WINDOW_REQUESTS = 4096  # requests remembered per stream for duplicate detection
ENCODE_IN_THREAD_BYTES = 256 << 10  # encoding more to float16/int8: on a thread (~1 ms/MB)

RequestId = NewType("RequestId", str)

# In-band control, the one convention of every stream: a tensor whose name starts with
# CONTROL_PREFIX is a signal about its request, not a model tensor (a manifest refuses model
# tensor names that start with it), and its data is UTF-8 text as uint8, maybe empty.
CONTROL_PREFIX = RESERVED_PREFIX
END = f"{CONTROL_PREFIX}end"  # InferSession: after a request's inputs, and after its outputs
ERROR = f"{CONTROL_PREFIX}error"  # InferSession: instead of the outputs; "CODE: message"
RETRY = f"{CONTROL_PREFIX}retry"  # Stream, to the origin: this attempt cannot finish; resend
FAIL = f"{CONTROL_PREFIX}fail"  # Stream, to the origin: the request failed; do not retry

_DTYPES: dict[int, np.dtype[Any]] = {
    pb.DTYPE_BOOL: np.dtype("?"),
    pb.DTYPE_INT8: np.dtype("i1"),
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT16: np.dtype("<i2"),
    pb.DTYPE_UINT16: np.dtype("<u2"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_UINT32: np.dtype("<u4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_UINT64: np.dtype("<u8"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_COMPLEX64: np.dtype("<c8"),
    pb.DTYPE_COMPLEX128: np.dtype("<c16"),
}
_CODES: dict[np.dtype[Any], int] = {dt: code for code, dt in _DTYPES.items()}

_PART_OVERHEAD_BYTES = 32  # tags and lengths of one part, generously


@dataclass(frozen=True, slots=True)
class Tensor:
    """One named tensor of one inference request."""

    request_id: RequestId
    name: str
    array: npt.NDArray[Any]
    plan_digest: str = ""
    # How a float32 array travels (other dtypes always travel as they are); on a received
    # tensor, how it travelled.
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return int(self.array.nbytes)


def is_control(name: str) -> bool:
    """True for the name of a control tensor (see CONTROL_PREFIX)."""
    return name.startswith(CONTROL_PREFIX)


def control(request_id: RequestId, name: str, text: str = "", plan_digest: str = "") -> Tensor:
    """The control tensor ``name`` of a request, carrying ``text``."""
    return Tensor(request_id, name, np.frombuffer(text.encode(), dtype=np.uint8), plan_digest)


def control_text(tensor: Tensor) -> str:
    """The text a control tensor carries (undecodable bytes replaced)."""
    return bytes(np.ascontiguousarray(tensor.array, dtype=np.uint8)).decode("utf-8", "replace")


def wire_dtypes() -> list[np.dtype[Any]]:
    """The element types that can travel (little-endian forms)."""
    return list(_CODES)


# -- encoding ------------------------------------------------------------------------------


def encode_frames(
    tensors: Iterable[Tensor], *, chunk_bytes: int = CHUNK_BYTES, checksum: bool = False
) -> Iterator[bytes]:
    """Serialized frames carrying the tensors in order; small tensors share one frame.

    A tensor starts a new frame unless it fits whole in the current one, or spans frames of one
    part each; frames are produced lazily (a sender awaiting each write holds one at a time).
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    # Checked before the first frame, so a bad tensor never leaves half a send on a stream.
    prepared = []
    for tensor in tensors:
        data, wire = _wire_bytes(tensor)
        prepared.append((data, _header(tensor, data, wire, checksum).SerializeToString()))
    return _frames(prepared, chunk_bytes)


async def encode_frames_async(
    tensors: Sequence[Tensor], *, chunk_bytes: int = CHUNK_BYTES, checksum: bool = False
) -> Iterator[bytes]:
    """``encode_frames``, encoding ENCODE_IN_THREAD_BYTES or more off the event loop."""
    heavy = sum(t.nbytes for t in tensors if t.wire_format != DEFAULT_WIRE_FORMAT)
    if heavy < ENCODE_IN_THREAD_BYTES:
        return encode_frames(tensors, chunk_bytes=chunk_bytes, checksum=checksum)
    return await asyncio.to_thread(
        encode_frames, tensors, chunk_bytes=chunk_bytes, checksum=checksum
    )


def _frames(prepared: list[tuple[memoryview, bytes]], chunk_bytes: int) -> Iterator[bytes]:
    pieces: list[bytes | memoryview] = []
    used = 0
    for data, header in prepared:
        size = len(data) + len(header) + _PART_OVERHEAD_BYTES
        if pieces and used + size > chunk_bytes:
            yield b"".join(pieces)
            pieces, used = [], 0
        first = min(len(data), chunk_bytes)
        add_part(pieces, header, 0, data[:first])
        used += size
        for offset in range(first, len(data), chunk_bytes):
            yield b"".join(pieces)
            chunk = data[offset : offset + chunk_bytes]
            pieces, used = [], len(chunk) + _PART_OVERHEAD_BYTES
            add_part(pieces, None, offset, chunk)
    if pieces:
        yield b"".join(pieces)


def _wire_bytes(tensor: Tensor) -> tuple[memoryview, Wire]:
    """The data to send: the array's bytes, C-ordered and little-endian (a view when it
    already is), or a float32 array encoded in the tensor's wire format."""
    array = np.asarray(tensor.array)
    wire = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if wire not in _CODES:
        raise InvalidTensor(
            f"tensor {tensor.name!r} of request {tensor.request_id!r}: dtype {array.dtype} "
            f"cannot travel (supported: {', '.join(str(d) for d in _CODES)})"
        )
    if wire == FLOAT32 and array.size and tensor.wire_format != DEFAULT_WIRE_FORMAT:
        encoded = encode(array, tensor.wire_format)
        if encoded is not None:
            return encoded
    if array.dtype != wire or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire)
    return array.reshape(-1).view(np.uint8).data, RAW


def _header(tensor: Tensor, data: memoryview, wire: Wire, checksum: bool) -> pb.TensorHeader:
    array = tensor.array
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    header = pb.TensorHeader(
        request_id=tensor.request_id,
        plan_digest=tensor.plan_digest,
        name=tensor.name,
        dtype=_CODES[dtype],  # type: ignore[arg-type]
        shape=array.shape,
        byte_length=len(data),
    )
    if wire.encoding != pb.ENCODING_NONE:
        header.encoding = wire.encoding  # type: ignore[assignment]
        header.scale = wire.scale
        header.zero_point = wire.zero_point
    if checksum:
        header.crc32 = zlib.crc32(data)
    return header


# -- decoding ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Assembly:
    """A tensor whose header arrived and whose bytes are still arriving."""

    request_id: RequestId
    name: str
    plan_digest: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    wire: Wire
    crc32: int | None
    buffer: npt.NDArray[np.uint8]
    filled: int = 0

    def label(self) -> str:
        return f"tensor {self.name!r} of request {self.request_id!r}"


class FrameDecoder:
    """Reassembles the tensors of one stream from its frames; raises on the first bad one.

    The pieces of one tensor must follow each other, so at most one buffer is pending. After
    an error the decoder is unusable; call ``discard`` to free the pending buffer.
    """

    def __init__(self, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> None:
        self._max_tensor_bytes = max_tensor_bytes
        self._current: _Assembly | None = None
        self._seen: OrderedDict[tuple[str, str], set[str]] = OrderedDict()
        self.tensors = 0  # whole tensors decoded
        self.bytes = 0  # their data bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes allocated for a tensor still arriving (0 when none)."""
        return 0 if self._current is None else int(self._current.buffer.nbytes)

    def feed(self, frame: bytes) -> list[Tensor]:
        """Decode one serialized frame; return the tensors it completed, in order."""
        done: list[Tensor] = []
        view = memoryview(frame)
        pos, end = 0, len(view)
        while pos < end:
            field, wire, pos = read_tag(view, pos, end, "frame")
            if field == 1 and wire == LEN:
                length, pos = read_varint(view, pos, end, "frame")
                stop = span_end(pos, length, end, "frame part")
                tensor = self._part(frame, view, pos, stop)
                if tensor is not None:
                    done.append(tensor)
                pos = stop
            else:
                pos = skip(view, field, wire, pos, end, "frame")
        return done

    def finish(self) -> None:
        """The stream ended normally: raise if a tensor is missing bytes."""
        current = self._current
        if current is not None:
            self.discard()
            raise IncompleteTensor(
                f"{current.label()}: stream ended after {current.filled} of "
                f"{current.buffer.nbytes} bytes"
            )

    def discard(self) -> None:
        """Free the buffer of a tensor still arriving (stream failed or was cancelled)."""
        self._current = None

    def _part(self, frame: bytes, view: memoryview, pos: int, end: int) -> Tensor | None:
        header: memoryview | None = None
        offset = 0
        data_start = data_end = pos
        seen: set[int] = set()
        while pos < end:
            field, wire, pos = read_tag(view, pos, end, "tensor part")
            if field in (1, 2, 3) and field in seen:
                raise ProtocolError(f"tensor part repeats field {field}")
            seen.add(field)
            if field == 1 and wire == LEN:
                length, pos = read_varint(view, pos, end, "tensor part")
                stop = span_end(pos, length, end, "tensor header")
                header, pos = view[pos:stop], stop
            elif field == 2 and wire == VARINT:
                offset, pos = read_varint(view, pos, end, "tensor part")
            elif field == 3 and wire == LEN:
                length, pos = read_varint(view, pos, end, "tensor part")
                data_start, data_end = pos, span_end(pos, length, end, "tensor data")
                pos = data_end
            elif field in (1, 2, 3):
                raise ProtocolError(f"tensor part field {field} has wire type {wire}")
            else:
                pos = skip(view, field, wire, pos, end, "tensor part")
        if header is not None:
            return self._start(frame, header, offset, data_start, data_end)
        return self._continue(view, offset, data_start, data_end)

    def _start(
        self, frame: bytes, raw: memoryview, offset: int, start: int, end: int
    ) -> Tensor | None:
        try:
            header = pb.TensorHeader.FromString(bytes(raw))
        except DecodeError as exc:
            raise ProtocolError(f"tensor header is not a valid TensorHeader: {exc}") from None
        rid, name = RequestId(header.request_id), header.name
        label = f"tensor {name!r} of request {rid!r}"
        current = self._current
        if current is not None:
            raise IncompleteTensor(
                f"{current.label()}: header of {label} arrived after {current.filled} of "
                f"{current.buffer.nbytes} bytes"
            )
        dtype, shape, wire = self._check_header(header, label)
        # A retry under a new plan reuses the request id: the plan digest is part of the key.
        key = (rid, header.plan_digest)
        names = self._seen.get(key)
        if names is None:
            names = self._seen[key] = set()
            if len(self._seen) > DUPLICATE_WINDOW_REQUESTS:
                self._seen.popitem(last=False)
        elif name in names:
            raise DuplicateTensor(f"{label} arrived twice on this stream")
        names.add(name)
        length = header.byte_length
        crc = header.crc32 if header.HasField("crc32") else None
        if offset != 0:
            raise ProtocolError(f"{label}: first chunk at offset {offset}, expected 0")
        if end - start > length:
            raise ProtocolError(
                f"{label}: chunk of {end - start} bytes at offset 0 goes beyond the declared "
                f"length of {length} bytes"
            )
        if end - start == length:  # whole tensor in this frame: a view, no copy
            array = np.frombuffer(frame, dtype=np.uint8, count=length, offset=start)
            return self._complete(rid, name, header.plan_digest, dtype, shape, wire, crc, array)
        self._current = _Assembly(
            request_id=rid,
            name=name,
            plan_digest=header.plan_digest,
            dtype=dtype,
            shape=shape,
            wire=wire,
            crc32=crc,
            buffer=np.empty(length, dtype=np.uint8),
        )
        self._fill(frame, 0, start, end)
        return None

    def _check_header(
        self, header: pb.TensorHeader, label: str
    ) -> tuple[np.dtype[Any], tuple[int, ...], Wire]:
        dtype = _DTYPES.get(header.dtype)
        if dtype is None:
            raise InvalidTensor(f"{label}: unknown dtype {header.dtype}")
        wire = check_encoding(header, dtype, label)
        encoded = ENCODED_DTYPES[wire.encoding] or dtype
        shape = tuple(header.shape)
        if len(shape) > MAX_NDIM:
            raise InvalidTensor(f"{label}: {len(shape)} dimensions, at most {MAX_NDIM}")
        if any(d < 0 for d in shape):
            raise InvalidTensor(f"{label}: negative dimension in shape {list(shape)}")
        # numpy refuses shapes whose non-zero dimensions multiply past its index type.
        if math.prod(d for d in shape if d) * dtype.itemsize >= 1 << 63:
            raise InvalidTensor(f"{label}: shape {list(shape)} overflows: absurd dimensions")
        needed = math.prod(shape) * encoded.itemsize
        if needed != header.byte_length:
            form = f"{dtype}" if encoded is dtype else f"{dtype} encoded as {encoded}"
            raise InvalidTensor(
                f"{label}: shape {list(shape)} of {form} needs {needed} bytes but the header "
                f"declares byte length {header.byte_length}"
            )
        # The limit is on what the receiver holds once decoded, not on the wire bytes.
        decoded = math.prod(shape) * dtype.itemsize
        if decoded > self._max_tensor_bytes:
            raise TensorTooLarge(
                f"{label}: {decoded} bytes exceeds this node's limit of "
                f"{self._max_tensor_bytes} bytes per tensor"
            )
        return dtype, shape, wire

    def _continue(self, view: memoryview, offset: int, start: int, end: int) -> Tensor | None:
        current = self._current
        if current is None:
            raise ProtocolError(f"chunk at offset {offset} without a tensor header before it")
        if offset != current.filled:
            raise ProtocolError(
                f"{current.label()}: chunk at offset {offset}, expected {current.filled}"
            )
        if offset + (end - start) > current.buffer.nbytes:
            raise ProtocolError(
                f"{current.label()}: chunk of {end - start} bytes at offset {offset} goes "
                f"beyond the declared length of {current.buffer.nbytes} bytes"
            )
        return self._fill(view, offset, start, end)

    def _fill(self, source: bytes | memoryview, offset: int, start: int, end: int) -> Tensor | None:
        current = self._current
        assert current is not None
        n = end - start
        current.buffer[offset : offset + n] = np.frombuffer(source, np.uint8, n, start)
        current.filled += n
        if current.filled < current.buffer.nbytes:
            return None
        self._current = None
        return self._complete(
            current.request_id,
            current.name,
            current.plan_digest,
            current.dtype,
            current.shape,
            current.wire,
            current.crc32,
            current.buffer,
        )

    def _complete(
        self,
        rid: RequestId,
        name: str,
        plan_digest: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        wire: Wire,
        crc: int | None,
        data: npt.NDArray[np.uint8],
    ) -> Tensor:
        if crc is not None and (actual := zlib.crc32(data.data)) != crc:
            raise ChecksumMismatch(
                f"tensor {name!r} of request {rid!r}: crc32 of the data is "
                f"{actual:#010x}, header declares {crc:#010x}"
            )
        array = decode(data, dtype, wire).reshape(shape)
        array.flags.writeable = False
        self.tensors += 1
        self.bytes += int(data.nbytes)
        return Tensor(
            request_id=rid,
            name=name,
            array=array,
            plan_digest=plan_digest,
            wire_format=FORMATS[wire.encoding],
        )
