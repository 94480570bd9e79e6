"""Clients fail over: a request whose node goes away is re-sent to another member.

Inference is idempotent, so a client may send a request again when the node it entered at
(its origin) dies or becomes unreachable before answering: the connection broke, the
session ended, the node said it is stopping. A request whose own content is at fault
(INVALID_ARGUMENT), whose part raised (INTERNAL) or that the node refused as overloaded
(RESOURCE_EXHAUSTED) fails at once with the node's message: every origin feeds the same
stages, so sending a refused request elsewhere would multiply the load when the cluster is
already full, and hide its backpressure from the caller. A node that answered "no plan
agreed" (FAILED_PRECONDITION) or gave up at its own deadline (DEADLINE_EXCEEDED) is alive,
but another may do better: the request goes there too while the client's deadline allows.

``Failover`` (one per cluster) knows the members from its seeds and from the view of the
first node that answers a status call (its own address and every peer it counts alive),
asked again in the background every ``MEMBERS_REFRESH_S`` while requests flow, soon after a
node goes away, and before a request gives up; so a node that restarted on a new port, or a
new member, is found without a status call per request. Each request tries each member at
most once, so when every node is gone it ends with one error, before its deadline, that
lists what was tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import grpc
import numpy as np

from edgenode.errors import EdgenodeError, PeerUnavailable
from edgenode.transport._session import Refusal

__all__ = [
    "DOWN_HOLD_S",
    "MEMBERS_REFRESH_S",
    "Answer",
    "Failover",
    "InferNodes",
    "View",
    "next_step",
]

logger = logging.getLogger(__name__)

MEMBERS_REFRESH_S = 10.0  # the members are asked again this often while requests flow
REFRESH_GAP_S = 1.0  # at least this long between two status calls of one client
REFRESH_TRIES = 3  # nodes asked for their view, one after the other, before giving up
DOWN_HOLD_S = 5.0  # a node that went away is tried last for this long

# Answers of a live node that say nothing about the request: another node may do better.
_NOT_HERE = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION})

Step = Literal["fail", "elsewhere", "down"]


def next_step(refusal: Refusal) -> Step:
    """What a client does after ``refusal``: fail the request, send it to another node,
    or also count this node as gone ("down": tried last for a while)."""
    if refusal.lost:
        return "down"  # the call ended under the request: died, restarted, cut off
    if refusal.answered and refusal.code == grpc.StatusCode.UNAVAILABLE:
        return "down"  # the node is stopping
    if refusal.answered and refusal.code in _NOT_HERE:
        return "elsewhere"
    return "fail"


@dataclass(frozen=True, slots=True)
class View:
    """What one node says about its cluster."""

    node_id: str
    identity: str  # cluster name and model: members of one cluster share it
    members: Mapping[str, str]  # node id -> address, of every node it counts alive (itself too)


class InferNodes(Protocol):
    """How a Failover reaches single nodes (ControlClient implements it)."""

    async def infer_once(
        self, address: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray] | Refusal:
        """One request at one node: its outputs, or why there are none."""
        ...

    async def view(self, address: str) -> View:
        """The node's view of its cluster; PeerUnavailable when it does not answer."""
        ...


@dataclass(frozen=True, slots=True)
class Answer:
    """How one request ended: outputs from ``address``, or ``error``; ``refusals`` are the
    nodes that did not answer it before (empty when the first one did)."""

    outputs: dict[str, np.ndarray] | None
    error: EdgenodeError | None
    address: str  # the node that answered, or the last one tried
    refusals: tuple[Refusal, ...] = ()
    timed_out: bool = False  # the caller's deadline passed

    def result(self) -> dict[str, np.ndarray]:
        """The outputs, or raise the error."""
        if self.outputs is None:
            assert self.error is not None
            raise self.error
        return self.outputs


class Failover:
    """Requests to one cluster: each sent to an origin and, when that node goes away before
    answering, to another member, until one answers or the request's deadline passes.

    Owned by a ControlClient (``ControlClient.cluster``), which closes it.
    """

    def __init__(
        self,
        nodes: InferNodes,
        seeds: Iterable[str] = (),
        *,
        refresh_s: float = MEMBERS_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nodes = nodes
        self._refresh_s = refresh_s
        self._clock = clock
        self._seeds: list[str] = []
        self._members: dict[str, str] = {}  # node id -> address, from the last view
        self._ids: dict[str, str] = {}  # address -> node id, from views
        self._identity = ""  # of the first node that answered a status call
        self._foreign: set[str] = set()  # addresses answering as another cluster's node
        self._verified: set[str] = set()  # addresses that answered with this cluster's view
        self._down: dict[str, float] = {}  # address -> when it went away
        self._warned: set[tuple[str, Step]] = set()  # logged once, until the node answers
        self._refreshed_at = -math.inf
        self._asked_at = -math.inf
        self._refresh: asyncio.Task[bool] | None = None
        self._closed = False
        self.add(seeds)

    async def __aenter__(self) -> Failover:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # members ----------------------------------------------------------------------------

    def add(self, addresses: Iterable[str]) -> None:
        """Nodes of this cluster (``--peer`` flags, mDNS answers): candidate origins."""
        for address in addresses:
            if address not in self._seeds:
                self._seeds.append(address)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The candidate origins in the order a request without an origin tries them."""
        return tuple(self._candidates(None, set()))

    def knows(self, address: str) -> bool:
        """Whether ``address`` is a seed or a member of the last view."""
        return address in self._seeds or address in self._members.values()

    async def refresh(self) -> bool:
        """Ask a node (the first of a few that answers) which members it counts alive;
        whether one answered."""
        self._asked_at = self._clock()
        for address in self._candidates(None, set())[:REFRESH_TRIES]:
            try:
                view = await self._nodes.view(address)
            except EdgenodeError as exc:
                logger.debug("no view of the cluster from %s: %s", address, exc)
                continue
            if self.learn(address, view):
                return True
        return False

    def learn(self, address: str, view: View) -> bool:
        """Take the view the node at ``address`` gave (False, and that node is no longer
        tried, when it belongs to another cluster or serves another model)."""
        if self._identity and view.identity != self._identity:
            self._foreign.add(address)
            logger.warning(
                "%s answers as a node of another cluster or model (%s, expected %s): "
                "no requests go there",
                address,
                view.identity,
                self._identity,
            )
            return False
        self._identity = view.identity
        self._members = dict(view.members)
        self._verified.add(address)
        self._ids[address] = view.node_id
        self._ids.update((a, node) for node, a in view.members.items())
        self._refreshed_at = self._asked_at = self._clock()
        return True

    def _candidates(self, origin: str | None, tried: set[str]) -> list[str]:
        """Addresses to try, best first: ``origin``, then the others from the one after it
        (so the requests of different origins fail over to different nodes); nodes gone
        lately and addresses a node has left (it restarted elsewhere) come last. Once a
        node told who the members are, a seed that is not one is left out: it may belong
        to another cluster, which would answer with another model."""
        members = set(self._members.values())
        everyone = [
            a
            for a in dict.fromkeys([*self._seeds, *sorted(members)])
            if not self._identity or a in members or a in self._verified
        ]
        if origin is not None:
            # an origin that restarted elsewhere: start where that node is now
            moved_to = self._members.get(self._ids.get(origin, ""), "")
            anchor = origin if origin in everyone else moved_to
            if anchor in everyone:
                at = everyone.index(anchor)
                everyone = everyone[at:] + everyone[:at]
            if origin not in everyone:
                everyone.insert(0, origin)
        now = self._clock()
        first: list[str] = []
        last: list[str] = []
        for address in everyone:
            if address in tried or address in self._foreign:
                continue
            gone = now - self._down.get(address, -math.inf) < DOWN_HOLD_S
            moved = self._members.get(self._ids.get(address, ""), address) != address
            (last if gone or moved else first).append(address)
        return first + last

    def _refresh_soon(self, *, due: bool = False) -> asyncio.Task[bool] | None:
        """Start a background refresh unless one runs or one was asked for lately (or,
        with ``due``, unless the last view is younger than the refresh period)."""
        if self._refresh is not None and not self._refresh.done():
            return self._refresh
        now = self._clock()
        if now - self._asked_at < REFRESH_GAP_S or self._closed:
            return None
        if due and now - self._refreshed_at < self._refresh_s:
            return None
        self._asked_at = now
        self._refresh = asyncio.get_running_loop().create_task(self.refresh())
        return self._refresh

    # requests ---------------------------------------------------------------------------

    async def infer(
        self, inputs: Mapping[str, np.ndarray], *, timeout_s: float, origin: str | None = None
    ) -> dict[str, np.ndarray]:
        """The outputs of one request (see ``request``), or its error raised."""
        answer = await self.request(inputs, timeout_s=timeout_s, origin=origin)
        return answer.result()

    async def request(
        self, inputs: Mapping[str, np.ndarray], *, timeout_s: float, origin: str | None = None
    ) -> Answer:
        """Run one request, entering at ``origin`` (default: the first candidate) and
        re-sent to another member when a node goes away, within ``timeout_s`` in all."""
        if self._closed:
            return Answer(None, PeerUnavailable("the client was closed"), origin or "")
        if origin is not None:
            self.add([origin])
        self._refresh_soon(due=True)
        refusals: list[Refusal] = []
        tried: set[str] = set()
        address = origin or ""
        asked_again = False
        try:
            async with asyncio.timeout(timeout_s):
                while not self._closed:
                    order = self._candidates(origin, tried)
                    if not order:
                        if asked_again:
                            break
                        asked_again = True  # the members may have changed since the last view
                        refresh = self._refresh_soon() or self._refresh
                        if refresh is not None:
                            await asyncio.shield(refresh)
                        continue
                    address = order[0]
                    tried.add(address)
                    outcome = await self._nodes.infer_once(address, inputs)
                    if not isinstance(outcome, Refusal):
                        self._answered(address)
                        return Answer(outcome, None, address, tuple(refusals))
                    refusals.append(outcome)
                    step = next_step(outcome)
                    if step == "fail":
                        return Answer(None, outcome.error(), address, tuple(refusals))
                    self._failed(outcome, step, order[1:])
        except TimeoutError:
            before = f" (before: {_texts(refusals)})" if refusals else ""
            error = PeerUnavailable(f"{address}: no answer within {timeout_s:g} s{before}")
            return Answer(None, error, address, tuple(refusals), timed_out=True)
        return Answer(None, _exhausted(refusals, self._closed), address, tuple(refusals))

    def _failed(self, refusal: Refusal, step: Step, others: list[str]) -> None:
        address = refusal.address
        if step == "down":
            self._down[address] = self._clock()
            self._refresh_soon()
        if (address, step) in self._warned:
            logger.debug("failing over from %s: %s", address, refusal.text())
            return
        self._warned.add((address, step))
        where = f"to {', '.join(others)}" if others else "but no other node is known"
        if step == "down":
            logger.warning(
                "%s went away (%s): re-sending its requests %s", address, refusal.reason(), where
            )
        else:
            logger.info(
                "%s could not run a request (%s): trying %s", address, refusal.reason(), where
            )

    def _answered(self, address: str) -> None:
        if (address, "down") in self._warned:
            logger.info("%s answers again", address)
        self._warned -= {(address, "down"), (address, "elsewhere")}
        self._down.pop(address, None)

    async def aclose(self) -> None:
        """Stop: requests still running end with an error; no more status calls."""
        self._closed = True
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh


def _texts(refusals: Iterable[Refusal]) -> str:
    return "; ".join(r.text() for r in refusals)


def _exhausted(refusals: list[Refusal], closed: bool) -> EdgenodeError:
    """The error of a request every candidate refused: the node's own error when only one
    was tried, else the last one's kind with every attempt listed."""
    if closed:
        return PeerUnavailable("the client was closed")
    if not refusals:
        return PeerUnavailable("no node of the cluster is known")
    if len(refusals) == 1:
        return refusals[0].error()
    last = refusals[-1].error()
    kind = PeerUnavailable if isinstance(last, PeerUnavailable) else type(last)
    return kind(f"no node of the cluster could answer: {_texts(refusals)}")
