"""gRPC channel and server options and timeouts: defined once, used by both ends."""

from __future__ import annotations

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb

__all__ = [
    "CHANNEL_OPTIONS",
    "CONNECT_TIMEOUT_S",
    "FLUSH_TIMEOUT_S",
    "PROTOCOL_VERSION",
    "SERVER_OPTIONS",
    "SERVICE_NAME",
    "STOP_GRACE_S",
]

CONNECT_TIMEOUT_S = 3.0  # a peer not connected by then is unavailable
FLUSH_TIMEOUT_S = 30.0  # waiting for a peer to accept what was sent, at close
# Open calls get this long when a server stops. Short: peers hold streams open indefinitely,
# so a long grace would always run out, and the closed inbox refuses new tensors anyway.
STOP_GRACE_S = 0.1

MAX_MESSAGE_BYTES = 4 << 20  # gRPC's default, stated: frames stay far below it
KEEPALIVE_TIME_MS = 10_000  # ping an idle connection this often ...
KEEPALIVE_TIMEOUT_MS = 5_000  # ... and drop it when the answer takes longer
RECONNECT_BACKOFF_MIN_MS = 100  # a restarted peer is found again quickly
RECONNECT_BACKOFF_MAX_MS = 1_000

_COMMON: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

# The edgenode wire protocol version: in every node's mDNS record and Hello; nodes of
# another version ignore each other.
PROTOCOL_VERSION = 1
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["EdgeNode"].full_name  # of every RPC

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *_COMMON,
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
    ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
)

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *_COMMON,
    # Accept the clients' keepalive pings (default minimum is 5 minutes -> GOAWAY).
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    # Two nodes must never share a port silently.
    ("grpc.so_reuseport", 0),
)
