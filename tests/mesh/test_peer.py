"""PeerInfo, Capacity and Endpoint validation; the compatibility rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgenode.errors import UsageError
from edgenode.mesh import Capacity, Endpoint, NodeId, incompatibility, new_incarnation

from .conftest import make_info


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"node_id": NodeId("")}, "node id"),
        ({"node_id": NodeId("Upper")}, "node id"),
        ({"node_id": NodeId("-lead")}, "node id"),
        ({"node_id": NodeId("trail-")}, "node id"),
        ({"node_id": NodeId("a.b")}, "node id"),
        ({"node_id": NodeId("a" * 49)}, "node id"),
        ({"name": ""}, "node name"),
        ({"name": "x" * 64}, "node name"),
        ({"name": "tab\there"}, "printable"),
        ({"cluster": ""}, "cluster name"),
        ({"addresses": ()}, "addresses"),
        ({"addresses": ["127.0.0.1"]}, "addresses"),
        ({"addresses": ("has space",)}, "host"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"protocol": -1}, "protocol"),
        ({"manifest_identity": "ab" * 31}, "manifest_identity"),
        ({"incarnation": -1}, "incarnation"),
        ({"incarnation": 2**64}, "incarnation"),
    ],
)
def test_peer_info_rejects(change, error):
    with pytest.raises(UsageError, match=error):
        replace(make_info("x", 1), **change)


@pytest.mark.parametrize(
    ("speed", "memory", "error"),
    [
        (0.0, 1, "speed"),
        (-1.0, 1, "speed"),
        (float("inf"), 1, "speed"),
        (float("nan"), 1, "speed"),
        (True, 1, "speed"),
        ("1", 1, "speed"),
        (1.0, -1, "memory_bytes"),
        (1.0, 1.5, "memory_bytes"),
    ],
)
def test_capacity_rejects(speed, memory, error):
    with pytest.raises(UsageError, match=error):
        Capacity(speed=speed, memory_bytes=memory)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051),
        ("pi-kitchen.local:1", "pi-kitchen.local", 1),
        ("[::1]:50051", "::1", 50051),
        (" 10.0.0.2:7 ", "10.0.0.2", 7),
    ],
)
def test_endpoint_parse_and_str(text, host, port):
    endpoint = Endpoint.parse(text)
    assert endpoint == Endpoint(host=host, port=port)
    assert Endpoint.parse(str(endpoint)) == endpoint


@pytest.mark.parametrize("text", ["", "host", "host:", ":50051", "::1:50051", "h:0", "h:x", "h:-1"])
def test_endpoint_parse_rejects(text):
    with pytest.raises(UsageError):
        Endpoint.parse(text)


def test_incompatibility():
    local = make_info("x", 0)
    peer = make_info("x", 1)
    assert incompatibility(local, peer) is None
    assert incompatibility(local, replace(peer, capacity=Capacity(speed=9, memory_bytes=0))) is None
    assert incompatibility(local, local) == "own node id"
    assert "cluster" in incompatibility(local, replace(peer, cluster="b"))
    assert "protocol" in incompatibility(local, replace(peer, protocol=3))
    assert "model" in incompatibility(local, replace(peer, manifest_identity="00" * 32))


def test_endpoint_and_host():
    info = make_info("x", 3, addresses=("10.0.0.1", "10.0.0.2"))
    assert info.host == "10.0.0.1"
    assert info.endpoint == Endpoint(host="10.0.0.1", port=info.port)


def test_incarnations_differ():
    assert len({new_incarnation() for _ in range(100)}) == 100
