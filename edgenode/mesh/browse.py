"""Find nodes without joining: what `edgenode status` and clients use (mDNS browse only).

An mDNS record is a hint that anyone on the LAN can publish. ``browse`` returns what
records announce; ``confirm`` keeps the ones whose endpoint answers ``Hello`` (over TLS with
a call token when the client holds a cluster key) as the node and cluster the record names;
``find_members`` does both and explains in one line why nothing was kept.

Clusters are told apart by the name in their records (``cluster.name`` of node.toml), which
a client passes as ``cluster`` when it knows it. The cluster name in a member credential
(the CA's, from `edgenode keygen --cluster`) is not used for that: nothing ties it to
``cluster.name``, and with a key the credential already does better than a name, since
only nodes holding a certificate of the same CA get through the TLS handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from zeroconf import DNSQuestionType, InterfaceChoice, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgenode.errors import DiscoveryError, EdgenodeError
from edgenode.mesh._peer import Endpoint, PeerInfo
from edgenode.mesh._protocols import Prober
from edgenode.mesh._txt import decode_txt
from edgenode.mesh.discovery import SERVICE_TYPE, Interfaces, _check_interfaces

__all__ = [
    "BROWSE_TIMEOUT_S",
    "CONFIRM_TIMEOUT_S",
    "Confirmation",
    "browse",
    "confirm",
    "find_members",
]

logger = logging.getLogger(__name__)

BROWSE_TIMEOUT_S = 1.5  # answers on a LAN arrive within ~150 ms; slow Wi-Fi takes longer
CONFIRM_TIMEOUT_S = 1.0  # a Hello (TLS handshake included) on a LAN takes milliseconds
_RESOLVE_TIMEOUT_MS = 1000


async def browse(
    *,
    cluster: str | None = None,
    interfaces: Interfaces = "all",
    timeout_s: float = BROWSE_TIMEOUT_S,
) -> list[PeerInfo]:
    """The records of the nodes that answer within ``timeout_s`` (of ``cluster`` if given),
    as announced and not confirmed, ordered by node id then endpoint; malformed ones dropped."""
    found: dict[str, PeerInfo] = {}
    pending: set[asyncio.Task[None]] = set()
    chosen = _check_interfaces(interfaces)
    azc = AsyncZeroconf(interfaces=InterfaceChoice.All if chosen is None else chosen)

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        # QM: a unicast answer (QU) may go to another process bound to port 5353 on this host.
        if not await info.async_request(
            azc.zeroconf, _RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM
        ):
            return
        addresses = tuple(info.parsed_scoped_addresses())
        if not addresses or not info.port:
            return
        try:
            record = decode_txt(info.text or b"", addresses=addresses, port=info.port)
        except EdgenodeError as exc:
            logger.info("ignoring malformed mDNS record %r: %s", name, exc)
            return
        if cluster is None or record.cluster == cluster:
            found[name] = record

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(resolve(name))
            pending.add(task)
            task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(
        azc.zeroconf, SERVICE_TYPE, handlers=[on_change], question_type=DNSQuestionType.QM
    )
    try:
        await asyncio.sleep(timeout_s)  # browsing: collect whatever answers in this window
        if pending:
            await asyncio.wait(pending, timeout=_RESOLVE_TIMEOUT_MS / 1000)
    finally:
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            await browser.async_cancel()
        await azc.async_close()
    # By id first: the node a client enters at does not change when ports do.
    return sorted(found.values(), key=lambda r: (r.node_id, str(r.endpoint)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirmation:
    """Which browsed records their endpoint confirmed, and why the others do not count."""

    found: int  # records asked about
    members: tuple[PeerInfo, ...]  # as their Hello answered, at the browsed endpoint
    failures: tuple[str, ...]  # one reason per record that does not count, in record order


async def confirm(
    records: Sequence[PeerInfo], hello: Prober, *, timeout_s: float = CONFIRM_TIMEOUT_S
) -> Confirmation:
    """Ask every distinct endpoint of ``records`` ``hello``, all at once, within
    ``timeout_s``; a record counts when its endpoint answers as its node id and cluster.
    The members keep the order of ``records``, each endpoint once."""
    endpoints = list(dict.fromkeys(r.endpoint for r in records))

    async def ask(endpoint: Endpoint) -> PeerInfo | str:
        try:
            async with asyncio.timeout(timeout_s):
                return await hello(endpoint)
        except TimeoutError:
            return f"{endpoint}: no answer within {timeout_s:g} s"
        except EdgenodeError as exc:
            return str(exc)

    answers = dict(zip(endpoints, await asyncio.gather(*(ask(e) for e in endpoints)), strict=True))
    members: dict[Endpoint, PeerInfo] = {}
    failures = []
    for record in records:
        answer = answers[record.endpoint]
        if isinstance(answer, str):
            reason = answer
        elif answer.node_id != record.node_id:
            reason = (
                f"{record.endpoint} answers as node {answer.node_id!r}, "
                f"not as the record's {record.node_id!r}"
            )
        elif answer.cluster != record.cluster:
            reason = (
                f"{record.endpoint} answers as a node of cluster {answer.cluster!r}, "
                f"not of the record's {record.cluster!r}"
            )
        else:
            where = dataclasses.replace(answer, addresses=record.addresses, port=record.port)
            members.setdefault(record.endpoint, where)
            continue
        logger.info("ignoring the mDNS record of %r: %s", record.node_id, reason)
        failures.append(reason)
    return Confirmation(
        found=len(records), members=tuple(members.values()), failures=tuple(failures)
    )


async def find_members(
    hello: Prober,
    *,
    cluster: str | None = None,
    interfaces: Interfaces = "all",
    browse_s: float = BROWSE_TIMEOUT_S,
    confirm_s: float = CONFIRM_TIMEOUT_S,
) -> list[PeerInfo]:
    """``browse`` then ``confirm``: the nodes that answered as their records say, in
    browse order; DiscoveryError, in one line, when none did."""
    records = await browse(cluster=cluster, interfaces=interfaces, timeout_s=browse_s)
    of = f" of cluster {cluster!r}" if cluster is not None else ""
    if not records:
        raise DiscoveryError(f"no edgenode{of} found on the network (try --peer HOST:PORT)")
    result = await confirm(records, hello, timeout_s=confirm_s)
    if not result.members:
        count = f"{result.found} edgenode record{'s' if result.found != 1 else ''}{of}"
        raise DiscoveryError(
            f"{count} found, none answered as a member of this cluster: {result.failures[0]}"
        )
    return list(result.members)
