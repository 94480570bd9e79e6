"""What the layers above see of a transport: Protocols, configuration and gauges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from edgenode.errors import ConfigError
from edgenode.transport._inbox import TensorInbox
from edgenode.transport._options import CONNECT_TIMEOUT_S
from edgenode.transport._security import Security
from edgenode.transport.codec import CHUNK_BYTES, DEFAULT_MAX_TENSOR_BYTES, Tensor

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "PeerSender",
    "StreamTotals",
    "Transport",
    "TransportConfig",
    "TransportStats",
]

DEFAULT_MAX_BUFFERED_BYTES = 256 << 20  # whole tensors waiting in a node's inbox


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportConfig:
    """Limits and knobs of one node's transport."""

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES  # larger incoming tensors are refused
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES  # inbox bound; full -> senders wait
    chunk_bytes: int = CHUNK_BYTES  # data bytes per outgoing frame
    checksum: bool = False  # send a CRC-32 with every tensor (receivers always check one)
    connect_timeout_s: float = CONNECT_TIMEOUT_S  # a peer not connected by then is unavailable
    security: Security = field(default_factory=Security.insecure)  # TLS and call tokens

    def __post_init__(self) -> None:
        for name in ("max_tensor_bytes", "max_buffered_bytes", "chunk_bytes", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"transport {name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class StreamTotals:
    """What a receiver accepted on one stream."""

    tensors: int
    bytes: int


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Gauges of a node's receiving side; all zero when idle and drained."""

    streams: int  # incoming streams open now
    pending_tensors: int  # tensors partly received
    pending_bytes: int  # bytes allocated for them
    queued_tensors: int  # whole tensors waiting in the inbox
    queued_bytes: int  # their bytes
    held_tensors: int = 0  # whole tensors held back until the inbox has room (backpressure)


class PeerSender(Protocol):
    """A long-lived stream to one peer, reopened as needed (e.g. after the peer restarts)."""

    @property
    def address(self) -> str:
        """Where the peer listens."""
        ...

    async def send(self, tensors: Sequence[Tensor]) -> None:
        """Send one hop's tensors (small ones share one message); waits while the peer is full.

        Raises PeerUnavailable when the peer cannot be reached, or the ProtocolError subclass
        with which the peer rejected the stream.
        """
        ...

    async def flush(self) -> StreamTotals:
        """End the current stream and wait until the peer accepted everything sent on it."""
        ...

    def abort(self) -> None:
        """Cancel the current stream now; the peer discards a tensor it had partly received."""
        ...

    async def aclose(self) -> None:
        """Flush (logging, not raising, a failure) and release the connection."""
        ...


class Transport(Protocol):
    """A node's endpoint: tensors sent to it arrive in ``inbox``; ``peer`` sends to others."""

    @property
    def address(self) -> str:
        """Where peers reach this node (valid once entered)."""
        ...

    @property
    def inbox(self) -> TensorInbox:
        """Tensors received from every peer, in arrival order."""
        ...

    def peer(self, address: str) -> PeerSender:
        """The sender to the node at address; one per address, closed with this transport."""
        ...

    def stats(self) -> TransportStats:
        """Receiving-side gauges: open streams, partial and queued tensors and bytes."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
