"""Find nodes without joining: what `edgenode status` and clients use (mDNS browse only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgenode.mesh._peer import Endpoint
from edgenode.mesh.discovery import SERVICE_TYPE, Interfaces, _check_interfaces

__all__ = ["BROWSE_TIMEOUT_S", "browse"]

logger = logging.getLogger(__name__)

BROWSE_TIMEOUT_S = 1.5  # answers on a LAN arrive within ~150 ms; slow Wi-Fi takes longer
_RESOLVE_TIMEOUT_MS = 1000


async def browse(
    *,
    cluster: str | None = None,
    interfaces: Interfaces = "all",
    timeout_s: float = BROWSE_TIMEOUT_S,
) -> list[Endpoint]:
    """gRPC endpoints of the nodes that answer within ``timeout_s`` (of ``cluster`` if given)."""
    found: dict[str, Endpoint] = {}
    pending: set[asyncio.Task[None]] = set()
    azc = AsyncZeroconf(interfaces=_check_interfaces(interfaces) or "all")

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(azc.zeroconf, _RESOLVE_TIMEOUT_MS):
            return
        props = {k: v for k, v in info.properties.items() if v is not None}
        if cluster is not None and props.get(b"c", b"").decode(errors="replace") != cluster:
            return
        addresses = info.parsed_scoped_addresses()
        if addresses and info.port:
            found[name] = Endpoint(host=addresses[0], port=info.port)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(resolve(name))
            pending.add(task)
            task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
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
    return sorted(found.values(), key=str)
