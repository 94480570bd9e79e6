"""Finding peers and keeping the membership view: discovery (mDNS, static, in-memory).

Only the composition root names a concrete discovery; everything else takes a `Discovery`.
"""

from __future__ import annotations

from edgenode.mesh._errors import DiscoveryError, InvalidPeerRecord
from edgenode.mesh._peer import (
    Capacity,
    Endpoint,
    NodeId,
    PeerEvent,
    PeerEventKind,
    PeerInfo,
    incompatibility,
    new_incarnation,
    valid_node_id,
)
from edgenode.mesh._protocols import Discovery, Prober
from edgenode.mesh._table import PeerEvents
from edgenode.mesh._txt import (
    TXT_ITEM_MAX_BYTES,
    TXT_RECORD_MAX_BYTES,
    decode_txt,
    encode_txt,
)
from edgenode.mesh.discovery import SERVICE_TYPE, Interfaces, ZeroconfDiscovery, local_addresses
from edgenode.mesh.membership import (
    REPLAN_MAX_DELAY_S,
    REPLAN_QUIET_S,
    Debounce,
    Membership,
    PeerChange,
    peer_changes,
)
from edgenode.mesh.memory import InMemoryDiscovery, InMemoryNetwork
from edgenode.mesh.static import StaticDiscovery

__all__ = [
    "REPLAN_MAX_DELAY_S",
    "REPLAN_QUIET_S",
    "SERVICE_TYPE",
    "TXT_ITEM_MAX_BYTES",
    "TXT_RECORD_MAX_BYTES",
    "Capacity",
    "Debounce",
    "Discovery",
    "DiscoveryError",
    "Endpoint",
    "InMemoryDiscovery",
    "InMemoryNetwork",
    "Interfaces",
    "InvalidPeerRecord",
    "Membership",
    "NodeId",
    "PeerChange",
    "PeerEvent",
    "PeerEventKind",
    "PeerEvents",
    "PeerInfo",
    "Prober",
    "StaticDiscovery",
    "ZeroconfDiscovery",
    "decode_txt",
    "encode_txt",
    "incompatibility",
    "local_addresses",
    "new_incarnation",
    "peer_changes",
    "valid_node_id",
]
