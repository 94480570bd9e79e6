"""The edge lab: separate hosts (network namespaces) on a private switch, links shaped with tbf.

A ``Lab`` is one private "switch" namespace holding a bridge per network, and one namespace
per ``Host``, joined to the bridges by veth pairs, with addresses from the benchmarking range
198.18.0.0/15 (network N is 198.18.N.0/24) and IPv6 link-local. The lab is never connected to
the machine's own namespace, so nothing in it can reach, or be reached from, a real network.
Each host's link is shaped with ``tbf`` on both veth ends (upload on the host's side, download
on the switch's) to a ``Profile``.

Every namespace lives as long as one holder process (``unshare -n -- sleep infinity``) and
nothing else keeps it (no bind mount), so it vanishes with its last process. Holders and the
processes run on hosts get SIGKILL when the thread that started them dies (PR_SET_PDEATHSIG,
via ``setpriv --pdeathsig``): start them from the main thread. Leaving the ``Lab`` context
kills everything it started.

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), ``unshare``, ``nsenter``, ``setpriv``, ``ip``
and ``tc`` with ``tbf``; ``unavailable()`` says in one line what is missing. Only the standard
library: the tests import this module too (tests/lab.py).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAB_PREFIX = "198.18"  # 198.18.0.0/15, the benchmarking range (RFC 2544); network N: .N.0/24
NETWORK_PREFIX_LEN = 24
TOOLS = ("unshare", "nsenter", "setpriv", "ip", "tc")
COMMAND_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
TBF_LATENCY_MS = 50  # longest a packet waits in the tbf queue before it is dropped
MIN_BURST_BYTES = 32 * 1024  # tbf needs >= one GSO segment's worth; 32 KiB is safe on veth
BURST_S = 0.001  # and one timer tick's worth of the rate (1 ms) at high rates


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A link speed, the same up and down."""

    name: str
    rate_mbit: float

    @property
    def rate_bits_s(self) -> float:
        return self.rate_mbit * 1e6

    @property
    def burst_bytes(self) -> int:
        return max(MIN_BURST_BYTES, int(self.rate_bits_s / 8 * BURST_S))

    def tbf(self) -> list[str]:
        """The ``tc qdisc ... tbf`` arguments for this profile."""
        return ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", str(self.burst_bytes),
                "latency", f"{TBF_LATENCY_MS}ms"]  # fmt: skip


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="ethernet", rate_mbit=1000),
        Profile(name="fast-wifi", rate_mbit=100),
        Profile(name="wifi", rate_mbit=30),
        Profile(name="poor-wifi", rate_mbit=8),
    )
}


class LabError(RuntimeError):
    """A lab command failed (the command and its stderr are in the message)."""


def _pdeathsig(argv: Sequence[str]) -> list[str]:
    """``argv`` that gets SIGKILL when the thread that started it dies."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def _check(argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {out.stderr.strip() or f'exit {out.returncode}'}")
    return out.stdout


_PROBE = (
    "ip link set lo up && ip link add lab-a type veth peer name lab-b && "
    "ip link add lab-br type bridge && ip link set lab-a master lab-br && "
    "tc qdisc add dev lab-b root tbf rate 8mbit burst 32768 latency 50ms"
)


@functools.cache
def unavailable() -> str | None:
    """None when labs can be built here, else one line saying why not."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"edge lab unavailable: {', '.join(missing)} not found"
    if not sys.platform.startswith("linux"):
        return "edge lab unavailable: needs Linux network namespaces"
    try:
        out = subprocess.run(
            ["unshare", "-n", "--", "sh", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"edge lab unavailable: unshare -n: {e}"
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return f"edge lab unavailable (needs root: network namespaces, veth, bridge, tbf): {why}"
    return None


class _Holder:
    """A process whose only job is to keep a new network namespace alive."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            _pdeathsig(["unshare", "-n", "--", "sleep", "infinity"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        # setpriv and unshare exec, so the pid is sleep's; wait until it runs in its namespace
        own = os.readlink("/proc/self/ns/net")
        end = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            try:
                ns = os.readlink(f"/proc/{self.pid}/ns/net")
                exe = os.readlink(f"/proc/{self.pid}/exe")
            except FileNotFoundError:
                ns, exe = own, ""
            if ns != own and Path(exe).name == "sleep":
                break
            if self.process.poll() is not None or time.monotonic() > end:
                self.kill()
                raise LabError(f"unshare -n did not start (exit {self.process.returncode})")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.process.pid

    def run(self, *argv: str) -> str:
        """``argv`` run in this namespace; its stdout."""
        return _check(["nsenter", "-t", str(self.pid), "-n", "--", *argv])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@dataclass(slots=True)
class Interface:
    """One host interface: its name in the host, its switch-side peer, its network."""

    name: str
    switch_side: str
    network: int
    address: str


class Host:
    """A network namespace joined to the lab's switch; runs processes in it."""

    def __init__(self, lab: Lab, name: str, index: int, profile: Profile) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.profile = profile
        self.interfaces: list[Interface] = []
        self._holder = _Holder()
        self._holder.run("ip", "link", "set", "lo", "up")

    @property
    def pid(self) -> int:
        """The holder's pid (``nsenter -t PID -n`` enters this host)."""
        return self._holder.pid

    @property
    def address(self) -> str:
        """The address on the host's first network."""
        return self.interfaces[0].address

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in this host (killed when the starting thread dies)."""
        return _pdeathsig(["nsenter", "-t", str(self.pid), "-n", "--", *argv])

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host (nsenter execs: the pid is the command's own); the lab
        stops it on exit."""
        process = subprocess.Popen(self.command(argv), **kwargs)
        self.lab._processes.append(process)
        return process

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in this host to the end (``subprocess.run`` arguments)."""
        return subprocess.run(self.command(argv), **kwargs)

    def ip(self, *argv: str) -> str:
        return self._holder.run("ip", *argv)

    def _attach(self, network: int) -> Interface:
        n = len(self.interfaces)
        iface = Interface(
            name=f"eth{n}",
            switch_side=f"h{self.index}n{network}",
            network=network,
            address=f"{LAB_PREFIX}.{network}.{self.index}",
        )
        sw = self.lab._switch
        sw.run("ip", "link", "add", iface.switch_side, "type", "veth",
               "peer", "name", iface.name, "netns", str(self.pid))  # fmt: skip
        sw.run("ip", "link", "set", iface.switch_side, "master", self.lab._bridge(network))
        sw.run("ip", "link", "set", iface.switch_side, "up")
        self.ip("addr", "add", f"{iface.address}/{NETWORK_PREFIX_LEN}", "dev", iface.name)
        self.ip("link", "set", iface.name, "up")
        self.interfaces.append(iface)
        self._shape(iface, self.profile, "add")
        return iface

    def _shape(
        self, iface: Interface, profile: Profile, verb: str, down: Profile | None = None
    ) -> None:
        # Upload: the host's own end of the veth; download: the switch's end.
        self._holder.run("tc", "qdisc", verb, "dev", iface.name, "root", *profile.tbf())
        self.lab._switch.run("tc", "qdisc", verb, "dev", iface.switch_side, "root",
                             *(down or profile).tbf())  # fmt: skip

    def shape(self, profile: Profile | str, *, down: Profile | str | None = None) -> None:
        """Change the speed of every link of this host: ``profile`` both ways, or, given
        ``down``, ``profile`` for what it sends and ``down`` for what it receives (an
        asymmetric link: a home uplink, or Wi-Fi far from its access point)."""
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        into = PROFILES[down] if isinstance(down, str) else down
        for iface in self.interfaces:
            self._shape(iface, self.profile, "replace", into)

    def kill(self) -> None:
        self._holder.kill()

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {[i.address for i in self.interfaces]}, {self.profile.name})"


class Lab:
    """Hosts on private switched networks; a context manager that removes everything on exit."""

    def __init__(self) -> None:
        self._switch_holder: _Holder | None = None
        self._bridges: set[int] = set()
        self._processes: list[subprocess.Popen[Any]] = []
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> Lab:
        if reason := unavailable():
            raise LabError(reason)
        self._switch_holder = _Holder()
        try:
            self._switch.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _switch(self) -> _Holder:
        if self._switch_holder is None:
            raise LabError("the lab is not open (use it as a context manager)")
        return self._switch_holder

    def _bridge(self, network: int) -> str:
        name = f"br{network}"
        if network not in self._bridges:
            sw = self._switch
            # snooping off: every host hears every mDNS multicast, no IGMP querier needed
            sw.run("ip", "link", "add", name, "type", "bridge", "mcast_snooping", "0")
            sw.run("ip", "link", "set", name, "up")
            self._bridges.add(network)
        return name

    def add_host(
        self, name: str, profile: Profile | str = "ethernet", networks: Sequence[int] = (0,)
    ) -> Host:
        """A new host on ``networks`` (one interface each: eth0 on the first), shaped to
        ``profile``; its address on network N is 198.18.N.<host number>."""
        if name in self.hosts:
            raise LabError(f"host {name!r} exists")
        prof = PROFILES[profile] if isinstance(profile, str) else profile
        host = Host(self, name, len(self.hosts) + 1, prof)
        self.hosts[name] = host
        for network in networks:
            host._attach(network)
        return host

    @property
    def holder_pids(self) -> list[int]:
        """Pids of the processes that keep the lab's namespaces (for cleanup checks)."""
        switch = [self._switch_holder.pid] if self._switch_holder else []
        return switch + [h.pid for h in self.hosts.values()]

    def close(self) -> None:
        """Stop every process started in a host (SIGTERM, then SIGKILL), then the holders:
        the namespaces, links and bridges vanish with them."""
        for p in self._processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_TIMEOUT_S
        for p in self._processes:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._processes.clear()
        for host in self.hosts.values():
            host.kill()
        if self._switch_holder:
            self._switch_holder.kill()


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    """A ``Lab`` that is closed on exit."""
    with Lab() as it:
        yield it


# A timed TCP transfer: the receiver counts from the first byte to the sender's close.
_RECEIVER = """
import socket, sys, time, json
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); n = 0; buf = bytearray(1 << 20); view = memoryview(buf)
first = None
while True:
    k = c.recv_into(view)
    if not k: break
    if first is None: first = time.perf_counter()
    n += k
end = time.perf_counter()
print(json.dumps({"bytes": n, "seconds": end - first}), flush=True)
"""
_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
left = int(sys.argv[3]); chunk = b"x" * (1 << 16)
while left > 0:
    c.sendall(chunk[:left]); left -= len(chunk)
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def measure_rate(sender: Host, receiver: Host, seconds: float = 2.0) -> float:
    """Bits per second of one TCP transfer from ``sender`` to ``receiver`` sized to take about
    ``seconds`` at the slower host's profile rate."""
    rate = min(sender.profile.rate_bits_s, receiver.profile.rate_bits_s)
    nbytes = int(rate / 8 * seconds)
    rx = receiver.popen(
        [sys.executable, "-c", _RECEIVER, receiver.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rx.stdout is not None
    try:
        port = rx.stdout.readline().strip()
        sender.run(
            [sys.executable, "-c", _SENDER, receiver.address, port, str(nbytes)],
            check=True,
            timeout=seconds * 20 + 30,
        )
        result = json.loads(rx.stdout.readline())
    finally:
        rx.kill()
        rx.wait()
        rx.stdout.close()
    if result["bytes"] != nbytes:
        raise LabError(f"transfer lost bytes: {result['bytes']} of {nbytes}")
    return float(result["bytes"] * 8 / result["seconds"])


def is_lab_address(address: str) -> bool:
    """True for an address of the lab's range (host:port or a bare IP)."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    try:
        return ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network("198.18.0.0/15")
    except ValueError:
        return False
