"""node.toml: defaults, the documented example, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.config import Config, load_config, parse_address, parse_config
from edgenode.errors import ConfigError

ROOT = Path(__file__).parents[1]


def test_the_documented_example_is_valid() -> None:
    config = load_config(ROOT / "node.toml")
    assert config.node.listen == "0.0.0.0:50051"
    assert config.model.backend in ("keras", "litert")
    assert config.cluster.interfaces == "all"


def test_an_empty_file_is_a_one_machine_default() -> None:
    config = parse_config({})
    assert config == Config()
    assert config.node.node_id == config.node.name
    assert config.limits.max_tensor_bytes == 256 * 2**20


def test_values_are_read_and_converted(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"")
    path = tmp_path / "node.toml"
    path.write_text(
        """
        [node]
        name = "a"
        id = "node-a"
        listen = "127.0.0.1:0"
        [cluster]
        interfaces = ["127.0.0.1"]
        peers = ["127.0.0.1:5000", "[::1]:6000"]
        [model]
        source = "m.keras"
        backend = "litert"
        input_shape = [96, 96, 3]
        [limits]
        request_deadline_s = 3
        """
    )
    config = load_config(path)
    assert config.node.node_id == "node-a"
    assert config.cluster.interfaces == ("127.0.0.1",)
    assert config.cluster.peers == ("127.0.0.1:5000", "[::1]:6000")
    assert config.model.source == str(tmp_path / "m.keras")  # relative to the file
    assert config.model.input_shape == (96, 96, 3)
    assert config.limits.request_deadline_s == 3.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": {}}, "nodes: unknown key"),
        ({"node": {"nmae": "x"}}, "node.nmae: unknown key"),
        ({"node": {"name": 5}}, "node.name: expected a string, got integer 5"),
        ({"node": {"name": ""}}, "node.name: must not be empty"),
        ({"node": {"id": "Pi_4"}}, "node.id: 'Pi_4' must be"),
        ({"node": "x"}, "node: expected a table, got string 'x'"),
        ({"node": {"listen": "host:http"}}, "node.listen: expected host:port"),
        ({"node": {"listen": "host:70000"}}, "node.listen: port 70000 is out of range"),
        ({"cluster": {"peers": "a:1"}}, "cluster.peers: expected a list"),
        ({"cluster": {"peers": ["a:b"]}}, r"cluster.peers\[0\]: expected host:port"),
        ({"cluster": {"interfaces": "some"}}, "cluster.interfaces: expected a list"),
        ({"cluster": {"multicast": False}}, "cluster.peers: needed when"),
        ({"model": {"backend": "onnx"}}, "model.backend: expected one of 'keras', 'litert'"),
        ({"model": {"threads": 0}}, "model.threads: must be at least 1"),
        ({"model": {"link_mbps": -5}}, "model.link_mbps: must be positive, or 0 for gigabit"),
        ({"model": {"link_mbps": "wifi"}}, "model.link_mbps: expected a number"),
        ({"model": {"hop_latency_ms": -1.0}}, "model.hop_latency_ms: must be 0 or more"),
        ({"model": {"source": ".", "link_mbps": 20}}, "only for a model the node cuts itself"),
        ({"model": {"threads": 1.5}}, "model.threads: expected an integer, got number 1.5"),
        ({"model": {"source": "/no/such/model.keras"}}, "model.source: /no/such"),
        ({"model": {"input_shape": [1, "a"]}}, r"model.input_shape\[1\]: expected an integer"),
        ({"limits": {"request_deadline_s": "soon"}}, "limits.request_deadline_s: expected a nu"),
        ({"limits": {"max_tensor_bytes": 0}}, "limits.max_tensor_bytes: must be positive"),
        ({"limits": {"max_inflight_requests": True}}, "expected an integer, got boolean"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("name", "node_id"),
    [("pi-kitchen", "pi-kitchen"), ("Pi_Kitchen.local", "pi-kitchen-local"), ("__", "node")],
)
def test_node_id_is_derived_from_the_name(name: str, node_id: str) -> None:
    assert parse_config({"node": {"name": name}}).node.node_id == node_id


def test_overrides_apply_only_when_given() -> None:
    config = parse_config({"node": {"name": "a", "listen": "127.0.0.1:1"}})
    same = config.override("node", name=None, listen=None)
    assert same is config
    changed = config.override("node", listen="127.0.0.1:2")
    assert changed.node.listen == "127.0.0.1:2" and changed.node.name == "a"
    with pytest.raises(ConfigError, match=r"cluster\.peers: expected a list"):
        config.override("cluster", peers="x")


def test_an_override_is_checked_as_a_whole_like_a_file() -> None:
    config = parse_config({"node": {"name": "a"}})
    with pytest.raises(ConfigError, match=r"cluster\.peers: needed when cluster\.multicast"):
        config.override("cluster", multicast=False)  # `run --no-multicast` without --peer
    static = config.override("cluster", multicast=False, peers=("127.0.0.1:1",))
    assert static.cluster.peers == ("127.0.0.1:1",)
    with pytest.raises(ConfigError, match="security: both key and insecure"):
        config.override("security", key="k.pem", insecure=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:80", ("::1", 80)),
        ("host", ("host", 50051)),
        (":9", ("0.0.0.0", 9)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, key="k") == expected
