"""`edgenode status` and `infer` without --peer: forged mDNS records do not make them fail.

Records are real mDNS on the loopback interface, published by a bare zeroconf instance as
anyone on the LAN could; the endpoints they point at are real gRPC servers on 127.0.0.1
(in-process ones that answer Hello, and real node processes for the end-to-end test), a
port where nothing listens, or an outsider holding another CA's credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edgenode._cli_cluster import client_security, find_nodes
from edgenode.cli import build_parser
from edgenode.client.cluster import ClusterClient
from edgenode.errors import DiscoveryError
from edgenode.mesh import SERVICE_TYPE, Capacity, NodeId, PeerInfo, encode_txt, new_incarnation
from edgenode.mesh.browse import browse
from edgenode.mesh.discovery import host_label, instance_name
from edgenode.security import new_cluster, write_private
from edgenode.transport import GrpcTransport, Security, TransportConfig
from edgenode.transport._control import control_handlers

LOOPBACK = "127.0.0.1"
MODEL = "ab" * 32
# A responder answers a record again only a second after it last multicast it (RFC 6762
# section 6), and a browser asks at ~0.1 s and ~1.1 s: a record announced just before is
# seen at the second question. 2 s leaves margin for a loaded machine.
BROWSE_S = 2.0
ROOT = Path(__file__).resolve().parents[1]


def record(node_id: str, port: int, cluster: str, *, model: str = MODEL) -> PeerInfo:
    """What a node (or a forger) announces."""
    return PeerInfo(
        node_id=NodeId(node_id),
        name=node_id,
        addresses=(LOOPBACK,),
        port=port,
        protocol=1,
        cluster=cluster,
        manifest_identity=model,
        capacity=Capacity(speed=1.0, memory_bytes=2**30),
        incarnation=new_incarnation(),
    )


def closed_port() -> int:
    """A port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Keys:
    member: Path
    outsider: Security  # another CA, same cluster name: refused in the TLS handshake
    member_security: Security


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    _, member = new_cluster("home")
    _, outsider = new_cluster("home")
    write_private(root / "member.pem", member.bundle())
    return Keys(root / "member.pem", Security(outsider), Security(member))


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def publish() -> AsyncIterator[Callable[..., Any]]:
    """``await publish(info)``: announce ``info`` over mDNS on loopback until the test ends
    (goodbyes sent then)."""
    aiozc = AsyncZeroconf(interfaces=[LOOPBACK])

    async def announce(info: PeerInfo, text: bytes | None = None) -> None:
        service = AsyncServiceInfo(
            SERVICE_TYPE,
            instance_name(info.node_id, info.cluster),
            port=info.port,
            properties=encode_txt(info) if text is None else text,
            server=f"{host_label(info.node_id, info.cluster)}.local.",
            parsed_addresses=[LOOPBACK],
        )
        registered = await aiozc.async_register_service(service, cooperating_responders=True)
        await registered

    try:
        yield announce
    finally:
        await aiozc.async_close()


class _Answers:
    """The one thing control_handlers needs of a node to answer Hello: its record."""

    def __init__(self) -> None:
        self.record: PeerInfo | None = None

    def local(self) -> PeerInfo:
        assert self.record is not None
        return self.record


@contextlib.asynccontextmanager
async def answering(security: Security, who: Callable[[int], PeerInfo]) -> AsyncIterator[PeerInfo]:
    """A real gRPC server on 127.0.0.1 whose Hello answers ``who(its port)``."""
    node = _Answers()
    config = TransportConfig(security=security)
    async with GrpcTransport(
        LOOPBACK, 0, config=config, handlers=control_handlers(lambda: node)
    ) as server:
        node.record = who(int(server.address.rsplit(":", 1)[1]))
        yield node.record


async def find(*argv: str) -> dict[str, PeerInfo | None]:
    """What `edgenode status ARGV` (browsing on loopback) would ask."""
    args = build_parser().parse_args(
        ["status", "--interfaces", LOOPBACK, "--wait", str(BROWSE_S), *argv]
    )
    async with ClusterClient(security=client_security(args)) as client:
        return await find_nodes(args, client)


async def test_browse_returns_decoded_records_by_node_id(publish, suffix) -> None:
    cluster = f"test-{suffix}"
    b = record(f"b-{suffix}", 1001, cluster)
    a = record(f"a-{suffix}", 1002, cluster)
    await asyncio.gather(
        publish(b),
        publish(a),
        publish(record(f"c-{suffix}", 1003, f"other-{suffix}")),
        publish(record(f"d-{suffix}", 1004, cluster), text=b"\x0bid=d-broken"),
    )
    anywhere, of_cluster = await asyncio.gather(
        browse(interfaces=[LOOPBACK], timeout_s=BROWSE_S),
        browse(cluster=cluster, interfaces=[LOOPBACK], timeout_s=BROWSE_S),
    )
    ours = [r for r in anywhere if r.node_id.endswith(suffix)]  # other tests may run
    assert [r.node_id for r in ours] == [a.node_id, b.node_id, f"c-{suffix}"]  # d malformed
    assert of_cluster == [a, b]


async def test_only_nodes_that_answer_as_their_record_count(keys, publish, suffix) -> None:
    cluster = f"test-{suffix}"
    tls, plain = keys.member_security, Security.insecure()
    async with (
        answering(tls, lambda p: record(f"m-{suffix}", p, cluster)) as member,
        answering(tls, lambda p: record(f"0-other-{suffix}", p, f"other-{suffix}")) as other,
        answering(keys.outsider, lambda p: record(f"0-outsider-{suffix}", p, cluster)) as outsider,
        answering(plain, lambda p: record(f"0-plain-{suffix}", p, cluster)) as insecure,
    ):
        forged = [
            record(f"0-nothing-{suffix}", closed_port(), cluster),
            record(f"0-wrong-{suffix}", member.port, cluster),  # a member answers as itself
        ]
        await asyncio.gather(*(publish(i) for i in (member, other, outsider, insecure, *forged)))
        of_cluster, anywhere = await asyncio.gather(
            find("--key", str(keys.member), "--cluster", cluster),
            find("--key", str(keys.member)),
        )
        # Every other record sorts before the member's: the member is found all the same.
        assert of_cluster == {str(member.endpoint): member}
        # Without --cluster: any node holding a credential of the same CA, and only those.
        assert anywhere == {str(other.endpoint): other, str(member.endpoint): member}


async def test_another_cluster_in_hello_does_not_count(publish, suffix) -> None:
    cluster = f"test-{suffix}"
    plain = Security.insecure()
    async with (
        answering(plain, lambda p: record(f"m-{suffix}", p, cluster)) as member,
        answering(plain, lambda p: record(f"0-liar-{suffix}", p, f"other-{suffix}")) as liar,
    ):
        await publish(member)
        await publish(record(liar.node_id, liar.port, cluster))  # its record says ours
        assert await find("--insecure", "--cluster", cluster) == {str(member.endpoint): member}


@pytest.mark.parametrize(
    ("security", "listener", "reason"),
    [
        ("member", None, "connection refused"),
        ("member", "outsider", "TLS handshake failed"),
        ("member", "insecure", "TLS handshake failed: it does not speak TLS (try --insecure)"),
        ("insecure", "member", "connection closed (a node with TLS? pass --key)"),
        ("member", "wrong id", "answers as node 'someone-else', not as the record's"),
    ],
)
async def test_one_line_says_how_many_records_and_why_the_first_failed(
    keys, publish, suffix, security, listener, reason
) -> None:
    cluster = f"ghost-{suffix}"
    securities = {
        "member": keys.member_security,
        "outsider": keys.outsider,
        "insecure": Security.insecure(),
        "wrong id": keys.member_security,
    }
    first = f"0-first-{suffix}"
    answers = "someone-else" if listener == "wrong id" else first
    async with contextlib.AsyncExitStack() as stack:
        if listener is None:
            port = closed_port()
        else:
            who = await stack.enter_async_context(
                answering(securities[listener], lambda p: record(answers, p, cluster))
            )
            port = who.port
        await publish(record(first, port, cluster))
        await publish(record(f"1-nothing-{suffix}", closed_port(), cluster))
        flag = ["--key", str(keys.member)] if security == "member" else ["--insecure"]
        with pytest.raises(DiscoveryError) as caught:
            await find(*flag, "--cluster", cluster)
    message = str(caught.value)
    assert message.startswith(
        f"2 edgenode records of cluster '{cluster}' found, none answered as a member of this "
        f"cluster: {LOOPBACK}:{port}"
    )
    assert reason in message and "\n" not in message


async def test_no_record_at_all(keys, suffix) -> None:
    with pytest.raises(DiscoveryError, match=f"no edgenode of cluster 'none-{suffix}' found"):
        await find("--key", str(keys.member), "--cluster", f"none-{suffix}")


# -- end to end: a real secure cluster, forged records, the real CLI ---------------------


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.nodes import multi_io_split

    return multi_io_split(tmp_path_factory.mktemp("split"))


@pytest.fixture(scope="module")
def members(keys, split, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.nodes import NodeProcess, agreed_cluster

    work = tmp_path_factory.mktemp("members")
    suffix = uuid.uuid4().hex[:8]
    cluster = f"test-{suffix}"
    config = work / "node.toml"
    config.write_text(
        f'[node]\nspeed_gflops = 0.000001\n[cluster]\nname = "{cluster}"\n'
        f'[security]\nkey = "{keys.member}"\n'
    )
    names = [f"a-{suffix}", f"b-{suffix}"]
    args = ["--config", str(config), "--listen", "127.0.0.1:0", "--model", str(split["dir"]),
            "--interfaces", LOOPBACK]  # fmt: skip
    nodes = [
        NodeProcess(name, work, *args, "--state-dir", str(work / name), insecure=False)
        for name in names
    ]
    try:
        for node in nodes:
            node.wait_serving()
        found = agreed_cluster(nodes, set(names), keys.member)
        yield {"nodes": nodes, "found": found, "cluster": cluster, "suffix": suffix}
    finally:
        for node in nodes:
            node.stop()


async def edgenode(*argv: str) -> tuple[int, str, str]:
    """The real CLI, in a process of its own (this test's loop keeps serving meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgenode.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.tf
@pytest.mark.slow
async def test_status_and_infer_succeed_beside_forged_records(
    keys, split, members, publish, tmp_path: Path
) -> None:
    from tests.model import models
    from tests.nodes import statuses
    from tests.reference import KERAS_TOLERANCE, assert_answer, reference_set

    a, b = members["nodes"]
    cluster, suffix = members["cluster"], members["suffix"]
    model_sha = members["found"][a.name]["node"]["model_sha256"]
    port_of = {n.name: int(n.address.rsplit(":", 1)[1]) for n in (a, b)}

    def forged(node_id: str, port: int, of: str = cluster) -> PeerInfo:
        # what anyone can copy from the members' own TXT records: cluster and model
        return record(f"{node_id}-{suffix}", port, of, model=model_sha)

    async with answering(keys.outsider, lambda p: forged("0-outsider", p)) as outsider:
        # Each sorts before the members' records ("0-" < "a-"), as the first one tried.
        for info in (
            forged("0-nothing", closed_port()),
            outsider,
            forged("0-wrong-id", port_of[b.name]),  # a member's port: it answers as b
            forged("0-other-cluster", port_of[a.name], f"other-{suffix}"),
        ):
            await publish(info)
        browsing = ["--key", str(keys.member), "--interfaces", LOOPBACK, "--wait", str(BROWSE_S)]

        for extra in ([], ["--cluster", cluster]):
            code, out, err = await edgenode("status", *browsing, *extra, "--json")
            assert code == 0, err
            assert sorted(s["node"]["node_id"] for s in json.loads(out)) == [a.name, b.name]

        batches = [models.sample_inputs(split["model"], seed=s, batch=1) for s in range(2)]
        files = []
        for i, inputs in enumerate(batches):
            np.savez(tmp_path / f"x{i}.npz", **inputs)
            files.append(str(tmp_path / f"x{i}.npz"))
        saved = tmp_path / "y.npz"
        code, out, err = await edgenode(
            "infer", *files, *browsing, "--json", "--save-outputs", str(saved)
        )
        assert code == 0, err
        assert json.loads(out)["summary"]["node"] == a.address  # the first member by id
        refs = reference_set(
            split["graph"], batches, tolerance=KERAS_TOLERANCE, manifest=split["manifest"]
        )
        got = np.load(saved)
        for i in range(2):
            assert_answer(refs, i, {n: got[f"x{i}.npz/{n}"] for n in ("early", "late")})

        # Only forged records of that cluster: one line that says so, and why.
        code, out, err = await edgenode("status", *browsing, "--cluster", f"other-{suffix}")
        assert code == 1
        assert err.strip().splitlines() == [
            f"edgenode: error: 1 edgenode record of cluster 'other-{suffix}' found, none "
            f"answered as a member of this cluster: {a.address} answers as node {a.name!r}, "
            f"not as the record's '0-other-cluster-{suffix}'"
        ]

    # The members still agree on one plan over both of them.
    after = await asyncio.to_thread(statuses, [a.address, b.address], keys.member)
    assert {s["plan"]["agreed_digest"] for s in after.values()} == {
        members["found"][a.name]["plan"]["agreed_digest"]
    }


async def test_browse_on_every_interface_by_default(suffix) -> None:
    """The default ("all") is zeroconf's InterfaceChoice.All: no TypeError, nothing found."""
    assert await browse(cluster=f"nobody-{suffix}", timeout_s=0.2) == []
