"""PeerInfo <-> DNS-SD TXT record (RFC 6763 section 6), strict on what arrives from the network.

The gRPC port travels in the SRV record and the addresses in A/AAAA records, so the TXT record
carries only the rest. Keys are short to keep the record small:

    id   node id              v    protocol version     s    speed score (float)
    n    node name            m    model sha256 (hex)   mem  memory bytes (int)
    c    cluster name         inc  incarnation (hex, 64 bits)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from edgenode.errors import UsageError
from edgenode.mesh._errors import InvalidPeerRecord
from edgenode.mesh._peer import Capacity, NodeId, PeerInfo

__all__ = [
    "TXT_ITEM_MAX_BYTES",
    "TXT_RECORD_MAX_BYTES",
    "decode_txt",
    "encode_txt",
    "parse_txt",
    "peer_from_txt",
    "txt_protocol",
]

TXT_ITEM_MAX_BYTES = 255  # one length byte per key=value string
TXT_RECORD_MAX_BYTES = 1300  # keeps the whole announcement in one unfragmented packet

KEY_NODE_ID = "id"
KEY_NAME = "n"
KEY_CLUSTER = "c"
KEY_PROTOCOL = "v"
KEY_MODEL = "m"
KEY_SPEED = "s"
KEY_MEMORY = "mem"
KEY_INCARNATION = "inc"
KEY_LINK = "l"  # optional: only a node that knows its link announces it

_UINT_RE = re.compile(r"[0-9]{1,20}")
_HEX64_RE = re.compile(r"[0-9a-f]{1,16}")
_FLOAT_RE = re.compile(r"[0-9]{1,40}(?:\.[0-9]{1,40})?(?:e[+-]?[0-9]{1,3})?")
_KEY_BYTES = frozenset(range(0x20, 0x7F)) - {ord("=")}


def encode_txt(info: PeerInfo) -> bytes:
    """The TXT record of `info`: length-prefixed key=value strings, fixed key order."""
    fields = {
        KEY_NODE_ID: info.node_id,
        KEY_NAME: info.name,
        KEY_CLUSTER: info.cluster,
        KEY_PROTOCOL: str(info.protocol),
        KEY_MODEL: info.manifest_identity,
        KEY_SPEED: repr(float(info.capacity.speed)),
        KEY_MEMORY: str(info.capacity.memory_bytes),
        KEY_INCARNATION: format(info.incarnation, "x"),
    }
    if info.capacity.link_bytes_per_s:
        fields[KEY_LINK] = repr(float(info.capacity.link_bytes_per_s))
    out = bytearray()
    for key, value in fields.items():
        item = f"{key}={value}".encode()
        if len(item) > TXT_ITEM_MAX_BYTES:
            raise UsageError(f"TXT entry {key!r} is {len(item)} bytes, over {TXT_ITEM_MAX_BYTES}")
        out.append(len(item))
        out += item
    if len(out) > TXT_RECORD_MAX_BYTES:
        raise UsageError(f"TXT record is {len(out)} bytes, over {TXT_RECORD_MAX_BYTES}")
    return bytes(out)


def parse_txt(text: bytes) -> dict[str, str]:
    """Key -> value of a TXT record; keys lower-cased, first occurrence wins, bare keys dropped."""
    if len(text) > TXT_RECORD_MAX_BYTES:
        raise InvalidPeerRecord(f"TXT record is {len(text)} bytes, over {TXT_RECORD_MAX_BYTES}")
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        length = text[pos]
        item = text[pos + 1 : pos + 1 + length]
        if len(item) != length:
            raise InvalidPeerRecord(f"TXT string at byte {pos} runs past the end of the record")
        pos += 1 + length
        raw_key, sep, raw_value = item.partition(b"=")
        if not raw_key or not set(raw_key) <= _KEY_BYTES:
            if item:  # a lone zero byte is the RFC's empty record
                raise InvalidPeerRecord(f"invalid TXT key {raw_key!r}")
            continue
        key = raw_key.decode("ascii").lower()
        if not sep or key in fields:
            continue
        try:
            fields[key] = raw_value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidPeerRecord(f"TXT value of {key!r} is not UTF-8") from e
    return fields


def _field(fields: Mapping[str, str], key: str, pattern: re.Pattern[str] | None = None) -> str:
    value = fields.get(key)
    if value is None:
        raise InvalidPeerRecord(f"TXT key {key!r} is missing")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidPeerRecord(f"TXT key {key!r} has an invalid value {value[:80]!r}")
    return value


def txt_protocol(fields: Mapping[str, str]) -> int | None:
    """The protocol version a TXT record declares, or None when it declares none readable."""
    value = fields.get(KEY_PROTOCOL)
    if value is None or not _UINT_RE.fullmatch(value):
        return None
    return int(value)


def peer_from_txt(fields: Mapping[str, str], *, addresses: tuple[str, ...], port: int) -> PeerInfo:
    """Build a PeerInfo from parsed TXT fields and the SRV port and A/AAAA addresses."""
    try:
        return PeerInfo(
            node_id=NodeId(_field(fields, KEY_NODE_ID)),
            name=_field(fields, KEY_NAME),
            addresses=addresses,
            port=port,
            protocol=int(_field(fields, KEY_PROTOCOL, _UINT_RE)),
            cluster=_field(fields, KEY_CLUSTER),
            manifest_identity=_field(fields, KEY_MODEL),
            capacity=Capacity(
                speed=float(_field(fields, KEY_SPEED, _FLOAT_RE)),
                memory_bytes=int(_field(fields, KEY_MEMORY, _UINT_RE)),
                link_bytes_per_s=(
                    float(_field(fields, KEY_LINK, _FLOAT_RE)) if KEY_LINK in fields else 0.0
                ),
            ),
            incarnation=int(_field(fields, KEY_INCARNATION, _HEX64_RE), 16),
        )
    except UsageError as e:
        raise InvalidPeerRecord(str(e)) from e


def decode_txt(text: bytes, *, addresses: tuple[str, ...], port: int) -> PeerInfo:
    """parse_txt then peer_from_txt; raises InvalidPeerRecord on anything malformed."""
    return peer_from_txt(parse_txt(text), addresses=addresses, port=port)
