"""TLS and membership checks on a real gRPC server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import logging

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgenode.errors import PeerUnavailable, PermissionDenied, Unauthenticated
from edgenode.security import MEMBER_NAME, issue_member, new_cluster
from edgenode.transport import (
    GrpcPeer,
    GrpcTransport,
    RequestId,
    Security,
    Tensor,
    TransportConfig,
)
from tests.transport.conftest import receive


@pytest.fixture(scope="module")
def keys():
    ca, member = new_cluster("home")
    _, outsider = new_cluster("home")  # same name, another CA
    return {
        "member": member,
        "another member": issue_member(ca, member="pi-2"),
        "outsider": outsider,
        # an outsider that trusts our (public) CA certificate, so it gets past TLS
        "outsider trusting us": dataclasses.replace(outsider, ca_pem=member.ca_pem),
        "expired member": dataclasses.replace(issue_member(ca, days=-1), ca_pem=member.ca_pem),
    }


def _data(n: int) -> Tensor:
    return Tensor(RequestId(f"r{n}"), "x", np.arange(4, dtype=np.float32))


async def _push(address: str, security: Security) -> None:
    config = TransportConfig(security=security, connect_timeout_s=0.5)
    async with GrpcPeer(address, config=config) as peer:
        await peer.send([_data(0)])
        await peer.flush()


async def test_members_exchange_tensors_over_tls(keys) -> None:
    config = TransportConfig(security=Security(keys["member"]))
    async with GrpcTransport("127.0.0.1", 0, config=config) as server:
        other = TransportConfig(security=Security(keys["another member"]))
        async with GrpcPeer(server.address, config=other) as peer:
            await peer.send([_data(1)])
            totals = await peer.flush()
        assert totals.tensors == 1
        [got] = await receive(server.inbox, 1)
        assert got.request_id == "r1"


@pytest.mark.parametrize(
    ("who", "error", "message"),
    [
        ("outsider trusting us", PermissionDenied, "another cluster"),
        ("expired member", PermissionDenied, "not valid now"),
        ("outsider", PeerUnavailable, "not reachable"),  # refused in the TLS handshake
        ("insecure", PeerUnavailable, "not reachable"),  # plain text to a TLS port
    ],
)
async def test_outsiders_cannot_push_tensors(keys, who, error, message, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="edgenode.transport._security")
    config = TransportConfig(security=Security(keys["member"]))
    security = Security.insecure() if who == "insecure" else Security(keys[who])
    async with GrpcTransport("127.0.0.1", 0, config=config) as server:
        for _ in range(3 if error is PermissionDenied else 1):  # 3: to see it logged once
            with pytest.raises(error, match=message):
                await _push(server.address, security)
        assert server.stats().queued_tensors == 0  # nothing reached the node
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused Stream")]
    assert len(refusals) == (1 if error is PermissionDenied else 0)  # logged once


async def test_a_call_without_a_token_is_unauthenticated_but_health_is_open(keys) -> None:
    member = keys["member"]
    config = TransportConfig(security=Security(member))
    async with GrpcTransport("127.0.0.1", 0, config=config) as server:
        tls = grpc.ssl_channel_credentials(root_certificates=member.ca_pem)
        options = (("grpc.ssl_target_name_override", MEMBER_NAME),)
        async with grpc.aio.secure_channel(server.address, tls, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.stream_unary("/edgenode.v1.EdgeNode/Stream")(iter([b""]))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "no cluster credential" in (caught.value.details() or "")
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_domain_errors_for_the_auth_codes() -> None:
    from edgenode.transport._status import error_from_status

    assert isinstance(
        error_from_status("p", grpc.StatusCode.UNAUTHENTICATED, "no", None), Unauthenticated
    )
    assert isinstance(
        error_from_status("p", grpc.StatusCode.PERMISSION_DENIED, "no", None), PermissionDenied
    )
