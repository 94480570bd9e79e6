"""TLS and call tokens on gRPC: channels, server ports and the interceptor that refuses
calls without a valid cluster credential (see edgenode/security.py for the scheme).

With ``Security.insecure()`` (development: `insecure = true`) channels and ports are
plain and every call is served.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from edgenode.errors import PermissionDenied, Unauthenticated
from edgenode.security import (
    MEMBER_NAME,
    TOKEN_HEADER,
    Credentials,
    TokenSigner,
    TokenVerifier,
)

__all__ = ["Security"]

logger = logging.getLogger(__name__)

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
_LOGGED_WINDOW = 256  # (caller host, reason) pairs already logged


@dataclass(frozen=True, slots=True)
class Security:
    """How a node or client talks to others: a member credential, or insecure."""

    credentials: Credentials | None

    @classmethod
    def insecure(cls) -> Security:
        """Plain connections; every call served (development only)."""
        return cls(credentials=None)

    @property
    def is_insecure(self) -> bool:
        """True without a credential."""
        return self.credentials is None

    def channel(self, address: str, options: tuple[tuple[str, Any], ...]) -> grpc.aio.Channel:
        """A channel to ``address``: TLS to a cluster member, with a token on every call."""
        creds = self.credentials
        if creds is None:
            return grpc.aio.insecure_channel(address, options=options)
        signer = TokenSigner(creds)
        tls = grpc.ssl_channel_credentials(
            root_certificates=creds.ca_pem,
            private_key=creds.key_pem,
            certificate_chain=creds.cert_pem,
        )
        tokens = grpc.metadata_call_credentials(_TokenPlugin(signer), name="edgenode")
        return grpc.aio.secure_channel(
            address,
            grpc.composite_channel_credentials(tls, tokens),
            options=(*options, ("grpc.ssl_target_name_override", MEMBER_NAME)),
        )

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Listen on ``address`` (TLS with the member certificate); the bound port."""
        creds = self.credentials
        if creds is None:
            return int(server.add_insecure_port(address))
        tls = grpc.ssl_server_credentials([(creds.key_pem, creds.cert_pem)])
        return int(server.add_secure_port(address, tls))

    def interceptors(
        self, on_refused: Callable[[str], None] | None = None
    ) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """The server interceptors enforcing membership (none when insecure); each refusal
        is told to ``on_refused`` (``unauthenticated`` or ``permission_denied``)."""
        creds = self.credentials
        if creds is None:
            return ()
        return (_Membership(TokenVerifier(creds.ca_pem), on_refused),)


class _TokenPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(((TOKEN_HEADER, self._signer.token()),), None)


class _Membership(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call (but health checks) whose token does not prove membership."""

    def __init__(
        self, verifier: TokenVerifier, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self._verifier = verifier
        self._on_refused = on_refused
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:
            return handler
        token = next(
            (
                str(value)
                for key, value in handler_call_details.invocation_metadata or ()
                if key == TOKEN_HEADER
            ),
            None,
        )
        try:
            self._verifier.check(token)
        except Unauthenticated as exc:
            code, reason = grpc.StatusCode.UNAUTHENTICATED, str(exc)
        except PermissionDenied as exc:
            code, reason = grpc.StatusCode.PERMISSION_DENIED, str(exc)
        else:
            return handler
        return self._refuse(handler, handler_call_details.method, code, reason)

    def _log_once(self, peer: str, method: str, reason: str) -> None:
        host = peer.rsplit(":", 1)[0]
        if (host, reason) in self._logged:
            return
        self._logged[(host, reason)] = None
        if len(self._logged) > _LOGGED_WINDOW:
            self._logged.popitem(last=False)
        logger.warning("refused %s from %s: %s", method.rsplit("/", 1)[-1], host, reason)

    def _refuse(
        self, handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode, reason: str
    ) -> grpc.RpcMethodHandler:
        log, count = self._log_once, self._on_refused

        async def refuse(context: Any) -> None:
            log(context.peer(), method, reason)
            if count is not None:
                count(code.name.lower())
            await context.abort(code, reason)

        async def unary(request: Any, context: Any) -> None:
            await refuse(context)

        async def streaming(request: Any, context: Any) -> Any:
            await refuse(context)
            yield  # pragma: no cover  (abort raises)

        if handler.response_streaming:
            behaviour = streaming
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
        else:
            behaviour = unary
            make = (
                grpc.stream_unary_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_unary_rpc_method_handler
            )
        return make(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
