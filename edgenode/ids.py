"""The node-id rule, in one place: what a node id may look like and how one is made from a name.

Imports nothing of ours, so the config, the mesh and the control plane can all use it.
"""

from __future__ import annotations

import re

__all__ = ["NODE_ID_MAX_CHARS", "node_id_from_name", "valid_node_id"]

# The node id is part of the mDNS instance and host label "<id>-<cluster tag>" (at most 63
# bytes with the 9 of the tag), and DNS names compare case-insensitively: lower case only.
NODE_ID_MAX_CHARS = 48
_NODE_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_NOT_LABEL_RE = re.compile(r"[^a-z0-9]+")
_FALLBACK_NODE_ID = "node"  # for a name with no letter or digit in it


def valid_node_id(text: str) -> bool:
    """True when ``text`` is a well-formed node id (see NODE_ID_MAX_CHARS)."""
    return len(text) <= NODE_ID_MAX_CHARS and _NODE_ID_RE.fullmatch(text) is not None


def node_id_from_name(name: str) -> str:
    """The node id derived from a human-friendly name: lower case, DNS-label safe, short enough."""
    label = _NOT_LABEL_RE.sub("-", name.lower()).strip("-")
    return label[:NODE_ID_MAX_CHARS].rstrip("-") or _FALLBACK_NODE_ID
