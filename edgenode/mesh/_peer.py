"""Domain types of the mesh: who a peer is, where to reach it, and what changed."""

from __future__ import annotations

import enum
import math
import re
import secrets
from dataclasses import dataclass
from typing import NewType

from edgenode.errors import UsageError
from edgenode.ids import NODE_ID_MAX_CHARS, valid_node_id

__all__ = [
    "MAX_INCARNATION",
    "NODE_ID_MAX_CHARS",
    "TEXT_MAX_BYTES",
    "Capacity",
    "Endpoint",
    "NodeId",
    "PeerEvent",
    "PeerEventKind",
    "PeerInfo",
    "incompatibility",
    "new_incarnation",
    "other_cluster",
    "valid_node_id",
]

NodeId = NewType("NodeId", str)

TEXT_MAX_BYTES = 63  # node name and cluster name, UTF-8
MAX_INCARNATION = 2**64 - 1
_SHA256_HEX_CHARS = 64
_MAX_PORT = 65535
_MAX_PROTOCOL = 65535
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MAX_HOST_CHARS = 253


def new_incarnation() -> int:
    """A random 64-bit number that tells this run of a node from its earlier runs."""
    return secrets.randbits(64)


def _check_text(what: str, value: str) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 0 < size <= TEXT_MAX_BYTES:
        raise UsageError(f"{what} must be 1-{TEXT_MAX_BYTES} bytes of UTF-8, got {value!r}")
    if any(not ch.isprintable() for ch in value):
        raise UsageError(f"{what} must be printable, got {value!r}")


def _check_host(host: str) -> None:
    if not host or len(host) > _MAX_HOST_CHARS or any(ch.isspace() for ch in host):
        raise UsageError(f"invalid host {host!r}")


def _check_port(port: int) -> None:
    if not 0 < port <= _MAX_PORT:
        raise UsageError(f"port must be 1-{_MAX_PORT}, got {port}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A host (IP address or name) and a TCP port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        _check_host(self.host)
        _check_port(self.port)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse "host:port" or "[ipv6]:port"."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise UsageError(f"expected HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise UsageError(f"write an IPv6 address in brackets, [addr]:port, got {text!r}")
        return cls(host=host, port=int(port))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """What a node offers the planner: a speed score, the bytes it can hold for its part, and
    its own link."""

    speed: float  # work units per second, from the node's self-benchmark
    memory_bytes: int  # its budget (node.memory_budget)
    link_bytes_per_s: float = 0.0  # measured or configured; 0: not known (the cluster's link)
    # Resident at start-up with the backend loaded and no part; parts get the budget less it.
    baseline_bytes: int = 0
    backend: str = ""  # what it runs parts on ("keras", "litert"; "": not said)

    def __post_init__(self) -> None:
        if isinstance(self.speed, bool) or not isinstance(self.speed, int | float):
            raise UsageError(f"speed must be a number, got {self.speed!r}")
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise UsageError(f"speed must be finite and positive, got {self.speed!r}")
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int):
            raise UsageError(f"memory_bytes must be an int, got {self.memory_bytes!r}")
        if self.memory_bytes < 0:
            raise UsageError(f"memory_bytes must be >= 0, got {self.memory_bytes}")
        base = self.baseline_bytes
        if isinstance(base, bool) or not isinstance(base, int) or base < 0:
            raise UsageError(f"baseline_bytes must be an int >= 0, got {base!r}")
        link = self.link_bytes_per_s
        if isinstance(link, bool) or not isinstance(link, int | float):
            raise UsageError(f"link_bytes_per_s must be a number, got {link!r}")
        if not (math.isfinite(link) and link >= 0):
            raise UsageError(f"link_bytes_per_s must be finite and >= 0, got {link!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """One node as the others see it: identity, gRPC endpoint, compatibility and capacity."""

    node_id: NodeId
    name: str  # human-friendly, not necessarily unique
    addresses: tuple[str, ...]  # where its gRPC server listens, preferred first
    port: int  # gRPC port
    protocol: int  # edgenode wire protocol version
    cluster: str
    # sha256 (lower-case hex) of the manifest the cluster serves: the model and its cut
    manifest_identity: str
    capacity: Capacity
    incarnation: int  # differs between runs of the same node, see new_incarnation()
    # When this run started (Unix ms); 0 when unknown. Only the control plane's Hello carries
    # it (not mDNS): of two live runs claiming one node id, the one that started later yields.
    started_ms: int = 0

    def __post_init__(self) -> None:
        if not valid_node_id(self.node_id):
            raise UsageError(
                f"node id must be 1-{NODE_ID_MAX_CHARS} characters of a-z, 0-9 and '-' "
                f"(not first or last), got {self.node_id!r}"
            )
        _check_text("node name", self.name)
        _check_text("cluster name", self.cluster)
        if not isinstance(self.addresses, tuple) or not self.addresses:
            raise UsageError(f"addresses must be a non-empty tuple, got {self.addresses!r}")
        for host in self.addresses:
            _check_host(host)
        _check_port(self.port)
        if not 0 <= self.protocol <= _MAX_PROTOCOL:
            raise UsageError(f"protocol version must be 0-{_MAX_PROTOCOL}, got {self.protocol}")
        if not _SHA256_RE.fullmatch(self.manifest_identity):
            raise UsageError(
                f"manifest_identity must be {_SHA256_HEX_CHARS} lower-case hex digits, "
                f"got {self.manifest_identity!r}"
            )
        if not 0 <= self.incarnation <= MAX_INCARNATION:
            raise UsageError(f"incarnation must fit in 64 bits, got {self.incarnation}")
        if not 0 <= self.started_ms <= MAX_INCARNATION:
            raise UsageError(f"started_ms must fit in 64 bits, got {self.started_ms}")

    @property
    def host(self) -> str:
        """The preferred address."""
        return self.addresses[0]

    @property
    def endpoint(self) -> Endpoint:
        """The preferred gRPC endpoint."""
        return Endpoint(host=self.host, port=self.port)

    def same_run(self, other: PeerInfo) -> bool:
        """True when ``other`` describes this very run of this node (same id, incarnation)."""
        return self.node_id == other.node_id and self.incarnation == other.incarnation

    def reachable_at(self, endpoint: Endpoint) -> bool:
        """True when ``endpoint`` is one of this record's addresses with its port."""
        return endpoint.port == self.port and endpoint.host in self.addresses


def incompatibility(local: PeerInfo, peer: PeerInfo) -> str | None:
    """Why `local` must not join `peer` in one cluster, or None when it can."""
    if peer.node_id == local.node_id:
        return "own node id"
    return other_cluster(local, peer)


def other_cluster(local: PeerInfo, peer: PeerInfo) -> str | None:
    """How `peer` belongs to another cluster than `local` (name, protocol or model), or None."""
    if peer.cluster != local.cluster:
        return f"other cluster {peer.cluster!r} (ours is {local.cluster!r})"
    if peer.protocol != local.protocol:
        return f"protocol version {peer.protocol} (ours is {local.protocol})"
    if peer.manifest_identity != local.manifest_identity:
        return f"model {peer.manifest_identity[:12]} (ours is {local.manifest_identity[:12]})"
    return None


class PeerEventKind(enum.Enum):
    """What happened to a peer."""

    JOINED = "joined"  # a new run of a node (a new node id, or a new incarnation)
    UPDATED = "updated"  # same run, changed record (capacity, name, addresses, port)
    LEFT = "left"  # said goodbye, stopped answering probes, or was replaced by a new run
    # A record that claims this node's own id for another run: two devices given one name,
    # a restart's stale record, or a forgery. Published to subscribers only, never a peer.
    TWIN = "twin"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A change in the set of peers; for LEFT, `peer` is the last record seen."""

    kind: PeerEventKind
    peer: PeerInfo
