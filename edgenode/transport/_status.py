"""The one mapping between domain errors and gRPC status codes, both directions."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from edgenode.errors import (
    ChecksumMismatch,
    DuplicateTensor,
    EdgenodeError,
    IncompleteTensor,
    InvalidTensor,
    PeerUnavailable,
    PermissionDenied,
    ProtocolError,
    TensorTooLarge,
    TransportError,
    Unauthenticated,
)

__all__ = ["ERROR_KEY", "error_from_status", "status_of"]

ERROR_KEY = "edgenode-error"  # trailing metadata: the exact domain class of a rejection

# Most specific first: the first isinstance match decides.
_STATUS: tuple[tuple[type[EdgenodeError], grpc.StatusCode], ...] = (
    (TensorTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DuplicateTensor, grpc.StatusCode.ALREADY_EXISTS),
    (IncompleteTensor, grpc.StatusCode.DATA_LOSS),
    (ChecksumMismatch, grpc.StatusCode.DATA_LOSS),
    (InvalidTensor, grpc.StatusCode.INVALID_ARGUMENT),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
    (PeerUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)
_BY_NAME: dict[str, type[TransportError]] = {
    cls.__name__: cls for cls, _ in _STATUS if issubclass(cls, TransportError)
}
# Without our metadata these mean the connection or call broke, not that the peer refused:
# grpc reports a write on a call its peer just dropped as INTERNAL ("Internal error from Core").
_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    }
)


def status_of(error: EdgenodeError) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """The status code for a domain error, and trailing metadata naming its class."""
    for cls, code in _STATUS:
        if isinstance(error, cls):
            return code, ((ERROR_KEY, cls.__name__),)
    return grpc.StatusCode.INTERNAL, ()


def error_from_status(
    peer: str,
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Sequence[tuple[str, str | bytes]] | None,
) -> TransportError:
    """The domain error a sender raises for the status that ended its call to peer."""
    message = f"peer {peer}: {details or code.name}"
    name = next((v for k, v in trailing_metadata or () if k == ERROR_KEY), None)
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is not None:
        return cls(message)
    if code in _UNAVAILABLE:
        return PeerUnavailable(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProtocolError(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message)
    return TransportError(f"{message} ({code.name})")
