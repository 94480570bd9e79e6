"""Discovery events are hints: the membership changes only on what nodes prove themselves.

Anyone who can send one multicast packet can publish, change or withdraw an mDNS record, so no
record is believed as it stands. Each event is checked by asking ``Hello`` at an endpoint over
the control plane (TLS and a membership token when the cluster has a key: an outsider cannot
answer at all, and another member answers with its own id):

- A record of a node that is not a member joins once ``Hello`` at one of the record's addresses
  answers with the record's node id. The member is then the *answer* (incarnation, capacity,
  model identity: never the record's TXT) as reached at that endpoint.
- A member's record with another endpoint or another run: the new endpoint must answer with the
  member's id. The same run there: the member moved. Another run: it replaces the member only
  when the member's endpoint no longer answers as that run (else two nodes claim one id, and
  the member stays). Until then the member is used where it was.
- A member's record that changes nothing the cluster uses (a name): nothing to do. One whose
  capacity differs from the member's (it measured its link again, or a forged memory field
  passed discovery's filter): ``Hello`` is asked, and its answer, not the record, applied.
- A removal (an mDNS goodbye, a record turned incompatible): the member is asked where it is.
  It stays if it answers as itself, is replaced if another run of it answers there, and is
  marked dead otherwise, so the liveness probes can bring it back if it answers later.
- A goodbye over the control plane (``left``) is authenticated: applied at once, and that run
  is never admitted again.
- A record claiming this node's own id, answered at its endpoint by another live run: two
  devices were given one id. The run that started later stops (``DuplicateNodeId``).

A check that fails is retried with exponential backoff up to ``CHECK_MAX_BACKOFF_S`` (a forged
record costs one ``Hello`` per backoff step, not one per second forever) and starts again at
once when the record changes; each failure is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from edgenode.errors import DuplicateNodeId, EdgenodeError
from edgenode.mesh._base import OnceLog
from edgenode.mesh._peer import (
    Endpoint,
    NodeId,
    PeerEvent,
    PeerEventKind,
    PeerInfo,
    incompatibility,
    other_cluster,
)
from edgenode.mesh._table import PeerEvents
from edgenode.mesh.membership import Membership

__all__ = [
    "CHECK_FIRST_BACKOFF_S",
    "CHECK_MAX_BACKOFF_S",
    "CHECK_TIMEOUT_S",
    "Greeter",
    "Vetting",
]

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.0  # one Hello; a slower answer counts as none
CHECK_FIRST_BACKOFF_S = 0.05  # a record that could not be checked is asked again after this...
CHECK_MAX_BACKOFF_S = 120.0  # ...doubling up to this
FRESH_S = 60.0  # a record this young (a node starting up) is asked at least every...
FRESH_MAX_BACKOFF_S = 2.0  # ...this often
_LEFT_RUNS = 1024  # runs that said goodbye, remembered so that their lingering records stay out


class Greeter(Protocol):
    """Asks whoever listens at an endpoint who it is, over the (authenticated) control plane."""

    async def hello(self, endpoint: Endpoint) -> PeerInfo:
        """The record of the node answering at ``endpoint``; EdgenodeError if none does."""
        ...


def _reached(answer: PeerInfo, where: Endpoint) -> PeerInfo:
    """``answer`` as reached at ``where``: that address first, that port."""
    others = tuple(a for a in answer.addresses if a != where.host)
    return replace(answer, addresses=(where.host, *others), port=where.port)


def _started(info: PeerInfo) -> str:
    if not info.started_ms:
        return "an unknown time"
    when = dt.datetime.fromtimestamp(info.started_ms / 1000, tz=dt.UTC)
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


class Vetting:
    """Checks discovery events and applies what they prove to the membership; see the module
    docstring. ``run(events)`` until cancelled; ``left()`` for authenticated goodbyes."""

    def __init__(
        self,
        *,
        greeter: Greeter,
        membership: Callable[[], Membership],
        update: Callable[[Membership], None],
        timeout_s: float = CHECK_TIMEOUT_S,
        first_backoff_s: float = CHECK_FIRST_BACKOFF_S,
        max_backoff_s: float = CHECK_MAX_BACKOFF_S,
    ) -> None:
        """``membership``/``update``: read and replace the owner's membership view."""
        self._greeter = greeter
        self._membership = membership
        self._update = update
        self._timeout_s = timeout_s
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._hints: dict[NodeId, PeerEvent] = {}  # newest unchecked event per node id
        self._wakes: dict[NodeId, asyncio.Event] = {}
        self._workers: dict[NodeId, asyncio.Task[None]] = {}
        self._left: OrderedDict[tuple[NodeId, int], None] = OrderedDict()
        self._once = OnceLog(logger)

    @property
    def pending(self) -> int:
        """Events not checked yet, or waiting to be checked again."""
        return len(self._hints)

    async def run(self, events: PeerEvents) -> None:
        """Check every event of ``events`` (a discovery's subscription) until it ends or this
        is cancelled; raises DuplicateNodeId when this node must stop."""
        try:
            async with asyncio.TaskGroup() as group:
                try:
                    async for event in events:
                        self._note(event, group)
                finally:
                    for task in self._workers.values():
                        task.cancel()
        finally:
            events.close()

    def left(self, node_id: NodeId, incarnation: int) -> None:
        """A member said goodbye over the authenticated control plane: drop that run now."""
        self._left[(node_id, incarnation)] = None
        while len(self._left) > _LEFT_RUNS:
            self._left.popitem(last=False)
        hint = self._hints.get(node_id)
        if hint is not None and hint.peer.incarnation == incarnation:
            del self._hints[node_id]
        membership = self._membership()
        known = membership.record(node_id)
        if known is not None and known.incarnation == incarnation:
            logger.debug("peer %s left the cluster", node_id)
            self._update(membership.apply(PeerEvent(PeerEventKind.LEFT, known)))

    # -- internals -------------------------------------------------------------------------

    def _note(self, event: PeerEvent, group: asyncio.TaskGroup) -> None:
        node_id = event.peer.node_id
        self._hints[node_id] = event
        wake = self._wakes.get(node_id)
        if wake is not None:
            wake.set()
        if node_id not in self._workers:
            self._wakes[node_id] = asyncio.Event()
            self._workers[node_id] = group.create_task(self._work(node_id))

    async def _work(self, node_id: NodeId) -> None:
        """Check the newest event about ``node_id`` until one settles, backing off."""
        backoff = self._first_backoff_s
        wake = self._wakes[node_id]
        loop = asyncio.get_running_loop()
        seen = loop.time()
        try:
            while (event := self._hints.get(node_id)) is not None:
                wake.clear()
                settled = await self._check(event)
                if self._hints.get(node_id) is not event:
                    backoff = self._first_backoff_s  # a newer event: check it at once
                    continue
                if settled:
                    del self._hints[node_id]
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await wake.wait()
                if self._hints.get(node_id) is event:
                    fresh = loop.time() - seen < FRESH_S
                    cap = min(self._max_backoff_s, FRESH_MAX_BACKOFF_S if fresh else math.inf)
                    backoff = min(backoff * 2, cap)
                else:
                    backoff = self._first_backoff_s
                    seen = loop.time()
        finally:
            self._workers.pop(node_id, None)
            self._wakes.pop(node_id, None)

    async def _check(self, event: PeerEvent) -> bool:
        """Apply what ``event`` proves; False when it should be checked again later."""
        hint = event.peer
        local = self._membership().local
        if event.kind is PeerEventKind.TWIN or hint.node_id == local.node_id:
            return await self._check_twin(hint)
        known = self._membership().record(hint.node_id)
        if event.kind is PeerEventKind.LEFT:
            return known is None or await self._check_gone(known)
        if (hint.node_id, hint.incarnation) in self._left:
            return True  # a lingering record of a run that said goodbye
        if (
            known is not None
            and known.same_run(hint)
            and hint.reachable_at(known.endpoint)
            and hint.capacity == known.capacity
        ):
            return True  # nothing the cluster uses changed
        # Otherwise ask: a new record, a move, or a member that says its capacity changed
        # (it measured its link again): what the answer says, not the record, is applied.
        found = await self._find(hint)
        if found is None:
            return False
        answer, where = found
        record = _reached(answer, where)
        if (answer.node_id, answer.incarnation) in self._left:
            return True
        reason = incompatibility(local, record)
        if reason is not None:
            self._once.log(
                (hint.node_id, answer.incarnation, "incompatible"),
                logging.INFO,
                "ignoring %s at %s: %s",
                hint.node_id,
                where,
                reason,
            )
            return False
        known = self._membership().record(hint.node_id)  # it may have changed meanwhile
        if known is not None and not known.same_run(answer):
            if where != known.endpoint and await self._answers_as(known, known.endpoint):
                self._once.log(
                    (hint.node_id, answer.incarnation, "twin"),
                    logging.WARNING,
                    "two nodes claim node id %s: the member at %s (running since %s) and "
                    "another at %s (since %s); keeping the member",
                    hint.node_id,
                    known.endpoint,
                    _started(known),
                    where,
                    _started(answer),
                )
                return False
            logger.debug(
                "peer %s restarted (run %x) at %s", hint.node_id, answer.incarnation, where
            )
        elif known is not None and where != known.endpoint:
            logger.debug("peer %s moved from %s to %s", hint.node_id, known.endpoint, where)
        kind = PeerEventKind.JOINED if known is None else PeerEventKind.UPDATED
        self._update(self._membership().apply(PeerEvent(kind, record)))
        return True

    async def _check_gone(self, known: PeerInfo) -> bool:
        """mDNS says the member left: believe it only if it does not answer as itself."""
        answer = await self._ask(known.endpoint)
        membership = self._membership()
        if answer is not None and answer.same_run(known):
            self._once.log(
                (known.node_id, known.incarnation, "goodbye"),
                logging.INFO,
                "mDNS says %s left, but it answers at %s: ignored",
                known.node_id,
                known.endpoint,
            )
            if membership.is_dead(known.node_id):
                self._update(membership.revive(known.node_id, known.incarnation))
            return True
        if answer is not None and answer.node_id == known.node_id:
            record = _reached(answer, known.endpoint)
            if incompatibility(membership.local, record) is None:
                logger.debug("peer %s restarted (run %x)", known.node_id, answer.incarnation)
                self._update(membership.apply(PeerEvent(PeerEventKind.JOINED, record)))
                return True
        if membership.is_dead(known.node_id):
            self._update(membership.apply(PeerEvent(PeerEventKind.LEFT, known)))
        else:
            logger.debug("peer %s said goodbye (mDNS) and does not answer: gone", known.node_id)
            self._update(membership.mark_dead(known.node_id, known.incarnation))
        return True

    async def _check_twin(self, hint: PeerInfo) -> bool:
        """A record claims this node's id: stop if a live run of it started before this one."""
        local = self._membership().local
        if hint.incarnation == local.incarnation:
            return True
        found = await self._find(hint)
        if found is None:
            return False  # nobody answers as us there: a stale or forged record
        other, where = found
        if other.incarnation == local.incarnation:
            return True  # that endpoint is this node
        if other_cluster(local, other) is not None:
            return True  # a node of another cluster (or model) that happens to share the name
        if (other.started_ms, other.incarnation) < (local.started_ms, local.incarnation):
            raise DuplicateNodeId(
                f"node id {local.node_id!r} is already used by the node at {where} (running "
                f"since {_started(other)}): give this node another node.id (or node.name)"
            )
        self._once.log(
            (other.incarnation, "twin"),
            logging.WARNING,
            "another node at %s uses this node's id %s; it started later and should stop",
            where,
            local.node_id,
        )
        return True

    async def _find(self, hint: PeerInfo) -> tuple[PeerInfo, Endpoint] | None:
        """The first of the record's addresses that answers with its node id, and the
        answer; None (logged once per record) when none does."""
        reasons = []
        for host in hint.addresses:
            endpoint = Endpoint(host=host, port=hint.port)
            try:
                async with asyncio.timeout(self._timeout_s):
                    answer = await self._greeter.hello(endpoint)
            except EdgenodeError as exc:
                reasons.append(str(exc))  # names the endpoint
                continue
            except TimeoutError:
                reasons.append(f"{endpoint}: no answer within {self._timeout_s:g} s")
                continue
            if answer.node_id == hint.node_id:
                return answer, endpoint
            reasons.append(f"{endpoint} answers as {answer.node_id}")
        self._once.log(
            (hint.node_id, hint.incarnation, hint.addresses, hint.port),
            logging.WARNING,
            "ignoring the record of %s at %s until it is confirmed: %s",
            hint.node_id,
            hint.endpoint,
            "; ".join(reasons),
        )
        return None

    async def _ask(self, endpoint: Endpoint) -> PeerInfo | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._greeter.hello(endpoint)
        except (EdgenodeError, TimeoutError):
            return None

    async def _answers_as(self, known: PeerInfo, endpoint: Endpoint) -> bool:
        answer = await self._ask(endpoint)
        return answer is not None and answer.same_run(known)
