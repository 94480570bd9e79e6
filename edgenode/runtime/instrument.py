"""The request path observed for Prometheus: wrappers around the router and the transport,
and a watcher of plan changes.

Each wrapper satisfies the Protocol of what it wraps and only times calls into it, so a
node with metrics off (``node.metrics_listen`` empty) wires the plain objects and its
request path runs no instrumentation at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Self

import numpy as np

from edgenode.errors import EdgenodeError, Overloaded
from edgenode.planning import ClusterPlan
from edgenode.runtime.follow import next_agreed
from edgenode.runtime.metrics import NodeMetrics
from edgenode.runtime.negotiation import Negotiator
from edgenode.transport import (
    InferenceService,
    PeerSender,
    StreamTotals,
    Tensor,
    TensorInbox,
    Transport,
    TransportStats,
    infer_status,
)

__all__ = ["ObservedRequests", "TimedTransport", "stage_observer", "watch_plans"]


class ObservedRequests:
    """An ``InferenceService`` (the router) whose requests are timed and counted by outcome."""

    def __init__(
        self,
        router: InferenceService,
        metrics: NodeMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._ok = metrics.request_duration.labels(outcome="ok")  # the common case, resolved once

    @property
    def input_names(self) -> frozenset[str]:
        """The model's input names (the router's)."""
        return self._router.input_names

    def check_admission(self) -> None:
        """The router's check; a refusal is counted."""
        try:
            self._router.check_admission()
        except EdgenodeError as exc:
            self._count_failure(exc)
            raise

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The router's answer, its duration observed under its outcome."""
        started = self._clock()
        try:
            outputs = await self._router.infer(inputs)
        except EdgenodeError as exc:
            code = self._count_failure(exc)
            self._metrics.request_duration.labels(outcome=code).observe(self._clock() - started)
            raise
        self._ok.observe(self._clock() - started)
        return outputs

    def _count_failure(self, exc: EdgenodeError) -> str:
        code = str(infer_status(exc).name)
        self._metrics.failed.labels(code=code).inc()
        if isinstance(exc, Overloaded):
            self._metrics.refused.labels(reason="resource_exhausted").inc()
        return code


class _TimedSender:
    """A ``PeerSender`` whose sends are observed in ``edgenode_hop_send_seconds``."""

    def __init__(
        self,
        sender: PeerSender,
        metrics: NodeMetrics,
        peer_of: Callable[[str], str | None],
        clock: Callable[[], float],
    ) -> None:
        self._sender = sender
        self._metrics = metrics
        self._peer_of = peer_of
        self._clock = clock
        self._named: Callable[[float], None] | None = None  # observe, once the peer is known

    @property
    def address(self) -> str:
        """Where the peer listens."""
        return self._sender.address

    async def send(self, tensors: Sequence[Tensor]) -> None:
        """The sender's send, timed (failures included: a slow failure is a slow hop)."""
        started = self._clock()
        try:
            await self._sender.send(tensors)
        finally:
            self._observe(self._clock() - started)

    def _observe(self, seconds: float) -> None:
        observe = self._named
        if observe is None:
            # By node id once the peer is a member (ids survive restarts on new ports).
            peer = self._peer_of(self._sender.address)
            child = self._metrics.hop_duration.labels(peer=peer or self._sender.address)
            if peer is not None:
                observe = self._named = child.observe
            else:
                observe = child.observe
        observe(seconds)

    async def flush(self) -> StreamTotals:
        """See PeerSender.flush."""
        return await self._sender.flush()

    def abort(self) -> None:
        """See PeerSender.abort."""
        self._sender.abort()

    async def aclose(self) -> None:
        """See PeerSender.aclose."""
        await self._sender.aclose()


class TimedTransport:
    """A ``Transport`` whose peers' sends are timed; receiving is the wrapped one's."""

    def __init__(
        self,
        transport: Transport,
        metrics: NodeMetrics,
        peer_of: Callable[[str], str | None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``peer_of``: the node id listening at an address (None: not a member yet)."""
        self._transport = transport
        self._metrics = metrics
        self._peer_of = peer_of
        self._clock = clock
        self._senders: dict[str, _TimedSender] = {}

    @property
    def address(self) -> str:
        """Where peers reach this node."""
        return self._transport.address

    @property
    def inbox(self) -> TensorInbox:
        """The wrapped transport's inbox."""
        return self._transport.inbox

    def peer(self, address: str) -> PeerSender:
        """The wrapped transport's sender to ``address``, timed."""
        sender = self._senders.get(address)
        if sender is None:
            inner = self._transport.peer(address)
            sender = _TimedSender(inner, self._metrics, self._peer_of, self._clock)
            self._senders[address] = sender
        return sender

    def stats(self) -> TransportStats:
        """The wrapped transport's receiving-side gauges."""
        return self._transport.stats()

    async def __aenter__(self) -> Self:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._transport.__aexit__(exc_type, exc, tb)


def stage_observer(metrics: NodeMetrics) -> Callable[[range, Sequence[float]], None]:
    """Observes a stage's run (``Router``'s ``on_stage``): the stage and each of its parts."""
    stages: dict[range, Callable[[float], None]] = {}
    parts: dict[int, Callable[[float], None]] = {}

    def observe(indices: range, seconds: Sequence[float]) -> None:
        stage = stages.get(indices)
        if stage is None:
            label = f"{indices.start}-{indices.stop - 1}"
            stage = stages[indices] = metrics.stage_duration.labels(parts=label).observe
        stage(sum(seconds))
        for index, part_s in zip(indices, seconds, strict=True):
            part = parts.get(index)
            if part is None:
                part = parts[index] = metrics.part_duration.labels(part=str(index)).observe
            part(part_s)

    return observe


async def watch_plans(
    negotiator: Negotiator,
    metrics: NodeMetrics,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Count changes of the agreed plan, publish the served digest and observe how long
    each membership change (``negotiator.members_changed_s``, on ``clock``) took to give an
    agreed plan over the new members; runs until cancelled."""
    served: ClusterPlan | None = None
    observed: float | None = None  # the membership change already timed
    while True:
        state = await next_agreed(negotiator, served)
        plan = state.agreed
        assert plan is not None
        if served is None or served.digest != plan.digest:  # not the same plan agreed again
            metrics.plan_changes.inc()
            metrics.plan.info({"digest": plan.digest})
        served = plan
        changed = negotiator.members_changed_s
        if changed != observed and set(plan.members) == set(state.members):
            metrics.plan_convergence.observe(max(0.0, clock() - changed))
            observed = changed
