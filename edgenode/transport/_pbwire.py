"""The protobuf wire format of Frame and TensorPart, read and written by hand: tags, varints,
lengths (a few bytes around each chunk, without copying the chunk). TensorHeader goes
through the generated class; tests check both directions against the generated classes.
"""

from __future__ import annotations

from edgenode.errors import ProtocolError

__all__ = ["I32", "I64", "LEN", "TAG_FRAME_PARTS", "TAG_PART_DATA", "TAG_PART_HEADER",
           "TAG_PART_OFFSET", "VARINT", "add_part", "read_tag", "read_varint", "skip",
           "span_end", "varint"]  # fmt: skip

# Wire types and the tags of the hand-coded messages (field number << 3 | wire type).
VARINT, I64, LEN, I32 = 0, 1, 2, 5
TAG_FRAME_PARTS = b"\x0a"  # Frame.parts = 1, LEN
TAG_PART_HEADER = b"\x0a"  # TensorPart.header = 1, LEN
TAG_PART_OFFSET = b"\x10"  # TensorPart.offset = 2, VARINT
TAG_PART_DATA = b"\x1a"  # TensorPart.data = 3, LEN


def add_part(
    out: list[bytes | memoryview], header: bytes | None, offset: int, data: memoryview
) -> None:
    body: list[bytes | memoryview] = []
    if header is not None:
        body += [TAG_PART_HEADER, varint(len(header)), header]
    if offset:
        body += [TAG_PART_OFFSET, varint(offset)]
    if len(data):
        body += [TAG_PART_DATA, varint(len(data)), data]
    out += [TAG_FRAME_PARTS, varint(sum(len(b) for b in body)), *body]


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(view: memoryview, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ProtocolError(f"garbage bytes in {where}: varint longer than 10 bytes")
    raise ProtocolError(f"garbage bytes in {where}: truncated varint")


def read_tag(view: memoryview, pos: int, end: int, where: str) -> tuple[int, int, int]:
    key, pos = read_varint(view, pos, end, where)
    field, wire = key >> 3, key & 7
    if field == 0:
        raise ProtocolError(f"garbage bytes in {where}: field number 0")
    return field, wire, pos


def span_end(pos: int, length: int, end: int, what: str) -> int:
    if length > end - pos:
        raise ProtocolError(
            f"garbage bytes: {what} declares {length} bytes, only {end - pos} remain"
        )
    return pos + length


def skip(view: memoryview, field: int, wire: int, pos: int, end: int, where: str) -> int:
    """Step over an unknown field (kept for forward compatibility)."""
    if wire == VARINT:
        return read_varint(view, pos, end, where)[1]
    if wire == I64:
        return span_end(pos, 8, end, f"field {field} of {where}")
    if wire == I32:
        return span_end(pos, 4, end, f"field {field} of {where}")
    if wire == LEN:
        length, pos = read_varint(view, pos, end, where)
        return span_end(pos, length, end, f"field {field} of {where}")
    raise ProtocolError(f"garbage bytes in {where}: field {field} has wire type {wire}")
