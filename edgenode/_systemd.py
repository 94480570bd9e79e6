"""The sd_notify protocol: tell systemd (``Type=notify``) when the node is ready or stopping.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or an abstract name
starting with ``@``); each message is newline-separated ``KEY=value`` pairs. Outside
systemd the variable is unset and every call does nothing. The protocol is a dozen
lines, so it is written here rather than pulled in as a dependency (python-systemd
needs libsystemd headers to build; the pure-Python ``sdnotify`` package is
unmaintained). Reference: sd_notify(3).
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

logger = logging.getLogger(__name__)


def notify(*fields: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``fields`` (e.g. "READY=1", "STATUS=...") to systemd; False when not under it."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    message = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True
