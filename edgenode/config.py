"""Node configuration: frozen dataclasses read from TOML; errors name the key.

Unknown keys and wrong types are refused (a typo must not silently fall back to a
default); every section and key has a default, so an empty file is a valid
one-machine configuration. Command-line flags override the file only when given
(``Config.override``).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgenode.defaults import HOP_LATENCY_MS, MAX_TENSOR_BYTES, SPATIAL_GFLOPS
from edgenode.errors import ConfigError
from edgenode.ids import NODE_ID_MAX_CHARS, node_id_from_name, valid_node_id
from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, WireFormat
from edgenode.units import parse_size

__all__ = [
    "ClusterConfig",
    "Config",
    "LimitsConfig",
    "ModelConfig",
    "NodeConfig",
    "SecurityConfig",
    "load_config",
    "parse_address",
    "parse_config",
]

DEFAULT_PORT = 50051
DEFAULT_DEADLINE_S = 10.0


def parse_address(text: str, *, key: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'host' or ':port' -> (host, port); ConfigError naming ``key``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = text, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{key}: expected host:port, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is out of range 0..65535")
    return host, port


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """[node]: who this node is and where it listens."""

    name: str = field(default_factory=socket.gethostname)
    id: str = ""  # defaults to the name
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    metrics_listen: str = ""  # host:port of the Prometheus endpoint; "" disables it
    speed_gflops: float = 0.0  # speed score to advertise; 0 measures it at start-up
    # This node's own link in Mbit/s, for the planner; 0 measures it with a timed transfer
    # to a peer once it has one, and again now and then (edgenode.runtime.linkmeter).
    link_mbps: float = 0.0
    # The memory this node offers the cluster's plan, e.g. "400 MiB"; "" takes
    # MEMORY_BUDGET_SHARE of the memory available when the node starts.
    memory_budget: str = ""

    @property
    def memory_budget_bytes(self) -> int:
        """``memory_budget`` in bytes; 0 when not set (checked when the config is read)."""
        return parse_size(self.memory_budget) if self.memory_budget else 0

    @property
    def node_id(self) -> str:
        """The id peers know this node by: ``id``, or the name made DNS-label safe."""
        if self.id:
            return self.id
        return node_id_from_name(self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """[cluster]: which nodes belong together and how they find each other."""

    name: str = "edgenode"
    interfaces: tuple[str, ...] | Literal["all"] = "all"
    peers: tuple[str, ...] = ()
    multicast: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """[model]: what to run and with which backend."""

    source: str = "MobileNetV3Large"
    weights: str = "none"
    input_shape: tuple[int, ...] = ()
    seed: int = 0
    backend: Literal["keras", "litert"] = "keras"
    threads: int = 1
    # The network the cluster plans for, when the node cuts the model itself (a split
    # directory's manifest carries its own: `edgenode split --link-mbps`). 0: gigabit.
    link_mbps: float = 0.0
    hop_latency_ms: float = HOP_LATENCY_MS
    # How intermediate tensors travel between nodes, for a model the node cuts itself (a
    # split directory's manifest carries its own: `edgenode split --wire-format`).
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT
    # Spatial stripes for a model the node cuts itself (0: consecutive parts), and the
    # node speed their region is chosen for: `edgenode split --spatial N --gflops G`.
    spatial: int = 0
    spatial_gflops: float = SPATIAL_GFLOPS

    @property
    def custom_link(self) -> bool:
        """True when the link settings differ from the default (gigabit, 0.5 ms)."""
        return bool(self.link_mbps) or self.hop_latency_ms != HOP_LATENCY_MS


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """[limits]: what a node accepts before refusing."""

    max_tensor_bytes: int = MAX_TENSOR_BYTES
    request_deadline_s: float = DEFAULT_DEADLINE_S
    max_inflight_requests: int = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """[security]: the cluster credential, or an explicit opt-out for development."""

    key: str = ""  # member credential written by `edgenode keygen` (cluster.pem)
    insecure: bool = False  # plain connections, no membership checks


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole node configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def override(self, section: str, *, check: bool = True, **values: Any) -> Config:
        """A copy with the given keys of ``section`` replaced (``None`` values are skipped),
        checked as a whole like a file (``check=False``: the caller checks it later)."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        current = getattr(self, section)
        data = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        data.update(given)
        updated = _build(type(current), data, section)
        config = dataclasses.replace(self, **{section: updated})
        if check:
            _check(config)
        return config


def load_config(path: Path) -> Config:
    """Read and validate a TOML configuration file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, base=path.parent)


def parse_config(data: Mapping[str, Any], *, base: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative model paths resolve against ``base``."""
    config: Config = _build(Config, data, "")
    source = Path(config.model.source)
    relative = base is not None and not source.is_absolute()
    if (
        relative
        and base is not None
        and (_looks_like_path(str(source)) or (base / source).exists())
    ):
        config = config.override("model", check=False, source=str(base / source))
    key = Path(config.security.key)
    if base is not None and config.security.key and not key.is_absolute():
        config = config.override("security", check=False, key=str(base / key))
    _check(config)
    return config


def _looks_like_path(source: str) -> bool:
    return "/" in source or source.endswith((".keras", ".h5")) or source.startswith(".")


def _check(config: Config) -> None:
    parse_address(config.node.listen, key="node.listen")
    if config.node.metrics_listen:
        parse_address(config.node.metrics_listen, key="node.metrics_listen")
    for i, peer in enumerate(config.cluster.peers):
        parse_address(peer, key=f"cluster.peers[{i}]")
    if not config.node.name:
        raise ConfigError("node.name: must not be empty")
    node_id = config.node.id
    if node_id and not valid_node_id(node_id):
        raise ConfigError(
            f"node.id: {node_id!r} must be 1-{NODE_ID_MAX_CHARS} characters of a-z, 0-9 and '-'"
        )
    if config.node.speed_gflops < 0:
        raise ConfigError("node.speed_gflops: must be positive, or 0 to measure at start-up")
    if not (math.isfinite(config.node.link_mbps) and config.node.link_mbps >= 0):
        raise ConfigError("node.link_mbps: must be positive, or 0 to measure it with a peer")
    if config.node.memory_budget:
        try:
            budget = parse_size(config.node.memory_budget)
        except ValueError as exc:
            raise ConfigError(f"node.memory_budget: {exc}") from None
        if budget < 1:
            raise ConfigError("node.memory_budget: must be positive, or absent for the default")
    if not config.cluster.name:
        raise ConfigError("cluster.name: must not be empty")
    if config.security.key and config.security.insecure:
        raise ConfigError("security: both key and insecure = true are set; choose one")
    if config.model.threads < 1:
        raise ConfigError(f"model.threads: must be at least 1, got {config.model.threads}")
    if config.limits.max_tensor_bytes < 1:
        raise ConfigError("limits.max_tensor_bytes: must be positive")
    if config.limits.request_deadline_s <= 0:
        raise ConfigError("limits.request_deadline_s: must be positive")
    if config.limits.max_inflight_requests < 1:
        raise ConfigError("limits.max_inflight_requests: must be at least 1")
    if config.model.link_mbps < 0:
        raise ConfigError("model.link_mbps: must be positive, or 0 for gigabit Ethernet")
    if config.model.hop_latency_ms < 0:
        raise ConfigError("model.hop_latency_ms: must be 0 or more")
    if config.model.custom_link and Path(config.model.source).is_dir():
        raise ConfigError(
            "model.link_mbps, model.hop_latency_ms: only for a model the node cuts itself; "
            "a split directory's manifest sets the link (edgenode split --link-mbps)"
        )
    if config.model.spatial < 0 or config.model.spatial == 1:
        raise ConfigError("model.spatial: 0 (off) or at least 2 stripes")
    if not (math.isfinite(config.model.spatial_gflops) and config.model.spatial_gflops > 0):
        raise ConfigError("model.spatial_gflops: must be positive")
    if config.model.spatial and Path(config.model.source).is_dir():
        raise ConfigError(
            "model.spatial: only for a model the node cuts itself; for a split directory "
            "use `edgenode split --spatial N`"
        )
    if config.model.wire_format != DEFAULT_WIRE_FORMAT and Path(config.model.source).is_dir():
        raise ConfigError(
            "model.wire_format: only for a model the node cuts itself; a split directory's "
            "manifest sets it (edgenode split --wire-format)"
        )
    if _looks_like_path(config.model.source) and not Path(config.model.source).exists():
        raise ConfigError(f"model.source: {config.model.source} does not exist")
    if not config.cluster.multicast and not config.cluster.peers:
        raise ConfigError("cluster.peers: needed when cluster.multicast is false")


# -- a small typed reader for the dataclasses above ----------------------------------------


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        values[name] = _convert(hints[name], value, key)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, key)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _convert(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if origin is Literal:
        options = typing.get_args(hint)
        if value not in options:
            allowed = ", ".join(map(repr, options))
            raise ConfigError(f"{key}: expected one of {allowed}, got {_show(value)}")
        return value
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float, bool):
        if type(value) is not hint:
            raise ConfigError(f"{key}: expected {_type_name(hint)}, got {_show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # a bug in this module


def _type_name(hint: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[hint]


def _show(value: Any) -> str:
    kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list"}.get(
        type(value), "table" if isinstance(value, Mapping) else type(value).__name__
    )
    text = repr(value)
    return f"{kind} {text[:40]}{'...' if len(text) > 40 else ''}"
