"""Forged mDNS records for tests: what anyone on the LAN can send, without a credential.

`Forger` is a python-zeroconf responder on the chosen interfaces. It reads a member's true
record from mDNS (`lookup`), registers a variant under the member's own instance name without
probing (`announce`: `cooperating_responders=True`, no name change, so it then also answers
queries for that name, as the member does), sends goodbyes (TTL 0) for any record
(`goodbye`), and stops answering without a goodbye (`withdraw`).

`Observer` is a bare socket in the mDNS group on the same interface, independent of
zeroconf's cache and duplicate suppression: it proves that a forged packet really went out to
every process listening there, before a test asserts that the members ignored it.

Two things a test must not do by accident:
- withdraw with `Zeroconf.unregister_service` or close while registered: either sends a
  goodbye for the member's own instance name, a forged leave of its own (`close` withdraws
  first);
- expect `withdraw` to undo a forgery: every listener keeps the forged SRV/TXT/A in its cache
  (TTL 120 s and 75 min). `restore` announces the true record, whose cache-flush bit replaces
  them (RFC 6762 section 10.2), then withdraws it silently; the member keeps answering for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import select
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from zeroconf import DNSQuestionType, ServiceInfo, Zeroconf

# Where they are defined: the package re-exports them without listing them in __all__.
from zeroconf._dns import DNSAddress, DNSPointer, DNSRecord, DNSService, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE, _MDNS_ADDR, _MDNS_PORT

from edgenode.mesh import SERVICE_TYPE, NodeId
from edgenode.mesh.discovery import instance_name

__all__ = ["Forger", "Observer", "Record", "announced", "goodbye_of", "instance_name"]

LOOPBACK = "127.0.0.1"
LOOKUP_TIMEOUT_MS = 3000  # a member on loopback answers in milliseconds
CALL_TIMEOUT_S = 10.0  # one call into the zeroconf thread (an announcement takes ~0.5 s)
# As Zeroconf.async_unregister_service: three goodbye packets 125 ms apart.
GOODBYE_REPEATS = 3
GOODBYE_INTERVAL_MS = 125
_PACKET_BYTES = 9000  # an mDNS packet is at most that large (RFC 6762 section 17)


# A TXT codec of its own, not edgenode's: it keeps the key order and checks nothing, so a
# forged record can hold anything and the true record round-trips byte for byte.
def _decode_txt(text: bytes) -> dict[str, str]:
    """Key -> value of length-prefixed key=value strings, in record order."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        item = text[pos + 1 : pos + 1 + text[pos]]
        pos += 1 + text[pos]
        key, _, value = item.decode().partition("=")
        fields.setdefault(key, value)
    return fields


def _encode_txt(fields: Mapping[str, str]) -> bytes:
    """Length-prefixed key=value strings in the given order."""
    out = bytearray()
    for key, value in fields.items():
        item = f"{key}={value}".encode()
        out.append(len(item))
        out += item
    return bytes(out)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One DNS-SD service instance as it goes on the wire."""

    name: str  # instance name, <node id>-<cluster tag>._edgenode._tcp.local.
    server: str  # host name of the SRV target and of the A records
    port: int
    addresses: tuple[str, ...]
    text: bytes  # the TXT record, byte for byte

    @property
    def fields(self) -> dict[str, str]:
        """The TXT record's key -> value, in record order."""
        return _decode_txt(self.text)

    def forged(
        self,
        *,
        port: int | None = None,
        addresses: Sequence[str] | None = None,
        txt: Mapping[str, str] | None = None,
    ) -> Record:
        """This record with its port, addresses or TXT values replaced (other keys kept)."""
        text = self.text if txt is None else _encode_txt({**self.fields, **txt})
        return dataclasses.replace(
            self,
            port=self.port if port is None else port,
            addresses=self.addresses if addresses is None else tuple(addresses),
            text=text,
        )

    def service_info(self) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            self.name,
            port=self.port,
            properties=self.text,
            server=self.server,
            parsed_addresses=list(self.addresses),
        )


class _Closing:
    """A context manager that calls ``close`` on leaving."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class Forger(_Closing):
    """A zeroconf responder that announces records under other nodes' names; see the module."""

    def __init__(self, interfaces: Sequence[str] = (LOOPBACK,)) -> None:
        # The synchronous Zeroconf runs its own event loop in a daemon thread, so the
        # (synchronous) tests can announce and keep answering while they poll the nodes.
        self._zc = Zeroconf(interfaces=list(interfaces))
        self._registered: dict[str, ServiceInfo] = {}  # lower-cased instance name -> record

    def close(self) -> None:
        """Withdraw silently, then close: Zeroconf.close says goodbye for what is registered."""
        self.withdraw()
        self._zc.close()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        loop = self._zc.loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT_S)

    def lookup(self, node_id: str, cluster: str) -> Record:
        """A node's record as it answers a multicast (QM) question, as every node asks."""
        name = instance_name(NodeId(node_id), cluster)
        info = ServiceInfo(SERVICE_TYPE, name)
        if not info.request(self._zc, LOOKUP_TIMEOUT_MS, question_type=DNSQuestionType.QM):
            raise AssertionError(
                f"no complete mDNS record for {name} within {LOOKUP_TIMEOUT_MS} ms"
            )
        assert info.server is not None and info.port is not None and info.text is not None
        return Record(
            name=info.name,
            server=info.server,
            port=info.port,
            addresses=tuple(info.parsed_addresses()),
            text=info.text,
        )

    def announce(self, record: Record) -> None:
        """Register `record` without probing, or replace the one registered under its name;
        returns once zeroconf's three announcements (225 ms apart) are sent."""
        info = record.service_info()
        key = record.name.lower()
        if key in self._registered:
            self._zc.update_service(info)  # returns once its announcements are sent too
        else:
            self._zc.register_service(info, cooperating_responders=True, allow_name_change=False)
        self._registered[key] = info

    def withdraw(self, record: Record | None = None) -> None:
        """Stop answering for `record`'s name (for every name: None), without a goodbye."""
        keys = list(self._registered) if record is None else [record.name.lower()]
        infos = [self._registered.pop(k) for k in keys if k in self._registered]
        if not infos:
            return

        async def remove() -> None:
            self._zc.registry.async_remove(infos)

        self._call(remove())

    def restore(self, true: Record) -> None:
        """Put `true` back into every cache over a forgery, then stop answering for it."""
        self.announce(true)
        self.withdraw(true)

    def goodbye(self, record: Record, *, ptr_only: bool = False) -> None:
        """Send the goodbye (TTL 0) of `record`: its PTR, SRV, TXT and A records, as
        Zeroconf.unregister_service does, or only the PTR that makes browsers report
        "removed"; returns once the packets are sent."""
        info = record.service_info()
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        out.add_answer_at_time(info.dns_pointer(override_ttl=0), 0)
        if not ptr_only:
            out.add_answer_at_time(info.dns_service(override_ttl=0), 0)
            out.add_answer_at_time(info.dns_text(override_ttl=0), 0)
            for address in info.get_address_and_nsec_records(override_ttl=0):
                out.add_answer_at_time(address, 0)

        async def send() -> None:
            for i in range(GOODBYE_REPEATS):
                if i:
                    await asyncio.sleep(GOODBYE_INTERVAL_MS / 1000)
                self._zc.async_send(out)

        self._call(send())


def goodbye_of(name: str) -> Callable[[Sequence[DNSRecord]], bool]:
    """A packet predicate: it holds the goodbye (TTL 0 PTR) of instance `name`."""

    def check(records: Sequence[DNSRecord]) -> bool:
        return any(
            isinstance(r, DNSPointer)
            and r.name == SERVICE_TYPE
            and r.alias.lower() == name.lower()
            and r.ttl == 0
            for r in records
        )

    return check


def announced(record: Record) -> Callable[[Sequence[DNSRecord]], bool]:
    """A packet predicate: it holds `record`'s SRV (port and target), TXT (byte for byte)
    and A records, all live."""
    name = record.name.lower()
    server = record.server.lower()
    wanted = {ipaddress.ip_address(a).packed for a in record.addresses}

    def check(records: Sequence[DNSRecord]) -> bool:
        live = [r for r in records if r.ttl > 0]
        srv = any(
            isinstance(r, DNSService)
            and r.name.lower() == name
            and r.port == record.port
            and r.server.lower() == server
            for r in live
        )
        txt = any(
            isinstance(r, DNSText) and r.name.lower() == name and r.text == record.text
            for r in live
        )
        found = {r.address for r in live if isinstance(r, DNSAddress) and r.name.lower() == server}
        return srv and txt and wanted <= found

    return check


class Observer(_Closing):
    """Every mDNS response arriving on one interface, read from a socket of its own."""

    def __init__(self, interface: str = LOOPBACK) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            # As every zeroconf instance does, so all of them get every multicast packet.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("", _MDNS_PORT))
            membership = socket.inet_aton(_MDNS_ADDR) + socket.inet_aton(interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        self._sock.close()

    def _packets(self, timeout_s: float) -> Iterator[list[DNSRecord]]:
        """The answers of each response that arrives within `timeout_s` (queries skipped)."""
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            readable, _, _ = select.select([self._sock], [], [], left)
            if not readable:
                return
            try:
                data, source = self._sock.recvfrom(_PACKET_BYTES)
            except BlockingIOError:  # select saw a packet another reader took
                continue
            message = DNSIncoming(data, source)
            if message.valid and message.is_response():
                yield message.answers()

    def forget(self) -> None:
        """Drop what arrived so far: `wait_for` then sees only later packets."""
        while True:
            try:
                self._sock.recv(_PACKET_BYTES)
            except BlockingIOError:
                return

    def wait_for(
        self, predicate: Callable[[Sequence[DNSRecord]], bool], deadline_s: float, what: str
    ) -> list[DNSRecord]:
        """The first packet's records that satisfy `predicate`; AssertionError at the deadline."""
        for records in self._packets(deadline_s):
            if predicate(records):
                return records
        raise AssertionError(f"no mDNS packet with {what} within {deadline_s} s")
