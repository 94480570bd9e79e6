"""What a log record says about the node, its plan and the request or peer it is about,
for an operator's filters (the journal's NODE_ID=, PLAN_DIGEST=, REQUEST_ID=, PEER_ID=).

A record about a request names it with ``extra={REQUEST_ID: request}`` (``RequestLog``
does it), one about a peer with ``extra={PEER_ID: node_id}``; the node and its
plan come from ``bind_node``, which the node calls once as it starts: every record logged
in that task, the tasks it starts and the threads ``asyncio.to_thread`` runs carries them.
Imports nothing of ours, so every layer can use it.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

__all__ = ["NODE_ID", "PEER_ID", "PLAN_DIGEST", "PLAN_DIGEST_CHARS", "REQUEST_ID", "NodeTags",
           "RequestLog", "bind_node", "record_fields"]  # fmt: skip

# LogRecord attribute names (and, upper-cased, the journal's field names).
NODE_ID = "node_id"
PLAN_DIGEST = "plan_digest"
REQUEST_ID = "request_id"
PEER_ID = "peer_id"
PLAN_DIGEST_CHARS = 12  # as log lines and `status --wide` show a plan digest


@dataclass(slots=True)
class NodeTags:
    """The node a record comes from and the plan it serves (changes with the plan)."""

    node_id: str
    plan_digest: str = ""

    def plan_changed(self, digest: str) -> None:
        """The cluster agreed on the plan ``digest`` (full or short)."""
        self.plan_digest = digest[:PLAN_DIGEST_CHARS]


_bound: contextvars.ContextVar[NodeTags | None] = contextvars.ContextVar(
    "edgenode_node_tags", default=None
)
# Threads that no task started (zeroconf's, an executor's) have no context of ours: their
# records get the node bound last. A process runs one node, except in tests.
_last: list[NodeTags] = []


def bind_node(node_id: str) -> NodeTags:
    """Tag the records logged from here on (this task and what it starts) with ``node_id``."""
    tags = NodeTags(node_id)
    _bound.set(tags)
    _last[:] = [tags]
    return tags


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """NODE_ID, PLAN_DIGEST, REQUEST_ID and PEER_ID of ``record`` that are known: its own
    attributes (``extra=``) first, else those of the node bound where it was logged."""
    tags = _bound.get() or (_last[0] if _last else None)
    values = {
        NODE_ID: getattr(record, NODE_ID, None) or (tags.node_id if tags else ""),
        PLAN_DIGEST: str(getattr(record, PLAN_DIGEST, None) or (tags.plan_digest if tags else ""))[
            :PLAN_DIGEST_CHARS
        ],
        REQUEST_ID: getattr(record, REQUEST_ID, None) or "",
        PEER_ID: getattr(record, PEER_ID, None) or "",
    }
    return {name.upper(): str(value) for name, value in values.items() if value}


class RequestLog:
    """Lines about one request: ``log.debug(request, "what %s", arg)`` logs "request ID: what
    ..." with REQUEST_ID=ID, as logged where it is called."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, request: object, msg: str, *args: object) -> None:
        self._log(logging.DEBUG, request, msg, args)

    def warning(self, request: object, msg: str, *args: object) -> None:
        self._log(logging.WARNING, request, msg, args)

    def _log(self, level: int, request: object, msg: str, args: tuple[object, ...]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level,
                "request %s: " + msg,
                request,
                *args,
                extra={REQUEST_ID: str(request)},
                stacklevel=3,  # the caller of debug(), not this module
            )
