"""A secure cluster of real node processes against a rogue node, outsiders' calls and a
replayed connection: nothing gets in, members carry on."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgenode.security import issue_member, new_cluster, write_private
from edgenode.transport import Security, run
from edgenode.transport._options import CHANNEL_OPTIONS
from tests.nodes import (
    NodeProcess,
    agreed_cluster,
    infer_checked,
    multi_io_split,
    start_node,
    statuses,
    wait_until,
)

pytestmark = [pytest.mark.tf, pytest.mark.slow]

SERVICE = "/edgenode.v1.EdgeNode"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("keys")
    ca, member = new_cluster("home")
    _, outsider = new_cluster("home")
    write_private(root / "member.pem", member.bundle())
    write_private(root / "outsider.pem", outsider.bundle())
    return {
        "ca": ca,
        "member": member,
        "member_file": root / "member.pem",
        "outsider": outsider,
        "outsider_file": root / "outsider.pem",
    }


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return multi_io_split(tmp_path_factory.mktemp("split"))


@pytest.fixture(scope="module")
def members(keys, split, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("members")
    cluster = f"test-{uuid.uuid4().hex[:12]}"

    def start(name: str, key: Path) -> NodeProcess:
        config = work / f"{name}.toml"
        config.write_text(
            f'[node]\nspeed_gflops = 0.000001\n[cluster]\nname = "{cluster}"\n'
            f'[security]\nkey = "{key}"\n'
        )
        return start_node(split["dir"], work, name, config=config, insecure=False)

    nodes = [start(n, keys["member_file"]) for n in ("a", "b")]
    try:
        for node in nodes:
            node.wait_serving()
        found = agreed_cluster(nodes, {"a", "b"}, keys["member_file"])
        yield {"nodes": nodes, "found": found, "start": start, "split": split}
    finally:
        for node in nodes:
            node.stop()


def _ask(address: str, security: Security, method: str) -> grpc.StatusCode:
    """Call one RPC with an empty request as ``security``; the status code it ends with."""

    async def go() -> grpc.StatusCode:
        channel = security.channel(address, CHANNEL_OPTIONS)
        try:
            try:
                async with asyncio.timeout(2):
                    await channel.channel_ready()
            except TimeoutError:
                return grpc.StatusCode.UNAVAILABLE  # no TLS connection: refused in the handshake
            # No request messages: a write racing the refusal would end INTERNAL on the
            # client (grpc/grpc#36066) and hide the status the node sent.
            if method == "Stream":
                await channel.stream_unary(f"{SERVICE}/Stream")(iter([]), timeout=5)
            elif method in ("Infer", "InferSession"):
                async for _ in channel.stream_stream(f"{SERVICE}/{method}")(iter([]), timeout=5):
                    pass
            elif method == "FetchFile":
                async for _ in channel.unary_stream(f"{SERVICE}/FetchFile")(b"", timeout=5):
                    pass
            else:
                await channel.unary_unary(f"{SERVICE}/{method}")(b"", timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await channel.close()
        return grpc.StatusCode.OK

    return run(go())


def test_a_rogue_node_with_another_key_cannot_join_or_make_members_replan(keys, members) -> None:
    a, b = members["nodes"]
    digest = members["found"]["a"]["plan"]["agreed_digest"]
    rogue = members["start"]("rogue", keys["outsider_file"])  # same cluster name and model
    try:
        rogue.wait_serving()
        for node in (a, b):  # each member saw its record, could not confirm it, said so once
            wait_until(lambda n=node: "ignoring the record of rogue" in n.log(), 60, "a warning")
        wait_until(lambda: "stream to" in rogue.log() or "does not answer" in rogue.log()
                   or "ignoring the record of" in rogue.log(), 60, "the rogue to fail")  # fmt: skip
        found = statuses([a.address, b.address], keys["member_file"])
        for node in ("a", "b"):
            plan = found[node]["plan"]
            assert plan["agreed_digest"] == plan["computed_digest"] == digest  # no re-plan
            assert set(plan["members"]) == {"a", "b"}
            assert found[node]["node"]["node_id"] == node
        assert a.log().count("ignoring the record of rogue") == 1
        assert rogue.process.poll() is None  # it runs, alone, outside the cluster
    finally:
        rogue.stop()
    infer_checked(a.address, Security(keys["member"]), members["split"], seed=1)


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("outsider trusting our CA", grpc.StatusCode.PERMISSION_DENIED),
        ("expired member", grpc.StatusCode.PERMISSION_DENIED),
        ("TLS without a credential", grpc.StatusCode.UNAUTHENTICATED),
        ("outsider", grpc.StatusCode.UNAVAILABLE),  # its TLS handshake fails
        ("plain text", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_outsiders_cannot_push_tensors_run_infer_or_read_status(keys, members, who, code) -> None:
    a = members["nodes"][0]
    member = keys["member"]
    securities = {
        "outsider trusting our CA": Security(
            dataclasses.replace(keys["outsider"], ca_pem=member.ca_pem)
        ),
        "expired member": Security(issue_member(keys["ca"], days=-1)),
        "TLS without a credential": _TlsOnly(member.ca_pem),
        "outsider": Security(keys["outsider"]),
        "plain text": Security.insecure(),
    }
    before = a.log().count("refused ")
    methods = ["Stream", "Infer", "InferSession", "GetStatus", "GetPlan", "Hello", "FetchFile"]
    if code == grpc.StatusCode.UNAVAILABLE:
        methods = ["Stream", "GetStatus"]  # no TLS connection at all: one is like another
    for method in methods:
        assert _ask(a.address, securities[who], method) == code, method  # type: ignore[arg-type]
    refusals = a.log().count("refused ") - before
    # logged once per caller and reason (TLS failures never reach edgenode's code)
    assert refusals == (1 if code != grpc.StatusCode.UNAVAILABLE else 0)
    for method in ("Stream", "GetStatus"):  # ...and not again
        _ask(a.address, securities[who], method)  # type: ignore[arg-type]
    assert a.log().count("refused ") - before == refusals
    infer_checked(a.address, Security(member), members["split"], seed=2)  # members carry on


class _TlsOnly(Security):
    """TLS that trusts the cluster CA but sends no token (an outsider with the public CA)."""

    def __init__(self, ca_pem: bytes) -> None:
        object.__setattr__(self, "credentials", None)
        object.__setattr__(self, "_ca", ca_pem)

    def channel(self, address: str, options: tuple[tuple[str, Any], ...]) -> grpc.aio.Channel:
        from edgenode.security import MEMBER_NAME

        tls = grpc.ssl_channel_credentials(root_certificates=self._ca)  # type: ignore[attr-defined]
        return grpc.aio.secure_channel(
            address, tls, options=(*options, ("grpc.ssl_target_name_override", MEMBER_NAME))
        )


def test_a_replayed_connection_is_refused(keys, members) -> None:
    a = members["nodes"][0]
    host, port = a.address.rsplit(":", 1)
    served = int(statuses([a.address], keys["member_file"])["a"]["requests_served"])
    captured: list[bytes] = []

    async def proxy_and_replay() -> bool:
        async def relay(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
        ) -> None:
            try:
                while data := await reader.read(65536):
                    if record:
                        captured.append(data)
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            await asyncio.gather(relay(reader, up_writer, True), relay(up_reader, writer, False))

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        proxy = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            # Through the proxy only: a fail-over client could send them to a directly.
            await asyncio.to_thread(
                infer_checked, proxy, Security(keys["member"]), members["split"], 3, failover=False
            )
        # The client's bytes of that whole exchange, sent again to the node.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"".join(captured))
        await writer.drain()
        closed = False
        try:
            async with asyncio.timeout(10):
                while await reader.read(65536):
                    pass  # the server's handshake answer, then an alert
                closed = True
        except ConnectionError:
            closed = True
        except TimeoutError:
            pass
        writer.close()
        return closed

    closed = run(proxy_and_replay())
    assert captured, "the proxy saw the client's bytes"
    assert closed, "the node should drop the replayed connection"
    after = int(statuses([a.address], keys["member_file"])["a"]["requests_served"])
    assert after == served + 2  # _infer's two real requests, not their replay
