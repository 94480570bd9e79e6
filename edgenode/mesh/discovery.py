"""Discovery over mDNS/DNS-SD with python-zeroconf's asyncio API.

Every node registers `<node id>-<cluster tag>._edgenode._tcp.local.` on the host name
`<node id>-<cluster tag>.local.` (SRV: gRPC port, A/AAAA: addresses, TXT: see _txt), where
the tag is 8 hex digits of the cluster name's SHA-256: nodes of two clusters may share a
node id (every cluster has its "pi-1") without their records or addresses mixing in each
other's caches. It browses the same type. Registration skips the ~1 s name probe
(cooperating responders: node ids are unique by construction) and questions are multicast (QM),
which is what makes several processes on one host find each other in ~0-200 ms; QU questions
get unicast answers that another process bound to port 5353 may receive instead.

mDNS reports arrival, metadata changes and graceful departure. It does not report death: a
killed node's record stays in the cache for many minutes, so liveness comes from gRPC
(Membership.mark_dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import ifaddr
from zeroconf import (
    DNSQuestionType,
    Error,
    InterfaceChoice,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgenode.errors import UsageError
from edgenode.mesh._base import DiscoveryBase, OnceLog
from edgenode.mesh._errors import DiscoveryError, InvalidPeerRecord
from edgenode.mesh._peer import NodeId, PeerInfo
from edgenode.mesh._txt import encode_txt, parse_txt, peer_from_txt, txt_protocol

__all__ = [
    "RESOLVE_TIMEOUT_MS",
    "SERVICE_TYPE",
    "Interfaces",
    "ZeroconfDiscovery",
    "cluster_tag",
    "host_label",
    "instance_name",
    "local_addresses",
]

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_edgenode._tcp.local."
RESOLVE_TIMEOUT_MS = 3000  # a record whose SRV/TXT/A do not arrive by then is skipped
TWIN_LOOKUP_MS = 250  # at start, how long another node may take to answer for our own name

# "all", or the IP addresses of the interfaces to use (e.g. ["127.0.0.1"] for one machine).
Interfaces = Literal["all"] | Sequence[str]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_interfaces(interfaces: Interfaces) -> list[str] | None:
    """None for all interfaces, else the validated list of interface addresses."""
    if interfaces == "all":
        return None
    if isinstance(interfaces, str) or not interfaces:
        raise UsageError(f'interfaces must be "all" or a list of IP addresses, got {interfaces!r}')
    bad = [i for i in interfaces if not _is_ip(i)]
    if bad:
        raise UsageError(f"interfaces must be IP addresses, got {bad!r}")
    return list(interfaces)


def _host_ips() -> set[str]:
    """Every IP address of this host's interfaces (IPv6 without scope)."""
    return {
        ip.ip if isinstance(ip.ip, str) else ip.ip[0]
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
    }


def local_addresses(interfaces: Interfaces) -> tuple[str, ...]:
    """Addresses to advertise for a wildcard listen address: the given interface addresses,
    or for "all" every non-loopback IPv4 address of this host (127.0.0.1 when it has none)."""
    chosen = _check_interfaces(interfaces)
    if chosen is not None:
        return tuple(chosen)
    found = sorted(
        {
            ip.ip
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if ip.is_IPv4 and isinstance(ip.ip, str) and not ip.ip.startswith("127.")
        },
        key=lambda a: ipaddress.ip_address(a),
    )
    return tuple(found) or ("127.0.0.1",)


@contextlib.contextmanager
def _zeroconf_errors(action: str) -> Iterator[None]:
    """Translate zeroconf and socket errors into DiscoveryError."""
    try:
        yield
    except (Error, OSError) as e:
        raise DiscoveryError(f"cannot {action}: {str(e) or type(e).__name__}") from e


def cluster_tag(cluster: str) -> str:
    """8 hex digits naming a cluster in DNS labels (see the module docstring)."""
    return hashlib.sha256(cluster.encode()).hexdigest()[:8]


def host_label(node_id: NodeId, cluster: str) -> str:
    """The DNS label of a node: instance name and host name (at most 48 + 9 bytes)."""
    return f"{node_id}-{cluster_tag(cluster)}"


def instance_name(node_id: NodeId, cluster: str) -> str:
    """The DNS-SD instance name a node registers."""
    return f"{host_label(node_id, cluster)}.{SERVICE_TYPE}"


def _service_info(info: PeerInfo) -> AsyncServiceInfo:
    bad = [a for a in info.addresses if not _is_ip(a)]
    if bad:
        raise UsageError(f"mDNS advertises IP addresses only, got {bad!r}")
    return AsyncServiceInfo(
        SERVICE_TYPE,
        instance_name(info.node_id, info.cluster),
        port=info.port,
        properties=encode_txt(info),
        server=f"{host_label(info.node_id, info.cluster)}.local.",
        parsed_addresses=list(info.addresses),
    )


class ZeroconfDiscovery(DiscoveryBase):
    """Discovery over mDNS on the chosen interfaces; see the module docstring."""

    def __init__(self, local: PeerInfo, *, interfaces: Interfaces = "all") -> None:
        super().__init__(local)
        self._interfaces = _check_interfaces(interfaces)
        self._service = _service_info(local)  # validates the record before anything opens
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._broadcast: asyncio.Future[Any] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._names: dict[str, NodeId] = {}  # instance name -> accepted peer
        self._malformed = OnceLog(logger)

    async def _start(self) -> None:
        # Checked here because zeroconf leaks its listening socket when an address is missing.
        host_ips = _host_ips()
        missing = [i for i in self._interfaces or () if i.partition("%")[0] not in host_ips]
        if missing:
            raise DiscoveryError(f"cannot start mDNS: no interface has address {missing}")
        self._service = _service_info(self._local)  # announce() may have run before start()
        try:
            with _zeroconf_errors("start mDNS"):
                interfaces = InterfaceChoice.All if self._interfaces is None else self._interfaces
                self._aiozc = AsyncZeroconf(interfaces=interfaces)
                self._browser = AsyncServiceBrowser(
                    self._aiozc.zeroconf,
                    [SERVICE_TYPE],
                    handlers=[self._on_service_state_change],
                    question_type=DNSQuestionType.QM,
                )
                await self._look_for_twin()
                registered = await self._aiozc.async_register_service(
                    self._service, cooperating_responders=True
                )
                self._broadcast = asyncio.ensure_future(registered)
        except BaseException:  # cancelled or failed half-way: release sockets, then re-raise
            await self._close()
            raise
        logger.debug("mDNS: announced %s on %s", self._service.name, self._interfaces or "all")

    async def _look_for_twin(self) -> None:
        """Ask for our own instance name before announcing it: once both are announced, the
        records of two nodes given one id share a name and mix in caches, so only now is
        another node's record under it told apart from ours (a TWIN for the vetting)."""
        aiozc = self._aiozc
        if aiozc is None:
            return
        name = self._service.name
        service = AsyncServiceInfo(SERVICE_TYPE, name)
        if await service.async_request(
            aiozc.zeroconf, TWIN_LOOKUP_MS, question_type=DNSQuestionType.QM
        ):
            self._consider(name, service)

    def _check_local(self, info: PeerInfo) -> None:
        _service_info(info)

    async def _announce(self, info: PeerInfo) -> None:
        service = _service_info(info)
        await self._stop_broadcast()  # else it keeps sending the old TXT after the new one
        aiozc = self._aiozc
        if aiozc is None:  # closed meanwhile
            return
        self._service = service
        with _zeroconf_errors("update the mDNS record"):
            updated = await aiozc.async_update_service(service)
        self._broadcast = asyncio.ensure_future(updated)

    async def _stop_broadcast(self) -> None:
        broadcast, self._broadcast = self._broadcast, None
        if broadcast is not None and not broadcast.done():
            broadcast.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await broadcast

    async def _close(self) -> None:
        tasks = list(self._resolving.values())
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_broadcast()
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is not None:
            with _zeroconf_errors("close mDNS"):
                await aiozc.async_close()  # sends the goodbye for our record

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback, on the event loop: resolve on add/update, drop on remove."""
        if self._closed:
            return
        pending = self._resolving.pop(name, None)
        if pending is not None:
            pending.cancel()
        if state_change is ServiceStateChange.Removed:
            self._forget(name)
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._resolving[name] = task
        task.add_done_callback(lambda t: self._resolved(name, t))

    def _resolved(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            logger.error("resolving %s failed", name, exc_info=task.exception())

    async def _resolve(self, name: str) -> None:
        aiozc = self._aiozc
        if aiozc is None:
            return
        service = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            complete = await service.async_request(
                aiozc.zeroconf, RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM
            )
        except Error as e:  # zeroconf closing under us
            logger.debug("resolving %s: %r", name, e)
            return
        if not complete:
            logger.debug("no complete record for %s within %d ms", name, RESOLVE_TIMEOUT_MS)
            return
        self._consider(name, service)

    def _consider(self, name: str, service: AsyncServiceInfo) -> None:
        """Turn one resolved record into an accepted peer, or log why not."""
        try:
            fields = parse_txt(service.text)
            protocol = txt_protocol(fields)
            if protocol is not None and protocol != self._local.protocol:
                # Checked before decoding: another version may use other TXT keys.
                self._ignored.log(
                    (name, "protocol", protocol),
                    logging.INFO,
                    "ignoring peer %s: protocol version %d (ours is %d)",
                    name,
                    protocol,
                    self._local.protocol,
                )
                self._forget(name)
                return
            addresses = tuple(service.parsed_scoped_addresses())
            if not addresses or not service.port:
                raise InvalidPeerRecord("no address or port")
            peer = peer_from_txt(fields, addresses=addresses, port=service.port)
            if name.lower() != instance_name(peer.node_id, peer.cluster):
                raise InvalidPeerRecord(
                    f"instance name does not match node id {peer.node_id!r} "
                    f"of cluster {peer.cluster!r}"
                )
        except InvalidPeerRecord as e:
            self._malformed.log(
                name, logging.WARNING, "ignoring malformed mDNS record %r: %s", name, e
            )
            self._forget(name)
            return
        if self._accept(peer, source=name):
            self._names[name] = peer.node_id
        else:
            self._names.pop(name, None)

    def _forget(self, name: str) -> None:
        node_id = self._names.pop(name, None)
        if node_id is not None:
            self._table.remove(node_id)
