"""TXT record encoding: round trips, size limits, and malformed records from the network."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgenode.errors import UsageError
from edgenode.mesh import (
    TXT_ITEM_MAX_BYTES,
    TXT_RECORD_MAX_BYTES,
    Capacity,
    InvalidPeerRecord,
    NodeId,
    PeerInfo,
    decode_txt,
    encode_txt,
)
from edgenode.mesh._txt import parse_txt, txt_protocol

from .conftest import make_info

WHERE = {"addresses": ("10.0.0.7",), "port": 50051}


def txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(item)]) + item for item in items)


def good_items(**override: bytes) -> list[bytes]:
    fields = {
        "id": b"pi-1",
        "n": b"pi one",
        "c": b"home",
        "v": b"1",
        "m": b"ab" * 32,
        "s": b"2.5",
        "mem": b"1024",
        "inc": b"ff",
    }
    fields.update(override)
    return [k.encode() + b"=" + v for k, v in fields.items() if v != b"<drop>"]


def test_encode_uses_short_keys_in_a_fixed_order():
    info = make_info("x", 1, incarnation=255)
    text = encode_txt(info)
    assert list(parse_txt(text)) == ["id", "n", "c", "v", "m", "s", "mem", "inc"]
    assert parse_txt(text)["inc"] == "ff"
    assert len(text) < 300


def test_decode_reads_the_hand_written_record():
    info = decode_txt(txt(*good_items()), **WHERE)
    assert info == PeerInfo(
        node_id=NodeId("pi-1"),
        name="pi one",
        addresses=("10.0.0.7",),
        port=50051,
        protocol=1,
        cluster="home",
        manifest_identity="ab" * 32,
        capacity=Capacity(speed=2.5, memory_bytes=1024),
        incarnation=255,
    )


def test_unknown_keys_case_and_duplicates():
    items = [b"ID=pi-1", b"id=ignored-second", b"future=1", b"flag", *good_items(id=b"<drop>")]
    info = decode_txt(txt(*items), **WHERE)
    assert info.node_id == "pi-1"


names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=15,
)


@given(
    name=names,
    cluster=names,
    node_id=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?", fullmatch=True),
    speed=st.floats(min_value=1e-300, max_value=1e300, allow_nan=False),
    memory=st.integers(min_value=0, max_value=2**63),
    incarnation=st.integers(min_value=0, max_value=2**64 - 1),
    protocol=st.integers(min_value=0, max_value=65535),
)
def test_round_trip(name, cluster, node_id, speed, memory, incarnation, protocol):
    info = PeerInfo(
        node_id=NodeId(node_id),
        name=name,
        addresses=("10.0.0.7",),
        port=50051,
        protocol=protocol,
        cluster=cluster,
        manifest_identity="0f" * 32,
        capacity=Capacity(speed=speed, memory_bytes=memory),
        incarnation=incarnation,
    )
    text = encode_txt(info)
    assert len(text) <= TXT_RECORD_MAX_BYTES
    assert decode_txt(text, addresses=info.addresses, port=info.port) == info


def test_longest_fields_fit():
    info = make_info("x", 1, name="é" * 31, cluster="c" * 63)
    assert len(encode_txt(info)) < TXT_RECORD_MAX_BYTES
    assert all(len(item) <= TXT_ITEM_MAX_BYTES for item in parse_txt(encode_txt(info)).values())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (txt(*good_items(id=b"<drop>")), "'id' is missing"),
        (txt(*good_items(v=b"one")), "'v' has an invalid value"),
        (txt(*good_items(s=b"nan")), "'s' has an invalid value"),
        (txt(*good_items(s=b"1e999")), "speed must be finite"),
        (txt(*good_items(s=b"0")), "speed must be finite and positive"),
        (txt(*good_items(s=b"1_0")), "'s' has an invalid value"),
        (txt(*good_items(mem=b"-1")), "'mem' has an invalid value"),
        (txt(*good_items(mem=b"\xd9\xa1")), "'mem' has an invalid value"),  # Arabic-Indic 1
        (txt(*good_items(inc=b"1" * 17)), "'inc' has an invalid value"),
        (txt(*good_items(m=b"AB" * 32)), "manifest_identity"),
        (txt(*good_items(id=b"Pi_1")), "node id"),
        (txt(*good_items(n=b"a\nb")), "printable"),
        (txt(*good_items(c=b"x" * 64)), "cluster name"),
        (txt(*good_items(n=b"\xff\xfe")), "not UTF-8"),
        (txt(*good_items()) + b"\x09id=", "runs past the end"),
        (txt(b"=novalue", *good_items()), "invalid TXT key"),
        (txt(b"k\x01=1", *good_items()), "invalid TXT key"),
        (b"\x01" * (TXT_RECORD_MAX_BYTES + 1), "over 1300"),
        (b"", "'id' is missing"),
        (b"\x00", "'id' is missing"),
    ],
)
def test_malformed_records_raise_invalid_peer_record(text, error):
    with pytest.raises(InvalidPeerRecord, match=error):
        decode_txt(text, **WHERE)


def test_bad_address_or_port_from_the_network():
    with pytest.raises(InvalidPeerRecord, match="port"):
        decode_txt(txt(*good_items()), addresses=("10.0.0.7",), port=0)
    with pytest.raises(InvalidPeerRecord, match="addresses"):
        decode_txt(txt(*good_items()), addresses=(), port=1)


def test_protocol_is_readable_without_the_rest():
    assert txt_protocol(parse_txt(txt(b"v=7", b"whatever=else"))) == 7
    assert txt_protocol(parse_txt(txt(b"v=x"))) is None
    assert txt_protocol(parse_txt(b"")) is None


def test_encode_refuses_oversized_entries(monkeypatch):
    import edgenode.mesh._txt as txt_module

    info = make_info("x", 1)
    monkeypatch.setattr(txt_module, "TXT_ITEM_MAX_BYTES", 10)
    with pytest.raises(UsageError, match="TXT entry 'm' is 66 bytes"):
        encode_txt(info)
    monkeypatch.setattr(txt_module, "TXT_ITEM_MAX_BYTES", 255)
    monkeypatch.setattr(txt_module, "TXT_RECORD_MAX_BYTES", 50)
    with pytest.raises(UsageError, match="TXT record is"):
        encode_txt(info)


def test_speed_round_trips_exactly():
    for speed in (0.1, 1 / 3, math.pi * 1e-7, 123456789.123, 5e-324):
        info = make_info("x", 1, capacity=Capacity(speed=speed, memory_bytes=0))
        assert decode_txt(encode_txt(info), addresses=info.addresses, port=info.port) == info


def test_a_known_link_is_announced_and_an_unknown_one_is_not():
    known = make_info("x", 1, capacity=Capacity(speed=1.0, memory_bytes=0, link_bytes_per_s=4e6))
    text = encode_txt(known)
    assert b"l=4000000.0" in text
    assert decode_txt(text, addresses=known.addresses, port=known.port) == known
    unknown = make_info("x", 1, capacity=Capacity(speed=1.0, memory_bytes=0))
    assert b"l=" not in encode_txt(unknown)
    for bad in (b"l=-1", b"l=fast", b"l=1e999"):
        with pytest.raises(InvalidPeerRecord):
            decode_txt(txt(*good_items(), bad), **WHERE)
