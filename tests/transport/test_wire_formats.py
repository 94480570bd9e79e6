"""Wire formats in the codec: float16 and int8 round trips, fallbacks, and every bad header.

The int8 bound is checked against the scale the sender put in the header, and the same check
is shown to catch a decode that is off by one step (a shifted zero point).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import ChecksumMismatch, InvalidTensor, TensorTooLarge
from edgenode.model.manifest import WIRE_FORMATS
from edgenode.transport.codec import FrameDecoder, RequestId, Tensor, encode_frames
from tests.transport.conftest import frame, receive

F32_MAX = float(np.finfo(np.float32).max)


def wire(array: np.ndarray, fmt: str, name: str = "x") -> Tensor:
    return Tensor(RequestId("r"), name, array, "plan", fmt)  # type: ignore[arg-type]


def decode(frames, **kwargs) -> list[Tensor]:
    decoder = FrameDecoder(**kwargs)
    out = [t for f in frames for t in decoder.feed(f)]
    decoder.finish()
    assert decoder.pending_bytes == 0
    return out


def roundtrip(array: np.ndarray, fmt: str, **kwargs) -> tuple[Tensor, pb.TensorHeader]:
    frames = list(encode_frames([wire(array, fmt)], **kwargs))
    [got] = decode(frames)
    return got, first_header(frames[0])


def first_header(raw: bytes) -> pb.TensorHeader:
    return pb.Frame.FromString(raw).parts[0].header


def int8_bound(x: np.ndarray, scale: float) -> np.ndarray:
    """scale/2 per element, plus float32 rounding of the decoded value."""
    eps = 2.0**-23
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    return scale / 2 + eps * (np.abs(x.astype(np.float64)) + scale) + tiny


def assert_int8_close(x: np.ndarray, got: np.ndarray, scale: float) -> None:
    err = np.abs(got.astype(np.float64) - x.astype(np.float64))
    bound = int8_bound(x, scale)
    assert (err <= bound).all(), f"max error {err.max()} beyond scale/2 = {scale / 2}"


def normal(shape, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * spread).astype(np.float32)


# -- round trips ---------------------------------------------------------------------------


def test_float32_is_bit_exact_and_sent_as_is() -> None:
    x = normal((2, 7, 7, 5))
    got, head = roundtrip(x, "float32")
    assert head.encoding == pb.ENCODING_NONE and head.byte_length == x.nbytes
    assert got.array.dtype == np.float32 and got.wire_format == "float32"
    np.testing.assert_array_equal(got.array, x)


def test_float16_equals_numpys_cast() -> None:
    x = normal((1, 14, 14, 40), spread=50.0)
    got, head = roundtrip(x, "float16")
    assert head.encoding == pb.ENCODING_FLOAT16
    assert head.dtype == pb.DTYPE_FLOAT32 and tuple(head.shape) == x.shape
    assert head.byte_length == x.size * 2
    assert (head.scale, head.zero_point) == (0.0, 0)
    assert got.array.dtype == np.float32 and got.array.shape == x.shape
    assert got.wire_format == "float16" and not got.array.flags.writeable
    np.testing.assert_array_equal(got.array, x.astype(np.float16).astype(np.float32))
    assert not np.array_equal(got.array, x)  # it did round: the check is not vacuous


def test_int8_is_within_half_a_step_and_a_quarter_of_the_bytes() -> None:
    x = normal((1, 28, 28, 24))
    got, head = roundtrip(x, "int8")
    assert head.encoding == pb.ENCODING_INT8_AFFINE
    assert head.dtype == pb.DTYPE_FLOAT32 and head.byte_length == x.size
    assert -128 <= head.zero_point <= 127 and head.scale > 0
    # the range, zero included, in 255 steps
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    assert head.scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert got.array.dtype == np.float32 and got.array.shape == x.shape
    assert got.wire_format == "int8" and not got.array.flags.writeable
    assert_int8_close(x, got.array, head.scale)
    err = np.abs(got.array - x).max()
    assert err > head.scale / 4  # it did quantize


def test_the_int8_check_catches_a_decode_one_step_off() -> None:
    x = normal((500,), seed=3)
    frames = list(encode_frames([wire(x, "int8")]))
    part = pb.Frame.FromString(frames[0]).parts[0]
    part.header.zero_point += 1 if part.header.zero_point < 127 else -1
    [got] = decode([frame(part)])
    with pytest.raises(AssertionError, match="beyond scale/2"):
        assert_int8_close(x, got.array, part.header.scale)


@pytest.mark.parametrize(
    "values",
    [
        np.zeros((4, 4)),
        np.full((3, 5), 7.25),
        np.full((3, 5), -1e-3),
        np.full((1,), F32_MAX / 2),
        np.array([-F32_MAX / 2, F32_MAX / 2]),
        np.array([1e-45, 0.0, 3e-45]),  # subnormal: the scale underflows float32
        np.linspace(100.0, 101.0, 64),  # all positive, far from zero
        np.linspace(-5.0, -4.0, 64),  # all negative
        np.array([0.0, -0.0, 1.0]),
    ],
    ids=[
        "zeros",
        "constant",
        "negative-constant",
        "half-max",
        "wide-range",
        "subnormal",
        "positive",
        "negative",
        "signed-zero",
    ],
)
def test_int8_edge_tensors(values: np.ndarray) -> None:
    x = values.astype(np.float32)
    got, head = roundtrip(x, "int8")
    assert head.encoding == pb.ENCODING_INT8_AFFINE
    assert np.isfinite(head.scale) and head.scale > 0
    assert_int8_close(x, got.array, head.scale)
    assert np.isfinite(got.array).all()


def test_constant_tensors_decode_exactly_at_the_range_end() -> None:
    for value in (0.0, 7.25, -3.5):
        x = np.full((2, 3), value, dtype=np.float32)
        got, _ = roundtrip(x, "int8")
        np.testing.assert_allclose(got.array, x, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_int8_sends_a_tensor_with_nan_or_inf_as_float32(bad: float) -> None:
    x = normal((10, 10))
    x[3, 4] = bad
    got, head = roundtrip(x, "int8")
    assert head.encoding == pb.ENCODING_NONE and head.byte_length == x.nbytes
    assert got.wire_format == "float32"
    np.testing.assert_array_equal(got.array, x)  # NaN == NaN here


@pytest.mark.parametrize("values", [[F32_MAX], [-F32_MAX, 1.0], [0.0, F32_MAX * 0.999]])
def test_int8_sends_a_tensor_that_could_decode_as_inf_as_float32(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    got, head = roundtrip(x, "int8")
    assert head.encoding == pb.ENCODING_NONE
    np.testing.assert_array_equal(got.array, x)


def test_a_hand_made_scale_that_overflows_decodes_as_inf_without_a_warning() -> None:
    data = np.array([127], dtype=np.int8).tobytes()
    [got] = decode([part(encoded_header(shape=(1,), scale=3e38, zero_point=-128), data)])
    assert np.isinf(got.array).all()


def test_float16_sends_a_tensor_beyond_its_range_as_float32() -> None:
    x = normal((10,))
    x[2] = 70000.0  # float16 tops out at 65504
    got, head = roundtrip(x, "float16")
    assert head.encoding == pb.ENCODING_NONE
    np.testing.assert_array_equal(got.array, x)


@pytest.mark.parametrize(
    ("values", "encoded"),
    [
        ([65504.0, -1.0], True),  # float16's largest
        ([65519.0], True),  # rounds down to 65504
        ([-65520.0], False),  # rounds to -inf
        ([np.nan, 70000.0], False),  # NaN beside an overflow: still caught
        ([np.inf, 3.0], True),  # inf is inf in float16 too
    ],
)
def test_float16_range_edges(values: list[float], encoded: bool) -> None:
    x = np.array(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32) if encoded else x
    got, head = roundtrip(x, "float16")
    assert head.encoding == (pb.ENCODING_FLOAT16 if encoded else pb.ENCODING_NONE)
    np.testing.assert_array_equal(got.array, expected)


def test_float16_keeps_nan_and_inf_it_can_carry() -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    got, head = roundtrip(x, "float16")
    assert head.encoding == pb.ENCODING_FLOAT16
    np.testing.assert_array_equal(got.array, x)


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.linspace(0, 1, 9),  # float64
        np.arange(5, dtype=np.float16),
        np.array([True, False]),
        np.zeros((0, 3), dtype=np.float32),
        np.float32(2.5).reshape(()),
    ],
    ids=["int32", "float64", "float16", "bool", "empty", "scalar"],
)
def test_other_tensors_travel_as_they_are(fmt: str, array: np.ndarray) -> None:
    got, head = roundtrip(array, fmt)
    if array.dtype != np.float32 or array.size == 0:
        assert head.encoding == pb.ENCODING_NONE
    assert got.array.dtype == array.dtype and got.array.shape == array.shape
    if fmt == "int8" and array.dtype == np.float32 and array.size:
        assert_int8_close(array, got.array, head.scale)
    else:
        np.testing.assert_array_equal(got.array, array)


@pytest.mark.parametrize("fmt", ["float16", "int8"])
def test_large_encoded_tensor_is_chunked_and_equals_the_whole_decode(fmt: str) -> None:
    x = normal((1, 56, 56, 40), seed=5)  # 500 KB as float32
    whole, _ = roundtrip(x, fmt)
    frames = list(
        encode_frames([wire(x, fmt), wire(np.arange(3.0), fmt, "small")], chunk_bytes=4096)
    )
    per_element = {"float16": 2, "int8": 1}[fmt]
    assert len(frames) >= x.size * per_element // 4096
    assert all(len(f) <= 4096 + 200 for f in frames)
    big, small = decode(frames)
    np.testing.assert_array_equal(big.array, whole.array)
    np.testing.assert_array_equal(small.array, np.arange(3.0))
    assert big.array.shape == x.shape and big.wire_format == fmt


def test_wire_bytes_shrink_by_format() -> None:
    x = normal((1, 28, 28, 80))
    sizes = {f: sum(map(len, encode_frames([wire(x, f)]))) for f in WIRE_FORMATS}
    header = 100
    assert x.nbytes < sizes["float32"] < x.nbytes + header
    assert x.nbytes // 2 < sizes["float16"] < x.nbytes // 2 + header
    assert x.nbytes // 4 < sizes["int8"] < x.nbytes // 4 + header


def test_checksum_covers_the_encoded_bytes() -> None:
    x = normal((64,))
    frames = list(encode_frames([wire(x, "int8")], checksum=True))
    [got] = decode(frames)
    assert_int8_close(x, got.array, first_header(frames[0]).scale)
    part = pb.Frame.FromString(frames[0]).parts[0]
    part.data = bytes([part.data[0] ^ 1]) + part.data[1:]
    with pytest.raises(ChecksumMismatch):
        decode([frame(part)])


def test_unknown_wire_format_is_refused_before_any_frame() -> None:
    with pytest.raises(InvalidTensor, match="unknown wire format 'int4'"):
        encode_frames([wire(np.ones(3, np.float32), "int4")])


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=20),
        elements=st.floats(-(2.0**120), 2.0**120, width=32, allow_nan=False),
    )
)
def test_int8_bound_property(x: np.ndarray) -> None:
    got, head = roundtrip(x, "int8")
    assert head.encoding == pb.ENCODING_INT8_AFFINE
    assert_int8_close(x, got.array, head.scale)


# -- bad headers and data: refused like every malformed frame ------------------------------


def encoded_header(
    *,
    dtype: int = pb.DTYPE_FLOAT32,
    shape: tuple[int, ...] = (4,),
    encoding: int = pb.ENCODING_INT8_AFFINE,
    scale: float = 0.5,
    zero_point: int = 0,
    byte_length: int | None = None,
) -> pb.TensorHeader:
    item = {pb.ENCODING_NONE: 4, pb.ENCODING_FLOAT16: 2, pb.ENCODING_INT8_AFFINE: 1}
    if byte_length is None:
        byte_length = int(np.prod(shape)) * item.get(encoding, 4)
    return pb.TensorHeader(
        request_id="r",
        name="t",
        dtype=dtype,  # type: ignore[arg-type]
        shape=shape,
        byte_length=byte_length,
        encoding=encoding,  # type: ignore[arg-type]
        scale=scale,
        zero_point=zero_point,
    )


def part(head: pb.TensorHeader, data: bytes | None = None) -> bytes:
    if data is None:
        data = bytes(head.byte_length)
    return frame(pb.TensorPart(header=head, data=data))


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (
            part(encoded_header(dtype=pb.DTYPE_INT32, byte_length=4)),
            InvalidTensor,
            "encoding ENCODING_INT8_AFFINE on dtype int32",
        ),
        (
            part(encoded_header(dtype=pb.DTYPE_FLOAT64, encoding=pb.ENCODING_FLOAT16, scale=0)),
            InvalidTensor,
            "encoding ENCODING_FLOAT16 on dtype float64",
        ),
        (
            part(encoded_header(byte_length=16)),
            InvalidTensor,
            r"shape \[4\] of float32 encoded as int8 needs 4 bytes .* byte length 16",
        ),
        (
            part(encoded_header(encoding=pb.ENCODING_FLOAT16, scale=0, byte_length=16)),
            InvalidTensor,
            "encoded as float16 needs 8 bytes",
        ),
        (part(encoded_header(scale=0.0)), InvalidTensor, "int8 scale 0.0 must be finite"),
        (part(encoded_header(scale=-1.0)), InvalidTensor, "int8 scale -1.0 must be finite"),
        (part(encoded_header(scale=float("nan"))), InvalidTensor, "int8 scale nan"),
        (part(encoded_header(scale=float("inf"))), InvalidTensor, "int8 scale inf"),
        (part(encoded_header(zero_point=128)), InvalidTensor, "zero point 128 is outside"),
        (part(encoded_header(zero_point=-129)), InvalidTensor, "zero point -129 is outside"),
        (part(encoded_header(zero_point=1 << 30)), InvalidTensor, "is outside -128..127"),
        (part(encoded_header(encoding=7, byte_length=16)), InvalidTensor, "unknown encoding 7"),
        (
            part(encoded_header(encoding=pb.ENCODING_NONE, scale=0.5)),
            InvalidTensor,
            "scale 0.5 and zero point 0 given, but the encoding is ENCODING_NONE",
        ),
        (
            part(encoded_header(encoding=pb.ENCODING_FLOAT16, scale=0, zero_point=3)),
            InvalidTensor,
            "zero point 3 given, but the encoding is ENCODING_FLOAT16",
        ),
        (  # 64 KiB of int8 on the wire, 256 KiB once decoded: the limit is on the latter
            part(encoded_header(shape=(1 << 16,))),
            TensorTooLarge,
            "262144 bytes exceeds this node's limit of 65536",
        ),
    ],
    ids=[
        "int8-on-int32",
        "float16-on-float64",
        "int8-length",
        "float16-length",
        "zero-scale",
        "negative-scale",
        "nan-scale",
        "inf-scale",
        "zero-point-high",
        "zero-point-low",
        "zero-point-huge",
        "unknown-encoding",
        "scale-without-int8",
        "zero-point-with-float16",
        "decoded-too-large",
    ],
)
def test_bad_encoded_frames(raw: bytes, error: type[Exception], message: str) -> None:
    decoder = FrameDecoder(max_tensor_bytes=1 << 16)
    with pytest.raises(error, match=message):
        decoder.feed(raw)
        decoder.finish()
    decoder.discard()
    assert decoder.pending_bytes == 0


def test_a_good_hand_made_int8_frame_decodes() -> None:
    """The bad cases above differ from this good one only in the field they name."""
    data = np.array([-128, -1, 0, 127], dtype=np.int8).tobytes()
    [got] = decode([part(encoded_header(scale=0.5, zero_point=-1), data)])
    np.testing.assert_array_equal(got.array, [-63.5, 0.0, 0.5, 64.0])
    assert got.array.dtype == np.float32


def test_bad_encoded_frame_of_a_chunked_tensor_is_refused_at_its_header() -> None:
    head = encoded_header(shape=(10_000,), scale=0.0)
    decoder = FrameDecoder()
    with pytest.raises(InvalidTensor, match="int8 scale"):
        decoder.feed(frame(pb.TensorPart(header=head, data=bytes(100))))
    assert decoder.pending_bytes == 0


# -- both transports -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
async def test_transports_deliver_encoded_tensors_alike(net, server, fmt: str) -> None:
    x = normal((1, 20, 20, 16), seed=7)
    expected, head = roundtrip(x, fmt)
    async with net.sender(server.address) as sender:
        await sender.send([wire(x, fmt), wire(np.arange(4, dtype=np.int32), fmt, "ids")])
        got, ids = await receive(server.inbox, 2)
        totals = await sender.flush()
    assert got.wire_format == fmt and got.array.dtype == np.float32
    np.testing.assert_array_equal(got.array, expected.array)
    np.testing.assert_array_equal(ids.array, np.arange(4, dtype=np.int32))
    assert totals.bytes == head.byte_length + 16  # what travelled: encoded bytes


async def test_transports_refuse_a_bad_encoded_frame(net, server) -> None:
    async with net.sender(server.address) as sender:
        await sender.send_frames([part(encoded_header(zero_point=300))])
        with pytest.raises(InvalidTensor, match="zero point 300"):
            await sender.flush()


async def test_a_large_encoding_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same frames either way; a big float16/int8 send encodes on a worker thread."""
    import threading

    from edgenode.transport import codec

    threads: list[str] = []
    real = codec.encode_frames

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(codec, "encode_frames", spy)
    big = np.linspace(-1, 1, codec.ENCODE_IN_THREAD_BYTES // 4, dtype=np.float32)
    small = big[:16]
    cases = ((big, "int8", "thread"), (small, "int8", "loop"), (big, "float32", "loop"))
    for array, wire, where in cases:
        tensor = Tensor(RequestId("r"), "t", array, wire_format=wire)
        frames = list(await codec.encode_frames_async([tensor]))
        assert frames == list(real([tensor]))
        on_loop = threads[-1] == threading.current_thread().name
        assert on_loop == (where == "loop"), (wire, array.size, threads[-1])
