"""Errors of the mesh layer (defined in edgenode.errors, the one exception tree)."""

from __future__ import annotations

from edgenode.errors import DiscoveryError, InvalidPeerRecord

__all__ = ["DiscoveryError", "InvalidPeerRecord"]
