"""Codec: round trips, packing and chunking, wire compatibility, and every bad-frame case."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.errors import (
    ChecksumMismatch,
    DuplicateTensor,
    IncompleteTensor,
    InvalidTensor,
    ProtocolError,
    TensorTooLarge,
)
from edgenode.transport.codec import (
    CHUNK_BYTES,
    FrameDecoder,
    Tensor,
    encode_frames,
    wire_dtypes,
)
from tests.transport.conftest import frame, header, tensor


def roundtrip(tensors, **kwargs) -> list[Tensor]:
    decoder = FrameDecoder()
    out = [t for f in encode_frames(tensors, **kwargs) for t in decoder.feed(f)]
    decoder.finish()
    assert decoder.pending_bytes == 0
    return out


def assert_same(sent: Tensor, got: Tensor) -> None:
    assert (got.request_id, got.name, got.plan_digest) == (
        sent.request_id,
        sent.name,
        sent.plan_digest,
    )
    assert got.array.shape == sent.array.shape
    assert got.array.dtype == sent.array.dtype.newbyteorder("=")
    assert got.array.dtype.isnative
    np.testing.assert_array_equal(got.array, sent.array)
    assert not got.array.flags.writeable


SHAPES = [(), (0,), (1,), (3, 0, 2), (7,), (2, 3, 4), (1, 1, 1, 1, 5)]


@pytest.mark.parametrize("dtype", [str(d) for d in wire_dtypes()])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roundtrip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    [got] = roundtrip([tensor("r", "x", array)])
    assert_same(tensor("r", "x", array), got)


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">u2", ">c16", ">f2"])
def test_big_endian_input_arrives_equal_and_native(dtype: str) -> None:
    array = np.arange(24, dtype=dtype).reshape(4, 6)
    [got] = roundtrip([tensor("r", "be", array)])
    np.testing.assert_array_equal(got.array, array)
    assert got.array.dtype.isnative


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[::2],
        lambda a: a.T,
        lambda a: a[:, 1:3],
        lambda a: np.asfortranarray(a),
        lambda a: a[::-1, ::-1],
    ],
    ids=["strided", "transposed", "sliced", "fortran", "reversed"],
)
def test_non_contiguous_arrays(make) -> None:
    array = make(np.arange(60, dtype=np.float32).reshape(6, 10))
    [got] = roundtrip([tensor("r", "nc", array)])
    np.testing.assert_array_equal(got.array, array)


def test_scalar_bool_float16_int8_and_zero_bytes() -> None:
    sent = [
        tensor("r", "scalar", np.array(3.25)),
        tensor("r", "bool", np.array([True, False, True])),
        tensor("r", "f16", np.array([1.5, -2.0], dtype=np.float16)),
        tensor("r", "i8", np.array([-128, 127], dtype=np.int8)),
        tensor("r", "empty", np.zeros((0, 4), dtype=np.float32)),
    ]
    got = roundtrip(sent)
    for s, g in zip(sent, got, strict=True):
        assert_same(s, g)


def test_small_tensors_of_a_hop_share_one_frame() -> None:
    sent = [tensor("r", f"t{i}", np.full(1000, i, dtype=np.float32)) for i in range(20)]
    frames = list(encode_frames(sent))
    assert len(frames) == 1
    assert len(pb.Frame.FromString(frames[0]).parts) == 20
    assert [g.name for g in roundtrip(sent)] == [s.name for s in sent]


def test_large_tensor_is_chunked_below_the_message_limit() -> None:
    array = np.arange(5 * CHUNK_BYTES // 4 + 3, dtype=np.float32)
    frames = list(encode_frames([tensor("r", "big", array)]))
    assert len(frames) == 6
    assert max(len(f) for f in frames) < CHUNK_BYTES + 1024
    [got] = roundtrip([tensor("r", "big", array)])
    np.testing.assert_array_equal(got.array, array)


def test_small_tensor_after_a_large_one_rides_in_its_last_frame() -> None:
    sent = [
        tensor("r", "big", np.zeros(CHUNK_BYTES // 4 + 10, dtype=np.float32)),
        tensor("r", "small", np.ones(4, dtype=np.float32)),
    ]
    assert len(list(encode_frames(sent))) == 2
    assert [g.name for g in roundtrip(sent)] == ["big", "small"]


def test_whole_tensor_in_one_frame_is_a_view_not_a_copy() -> None:
    [f] = encode_frames([tensor("r", "v", np.arange(10, dtype=np.int64))])
    [got] = FrameDecoder().feed(f)
    assert got.array.base is not None
    assert np.shares_memory(got.array, np.frombuffer(f, dtype=np.uint8))


def test_checksum_is_sent_and_checked() -> None:
    array = np.arange(100, dtype=np.int32)
    [f] = encode_frames([tensor("r", "c", array)], checksum=True)
    part = pb.Frame.FromString(f).parts[0]
    assert part.header.crc32 == zlib.crc32(array.tobytes())
    [got] = roundtrip([tensor("r", "c", array)], checksum=True)
    np.testing.assert_array_equal(got.array, array)


def test_encoder_matches_generated_serializer() -> None:
    array = np.arange(CHUNK_BYTES // 4 + 5, dtype=np.float32)
    frames = list(encode_frames([tensor("r", "a", array), tensor("r", "b", np.zeros(3))]))
    for f in frames:
        assert pb.Frame.FromString(f).SerializeToString() == f


def test_decoder_reads_frames_built_by_generated_code_with_unknown_fields() -> None:
    data = np.arange(6, dtype=np.float32).tobytes()
    built = frame(pb.TensorPart(header=header("a", shape=(2, 3)), data=data[:8]))
    built += b"\x10\x05"  # unknown Frame field 2 (varint): skipped, as protobuf does
    rest = pb.TensorPart(offset=8, data=data[8:]).SerializeToString() + b"\x25\x00\x00\x00\x00"
    built2 = b"\x0a" + bytes([len(rest)]) + rest  # a part with unknown field 4 (fixed32)
    decoder = FrameDecoder()
    assert decoder.feed(built) == []
    [got] = decoder.feed(built2)
    np.testing.assert_array_equal(got.array, np.arange(6, dtype=np.float32).reshape(2, 3))


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from(wire_dtypes()),
            shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
        ),
        min_size=1,
        max_size=5,
    ),
    chunk=st.integers(min_value=1, max_value=300),
)
def test_roundtrip_property(arrays: list[np.ndarray], chunk: int) -> None:
    sent = [tensor("r", f"t{i}", a) for i, a in enumerate(arrays)]
    got = roundtrip(sent, chunk_bytes=chunk, checksum=True)
    for s, g in zip(sent, got, strict=True):
        assert g.array.shape == s.array.shape
        assert g.array.tobytes() == s.array.astype(s.array.dtype.newbyteorder("<")).tobytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    decoder = FrameDecoder(max_tensor_bytes=1 << 20)
    try:
        decoder.feed(data)
        decoder.finish()
    except ProtocolError:
        pass
    decoder.discard()
    assert decoder.pending_bytes == 0


def test_unsupported_dtype_is_refused_before_any_frame() -> None:
    with pytest.raises(InvalidTensor, match="dtype object cannot travel"):
        encode_frames([tensor("r", "ok", np.zeros(3)), tensor("r", "o", np.array([None]))])


# -- every bad-input case, at the codec level ----------------------------------------------

F32 = np.arange(2, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    ("frames", "error", "message"),
    [
        (
            [frame(pb.TensorPart(header=header(dtype=99), data=F32))],
            InvalidTensor,
            "unknown dtype 99",
        ),
        (
            [frame(pb.TensorPart(header=header(shape=(2, 3), byte_length=20)))],
            InvalidTensor,
            "needs 24 bytes but the header declares byte length 20",
        ),
        (
            [frame(pb.TensorPart(header=header(shape=(-1, 2), byte_length=8)))],
            InvalidTensor,
            "negative dimension",
        ),
        (
            [frame(pb.TensorPart(header=header(shape=(2**40, 2**40, 2**40), byte_length=8)))],
            InvalidTensor,
            "overflows",
        ),
        (
            [frame(pb.TensorPart(header=header(shape=(1,) * 65, byte_length=4)))],
            InvalidTensor,
            "65 dimensions",
        ),
        (
            [frame(pb.TensorPart(header=header(shape=(1 << 20,))))],
            TensorTooLarge,
            "exceeds this node's limit of 65536 bytes",
        ),
        (
            [frame(pb.TensorPart(header=header(), data=F32 + b"xx"))],
            ProtocolError,
            "goes beyond the declared length of 8 bytes",
        ),
        (
            [
                frame(pb.TensorPart(header=header(), data=F32[:4])),
                frame(pb.TensorPart(offset=4, data=F32)),
            ],
            ProtocolError,
            "goes beyond the declared length",
        ),
        (
            [
                frame(pb.TensorPart(header=header(), data=F32[:4])),
                frame(pb.TensorPart(offset=2, data=F32[:2])),
            ],
            ProtocolError,
            "chunk at offset 2, expected 4",
        ),
        ([frame(pb.TensorPart(offset=0, data=F32))], ProtocolError, "without a tensor header"),
        (
            [
                frame(pb.TensorPart(header=header(), data=F32)),
                frame(pb.TensorPart(header=header(), data=F32)),
            ],
            DuplicateTensor,
            "tensor 't' of request 'r' arrived twice",
        ),
        (
            [
                frame(
                    pb.TensorPart(header=header("a"), data=F32[:4]),
                    pb.TensorPart(header=header("b"), data=F32),
                )
            ],
            IncompleteTensor,
            "header of tensor 'b' .* arrived after 4 of 8 bytes",
        ),
        ([frame(pb.TensorPart(header=header(crc32=1234), data=F32))], ChecksumMismatch, "crc32"),
        ([b"\xff\xff\xff"], ProtocolError, "garbage bytes"),
        ([b"\x0a\x05\x0a"], ProtocolError, "garbage bytes"),
        ([b"\x0f\x00"], ProtocolError, "garbage bytes"),
        ([b"\x0a\x02\x0a\x7f"], ProtocolError, "garbage bytes"),
        ([b"\x0a\x03\x0a\x01\xff"], ProtocolError, "not a valid TensorHeader"),
    ],
    ids=[
        "unknown-dtype",
        "shape-vs-bytes",
        "negative-dim",
        "absurd-dims",
        "too-many-dims",
        "too-large",
        "inline-beyond-length",
        "chunk-beyond-length",
        "chunk-gap",
        "chunk-without-header",
        "duplicate",
        "fewer-bytes-then-header",
        "checksum",
        "garbage",
        "truncated-part",
        "bad-wire-type",
        "header-overruns",
        "garbage-header",
    ],
)
def test_bad_frames(frames: list[bytes], error: type[Exception], message: str) -> None:
    decoder = FrameDecoder(max_tensor_bytes=1 << 16)
    with pytest.raises(error, match=message):
        for f in frames:
            decoder.feed(f)
        decoder.finish()
    decoder.discard()
    assert decoder.pending_bytes == 0


def test_truncated_stream_is_incomplete_and_frees_the_buffer() -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(pb.TensorPart(header=header(shape=(1000,)), data=F32)))
    assert decoder.pending_bytes == 4000
    with pytest.raises(IncompleteTensor, match="stream ended after 8 of 4000 bytes"):
        decoder.finish()
    assert decoder.pending_bytes == 0


def test_duplicates_are_per_request_and_plan() -> None:
    decoder = FrameDecoder()
    for rid in ("r1", "r2"):
        assert len(decoder.feed(frame(pb.TensorPart(header=header(rid=rid), data=F32)))) == 1
    retry = header(rid="r1")
    retry.plan_digest = "new-plan"  # the origin re-sends the request under a new plan
    assert len(decoder.feed(frame(pb.TensorPart(header=retry, data=F32)))) == 1
