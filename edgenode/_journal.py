"""Log records to the systemd journal as fields an operator can filter on.

`journalctl -u edgenode NODE_ID=a` shows one node's lines, `REQUEST_ID=...` one request's,
`PLAN_DIGEST=...` those logged under one plan (edgenode/logfields.py says where they come
from). The journal's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL: one datagram of
``KEY=value`` lines, a length-prefixed form for values with a newline, a memfd for a
datagram too large) is spoken by ``logging_journald``'s transport, pure Python: the
``systemd-python`` bindings need libsystemd's headers and a compiler on every device.
Its own handler would file our fields as ``EXTRA_*``, so the record is mapped here.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from edgenode.logfields import record_fields

__all__ = ["JOURNAL_SOCKET", "SYSLOG_IDENTIFIER", "JournalHandler", "journal_stream", "priority"]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "edgenode"  # as the unit's SyslogIdentifier= for what it writes on stderr


def priority(level: int) -> int:
    """The syslog priority of a logging level: 7 debug, 6 info, 4 warning, 3 error, 2
    critical; a level between two takes the more severe one's (as systemd-python does)."""
    if level <= logging.DEBUG:
        return 7
    if level <= logging.INFO:
        return 6
    if level <= logging.WARNING:
        return 4
    return 3 if level <= logging.ERROR else 2


def journal_stream(environ: Mapping[str, str], fd: int) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal: the service's
    stderr, not a file a child of it was redirected to (JOURNAL_STREAM=device:inode)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class JournalHandler(logging.Handler):
    """Each record as one journal entry: MESSAGE (with its traceback), PRIORITY,
    SYSLOG_IDENTIFIER, CODE_FILE/LINE/FUNC, LOGGER, and NODE_ID, PLAN_DIGEST,
    REQUEST_ID when known."""

    def __init__(
        self,
        socket_path: str = JOURNAL_SOCKET,
        *,
        identifier: str = SYSLOG_IDENTIFIER,
        level: int = logging.NOTSET,
    ) -> None:
        """OSError when nothing listens at ``socket_path``."""
        from logging_journald import JournaldTransport  # not for commands that log on stderr

        super().__init__(level)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.connect(socket_path)  # fail here, where the CLI can fall back to stderr
        # Addressed on every send, as sd_journal_send does: a restarted journald (a new
        # socket at the same path) is reached without reconnecting.
        self._transport = JournaldTransport(socket_path=socket_path, connected=False)
        self._identifier = identifier
        # MESSAGE is the message (and traceback); the journal keeps the time and the level.
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: list[tuple[str, object]] = [
                ("MESSAGE", self.format(record)),
                ("PRIORITY", priority(record.levelno)),
                ("SYSLOG_IDENTIFIER", self._identifier),
                ("CODE_FILE", record.pathname),
                ("CODE_LINE", record.lineno),
                ("CODE_FUNC", record.funcName),
                ("LOGGER", record.name),
                *record_fields(record).items(),
            ]
            self._transport.send(fields)
        except Exception:  # noqa: BLE001  logging must not raise; handleError reports it
            self.handleError(record)

    def close(self) -> None:
        self._transport.socket.close()
        super().close()
