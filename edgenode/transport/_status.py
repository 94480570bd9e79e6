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

__all__ = ["ERROR_KEY", "error_from_status", "failure_reason", "status_of"]

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

_NO_ANSWER = "no answer"
_CLOSED = "connection closed"
# How gRPC's core says a call never reached a node (in its details), and the few words a
# reader of a one-line error needs instead; the first match wins.
_REASONS: tuple[tuple[str, str], ...] = (
    ("WRONG_VERSION_NUMBER", "TLS handshake failed: it does not speak TLS (try --insecure)"),
    ("handshake", "TLS handshake failed"),
    ("Connection refused", "connection refused"),
    ("Socket closed", _CLOSED),
    ("Connection reset", "connection reset"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
    ("errors resolving", "unknown host name"),
    ("DNS resolution failed", "unknown host name"),
    ("Failed parsing HTTP/2", "not a gRPC server"),
    ("Received http2 header with status", "not a gRPC server"),
    ("connection attempt timed out", _NO_ANSWER),
    ("Deadline Exceeded", _NO_ANSWER),
)


def failure_reason(
    code: grpc.StatusCode,
    details: str | None,
    *,
    timeout_s: float | None = None,
    insecure: bool = False,
) -> str:
    """Why a call failed, on one line: a few words for the usual ways a node cannot be
    reached ("connection refused"; "no answer within 2 s" given the call's ``timeout_s``),
    else gRPC's details (or the code's name). ``insecure``: the caller spoke without TLS,
    so a connection closed at once may be a node that expects TLS."""
    text = " ".join((details or "").split())
    folded = text.lower()
    reason = next((r for needle, r in _REASONS if needle.lower() in folded), None)
    if reason == _NO_ANSWER and timeout_s is not None:
        return f"{_NO_ANSWER} within {timeout_s:g} s"
    if reason == _CLOSED and insecure:
        return f"{_CLOSED} (a node with TLS? pass --key)"
    return reason or text or code.name


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
    name = next((v for k, v in trailing_metadata or () if k == ERROR_KEY), None)
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is not None:  # the peer's own words
        return cls(f"peer {peer}: {details or code.name}")
    message = f"peer {peer}: {failure_reason(code, details)}"
    if code in _UNAVAILABLE:
        return PeerUnavailable(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProtocolError(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message)
    return TransportError(f"{message} ({code.name})")
