"""Moving tensors between nodes: codec, gRPC transport, in-memory transport.

Layers above depend on the ``Transport`` and ``PeerSender`` Protocols; only the composition
root names ``GrpcTransport`` (or ``MemoryTransport`` in tests). A node calls ``tune_malloc()``
once at start-up and runs its loop with ``run(main(), use_uvloop=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgenode.transport._api import (
    DEFAULT_MAX_BUFFERED_BYTES,
    PeerSender,
    StreamTotals,
    Transport,
    TransportConfig,
    TransportStats,
)
from edgenode.transport._client import CONTROL_TIMEOUT_S, MANIFEST_PART, ControlClient, view_of
from edgenode.transport._failover import Failover, View
from edgenode.transport._grpc import SERVICE_NAME, GrpcPeer, GrpcTransport, check_listen_address
from edgenode.transport._inbox import TensorInbox
from edgenode.transport._memory import MemoryNetwork, MemoryPeer, MemoryTransport
from edgenode.transport._options import PROTOCOL_VERSION
from edgenode.transport._reports import NodeReport, PlanReport, StageReport
from edgenode.transport._runtime import loop_factory, run, tune_malloc
from edgenode.transport._security import Security
from edgenode.transport._services import InferenceService
from edgenode.transport._session import infer_status
from edgenode.transport.codec import (
    CHUNK_BYTES,
    DEFAULT_MAX_TENSOR_BYTES,
    FrameDecoder,
    RequestId,
    Tensor,
    encode_frames,
)

__all__ = [
    "CHUNK_BYTES",
    "CONTROL_TIMEOUT_S",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_TENSOR_BYTES",
    "MANIFEST_PART",
    "PROTOCOL_VERSION",
    "SERVICE_NAME",
    "ControlClient",
    "Failover",
    "FrameDecoder",
    "GrpcPeer",
    "GrpcTransport",
    "InferenceService",
    "MemoryNetwork",
    "MemoryPeer",
    "MemoryTransport",
    "NodeReport",
    "PeerSender",
    "PlanReport",
    "RequestId",
    "Security",
    "StageReport",
    "StreamTotals",
    "Tensor",
    "TensorInbox",
    "Transport",
    "TransportConfig",
    "TransportStats",
    "View",
    "check_listen_address",
    "encode_frames",
    "infer_status",
    "loop_factory",
    "run",
    "tune_malloc",
    "view_of",
]

if TYPE_CHECKING:  # both implementations satisfy the Protocols the layers above use
    _transports: tuple[type[Transport], ...] = (GrpcTransport, MemoryTransport)
    _senders: tuple[type[PeerSender], ...] = (GrpcPeer, MemoryPeer)
