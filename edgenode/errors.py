"""One exception tree for edgenode; foreign errors are translated where they enter."""

from __future__ import annotations

__all__ = [
    "ChecksumMismatch",
    "ConfigError",
    "DiscoveryError",
    "DuplicateNodeId",
    "DuplicateTensor",
    "EdgenodeError",
    "IncompleteTensor",
    "InferenceFailed",
    "InputError",
    "InvalidPeerRecord",
    "InvalidTensor",
    "ManifestError",
    "ModelError",
    "Overloaded",
    "PeerUnavailable",
    "PermissionDenied",
    "PlanError",
    "ProtocolError",
    "RequestTimeout",
    "SessionEnded",
    "SessionFull",
    "TensorTooLarge",
    "TransportError",
    "Unauthenticated",
    "UsageError",
    "VacuousReference",
]


class EdgenodeError(Exception):
    """Base of every error edgenode raises on purpose."""


class UsageError(EdgenodeError):
    """The command line or an argument of a public function is invalid."""


class ConfigError(EdgenodeError):
    """A configuration file or value is invalid; the message names the key."""


class DuplicateNodeId(ConfigError):
    """Another live node of the cluster uses this node's id (two devices given one name)."""


class ModelError(EdgenodeError):
    """A model cannot be loaded, analysed, cut or exported."""


class ManifestError(ModelError):
    """A manifest.json is malformed or does not match its part files; names the field."""


class PlanError(EdgenodeError):
    """No valid plan exists for the given graph and nodes."""


class DiscoveryError(EdgenodeError):
    """Discovery cannot start or announce (sockets, interfaces, names)."""


class InvalidPeerRecord(DiscoveryError):
    """A peer's advertised record is malformed; the message says what is wrong."""


class InferenceFailed(EdgenodeError):
    """The cluster refused or could not complete a request; the message says why."""


class Overloaded(InferenceFailed):
    """A node refused a request because its queue is full; try again later or elsewhere."""


class RequestTimeout(EdgenodeError):
    """A request was not answered before its deadline."""


class TransportError(EdgenodeError):
    """Moving tensors between processes failed."""


class Unauthenticated(TransportError):
    """A caller presented no cluster credential."""


class PermissionDenied(TransportError):
    """A caller's credential does not prove membership of this cluster (now)."""


class PeerUnavailable(TransportError):
    """A peer cannot be reached or went away; the message names the peer."""


class SessionEnded(PeerUnavailable):
    """The session's call had ended before a request was sent: send it on a new one."""


class SessionFull(EdgenodeError):
    """A client keeps more requests open on one call than a node holds for it."""


class ProtocolError(TransportError):
    """Frames break the wire protocol: garbage bytes, a chunk out of place or past the end."""


class InvalidTensor(ProtocolError):
    """A tensor header is inconsistent: unknown dtype, bad dimensions, shape vs byte length."""


class TensorTooLarge(ProtocolError):
    """A tensor is larger than the receiving node accepts."""


class DuplicateTensor(ProtocolError):
    """The same tensor (request id and name) arrived twice."""


class IncompleteTensor(ProtocolError):
    """A tensor ended with fewer bytes than its header declared."""


class ChecksumMismatch(ProtocolError):
    """A tensor's bytes do not match the checksum its header declared."""


class InputError(EdgenodeError):
    """A user's input file is missing, unreadable, or does not fit the model; names the file."""


class VacuousReference(EdgenodeError):
    """Reference outputs do not move with their inputs: comparing against them proves nothing."""
