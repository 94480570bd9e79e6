"""The request path: origin, join buffers, running owned parts, forwarding outputs.

A request enters at any node (its origin). The origin picks a replica pipeline and sends each
model input (and each row slice of one, for a tiled model) to the owners of the parts that
read it. A node that owns parts [a, b) runs them in segments (``stages.Segment``: one for a
pipeline stage): a segment starts once the tensors it reads from outside have arrived for the
request (join buffer), runs its parts back to back on a worker thread, and its outputs leave
at once (``outbox.Outbox``), straight to the owners of the parts that read them (in its own
replica) and every final output to the origin. Intermediate tensors never go back through the
origin or the client. Tensors for this node itself are handed over without the network.
Intermediate tensors travel in the manifest's wire format (``transport.codec`` encodes them);
the client's inputs and the final outputs travel exact.

Failures come back to the origin as notices: control tensors (``transport.codec``) ``!retry`` or
``!fail`` whose bytes are a UTF-8 message. A stage that receives a tensor stamped with
a plan it does not serve, cannot reach the next stage, or lacks a part sends ``!retry``;
a stage whose part raises sends ``!fail``. The origin runs each request as a series of
attempts, each under its own request id (so late tensors of an abandoned attempt are
ignored, and a request is answered at most once): it re-sends on ``!retry``, on a
failed send, and when the agreed plan changes under an attempt (a peer died: its
tensors are gone), backing off while the plan stays the same, until the deadline.
``!fail`` fails the request at once.

Each tensor is checked against the manifest once, where it enters: a client's inputs in
``infer`` (names, dtypes, shapes, one batch size), before anything is sent; a peer's
tensors when the stage that reads them starts (``PartHost.run_chain``). Strangers cost no
memory: the transport refuses a client's tensor that is not a model input as it arrives,
and ``_accept`` drops a peer's tensor that the stage does not read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenode.backends import check_inputs
from edgenode.errors import (
    EdgenodeError,
    InferenceFailed,
    Overloaded,
    PeerUnavailable,
    PlanError,
    RequestTimeout,
    TransportError,
)
from edgenode.logfields import RequestLog
from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, Manifest, row_slices
from edgenode.planning import ClusterPlan
from edgenode.runtime.outbox import Outbox, origin_of
from edgenode.runtime.parts import PartHost
from edgenode.runtime.stages import (
    NodeRole,
    Segment,
    consumers_of,
    pick_replica,
    role_of,
)
from edgenode.transport import RequestId, Tensor, Transport
from edgenode.transport.codec import FAIL, RETRY, control, control_text, is_control

__all__ = ["RequestTimeout", "Router"]

logger = logging.getLogger(__name__)
request_log = RequestLog(logger)

SWEEP_INTERVAL_S = 1.0
RETRY_BACKOFF_S = 0.05  # first wait before re-sending under an unchanged plan; doubles
MAX_BACKOFF_S = 1.0
NOTIFIED_WINDOW = 4096  # requests remembered as already notified (one notice each)
STARTED_WINDOW = 16384  # requests remembered as run here: a resent input must not rerun them


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str


@dataclass(slots=True)
class _Attempt:
    future: asyncio.Future[dict[str, np.ndarray] | _Retry]
    plan: str
    replica: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(slots=True)
class _Join:
    created_s: float
    plan: str
    values: dict[str, np.ndarray] = field(default_factory=dict)
    # Values this node delivered to itself: its origin's inputs, checked in ``infer``.
    # The others came from peers and are checked when the stage starts.
    checked: set[str] = field(default_factory=set)
    started: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every arrival


class Router:
    """Runs this node's side of every request; ``run()`` consumes the inbox until cancelled.

    ``max_inflight`` requests started here run at once and as many again wait for a
    turn; more are refused with ``Overloaded``. Call ``plan_changed()`` whenever the
    agreed plan changes.
    """

    def __init__(
        self,
        *,
        node_id: str,
        manifest: Manifest,
        host: PartHost,
        transport: Transport,
        plan: Callable[[], ClusterPlan | None],
        address_of: Callable[[str], str | None],
        deadline_s: float,
        max_inflight: int = 64,
        on_stage: Callable[[range, tuple[float, ...]], None] | None = None,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        slow_link: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._me = node_id
        self._slow_link = slow_link  # this node's link when slower than the cluster's, else 0
        self._part_s: dict[int, float] = {}  # recent run time of each part run here
        self._manifest = manifest
        self._host = host
        self._transport = transport  # its inbox: the outbox sends
        self._plan = plan
        self._deadline_s = deadline_s
        self._on_stage = on_stage
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._consumers = consumers_of(manifest)
        self._finals = frozenset(manifest.model.outputs)
        self._input_names = frozenset(t.name for t in manifest.model.inputs)
        self._attempts: dict[str, _Attempt] = {}
        self._joins: dict[str, _Join] = {}
        self._notified: OrderedDict[str, None] = OrderedDict()
        self._started: OrderedDict[str, None] = OrderedDict()  # requests whose stage ran
        self._prefix = f"{node_id}.{secrets.token_hex(4)}"
        self._counter = itertools.count()
        self._role_cache: NodeRole | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_inflight = max_inflight
        self._admission = asyncio.Semaphore(max_inflight)
        self._queued = 0
        self._plan_event = asyncio.Event()
        self._replica_turn = itertools.count()
        self._draining = False
        self._running_here = 0  # requests started here and not yet answered
        self._outbox = Outbox(
            me=node_id,
            transport=transport,
            address_of=address_of,
            consumers=self._consumers,
            finals=self._finals,
            deliver=lambda tensor: self._accept(tensor, checked=True),
            deadline_s=deadline_s,
        )
        self._drained = asyncio.Event()
        self.served = 0
        self.retried = 0  # attempts re-sent
        self.refused = 0  # requests refused with Overloaded
        self.failed = 0  # requests that ended with an error

    @property
    def input_names(self) -> frozenset[str]:
        """The names of the model's inputs: a request gives each once and nothing else."""
        return self._input_names

    @property
    def open_requests(self) -> int:
        """Requests with a join buffer or an origin attempt waiting on this node."""
        return len(self._joins) + len(self._attempts)

    # -- origin --------------------------------------------------------------------------

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request through the cluster; the model's final outputs by the model's
        own names (``manifest.model.answer_names``: tensor names stay between parts).

        Raises ModelError for inputs that do not fit the model, PlanError when no plan is
        agreed, Overloaded when the queue is full, InferenceFailed when a stage failed,
        RequestTimeout when no attempt was answered before the deadline.
        """
        self._role()
        check_inputs(self._manifest.model.inputs, dict(inputs))
        self.check_admission()
        progress = ["never sent"]
        self._running_here += 1
        try:
            async with asyncio.timeout(self._deadline_s):
                self._queued += 1
                try:
                    await self._admission.acquire()
                finally:
                    self._queued -= 1
                try:
                    result = await self._run_attempts(inputs, progress)
                finally:
                    self._admission.release()
        except TimeoutError:
            self.failed += 1
            raise RequestTimeout(
                f"no answer within {self._deadline_s:g} s (last attempt: {progress[0]})"
            ) from None
        except EdgenodeError:
            self.failed += 1
            raise
        finally:
            self._running_here -= 1
            self._drained.set()
        self.served += 1
        return self._manifest.model.name_outputs(result)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests and wait, at most ``timeout_s``, for those started here;
        the number still unanswered when it returns."""
        self._draining = True
        try:
            async with asyncio.timeout(timeout_s):
                while self._running_here:
                    await self._drained.wait()
                    self._drained.clear()
        except TimeoutError:
            pass
        return self._running_here

    def check_admission(self) -> None:
        """Overloaded when a new request would be refused now (servers call this before
        reading a request's inputs, so a flood does not even allocate them); PeerUnavailable
        once the node is stopping."""
        if self._draining:
            raise PeerUnavailable(f"node {self._me} is stopping")
        if self._admission.locked() and self._queued >= self._max_inflight:
            self.refused += 1
            raise Overloaded(
                f"node {self._me} is busy: {self._max_inflight} requests running and "
                f"{self._queued} waiting"
            )

    async def _run_attempts(
        self, inputs: Mapping[str, np.ndarray], progress: list[str]
    ) -> dict[str, np.ndarray]:
        backoff = RETRY_BACKOFF_S
        failed_replicas: set[int] = set()
        arrays = {name: np.ascontiguousarray(value) for name, value in inputs.items()}
        arrays.update(row_slices(self._manifest.tiles, arrays))
        while True:
            stage = self._role()
            input_bytes = sum(a.nbytes for a in arrays.values())
            replica = self._pick_replica(stage.plan, failed_replicas, input_bytes)
            request = RequestId(f"{self._prefix}.{next(self._counter)}")
            attempt = _Attempt(
                future=asyncio.get_running_loop().create_future(),
                plan=stage.plan.digest,
                replica=replica,
            )
            self._attempts[request] = attempt
            try:
                progress[0] = f"plan {stage.plan.digest[:12]} replica {replica} running"
                tensors = self._tensors(request, stage.plan.digest, arrays)
                try:
                    await self._outbox.route(stage.plan, replica, tensors, producer_parts=range(0))
                except TransportError as exc:
                    outcome: dict[str, np.ndarray] | _Retry = _Retry(str(exc))
                else:
                    outcome = await attempt.future
            finally:
                del self._attempts[request]
            if not isinstance(outcome, _Retry):
                return outcome
            self.retried += 1
            progress[0] = outcome.reason
            request_log.debug(request, "%s; sending it again", outcome.reason)
            failed_replicas.add(replica)
            if len(failed_replicas) < stage.plan.replicas:
                continue  # another replica may still work: no need to wait
            failed_replicas.clear()
            await self._plan_change_or(backoff, stage.plan)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _pick_replica(self, plan: ClusterPlan, avoid: set[int], input_bytes: int = 0) -> int:
        """The replica of a request entering here (see ``pick_replica``)."""
        if plan.replicas == 1:
            return 0
        load = dict.fromkeys(range(plan.replicas), 0)
        for attempt in self._attempts.values():
            if attempt.plan == plan.digest and attempt.replica in load:
                load[attempt.replica] += 1
        send_s = input_bytes / link if (link := self._slow_link()) > 0 else 0.0
        return pick_replica(
            plan, self._me, load, avoid, next(self._replica_turn), self._part_s, send_s
        )

    async def _plan_change_or(self, seconds: float, plan: ClusterPlan) -> None:
        """Wait until the agreed plan is no longer ``plan``, at most ``seconds``."""
        if self._plan() is not plan:
            return
        event = self._plan_event
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass

    def plan_changed(self) -> None:
        """The agreed plan changed: attempts under an older plan are re-sent now."""
        event, self._plan_event = self._plan_event, asyncio.Event()
        event.set()
        plan = self._plan()
        digest = plan.digest if plan is not None else ""
        # Origins abandon attempts under other plans: their half-full joins cannot finish.
        self._joins = {r: j for r, j in self._joins.items() if j.plan == digest}
        for attempt in self._attempts.values():
            if attempt.plan != digest and not attempt.future.done():
                attempt.future.set_result(_Retry(f"plan {attempt.plan[:12]} was replaced"))

    # -- every node ----------------------------------------------------------------------

    async def run(self) -> None:
        """Take tensors from the inbox and sweep abandoned join buffers, until cancelled."""
        sweeper = asyncio.create_task(self._sweep())
        try:
            async for tensor in self._transport.inbox:
                self._accept(tensor, checked=False)
        finally:
            sweeper.cancel()
            for task in list(self._tasks):
                task.cancel()

    def _role(self) -> NodeRole:
        plan = self._plan()
        if plan is None:
            raise PlanError("the cluster has not agreed on a plan yet")
        cached = self._role_cache
        if cached is None or cached.plan is not plan:
            cached = self._role_cache = role_of(plan, self._me, self._manifest, self._consumers)
        return cached

    def _accept(self, tensor: Tensor, *, checked: bool) -> None:
        """Take a tensor from a peer, or one this node sends itself (``checked``)."""
        request = str(tensor.request_id)
        if is_control(tensor.name):
            self._on_notice(request, tensor)
            return
        attempt = self._attempts.get(request)
        if attempt is None and origin_of(request) == self._me:
            return  # a tensor of an attempt of ours that was abandoned
        if attempt is not None and tensor.name in self._finals:
            attempt.outputs[tensor.name] = tensor.array
            if set(attempt.outputs) >= self._finals and not attempt.future.done():
                attempt.future.set_result(dict(attempt.outputs))
        plan = self._plan()
        if plan is None:
            self._notify(request, tensor.plan_digest, RETRY, f"{self._me} has no agreed plan yet")
            return
        if tensor.plan_digest != plan.digest:
            if attempt is None:
                self._notify(
                    request,
                    tensor.plan_digest,
                    RETRY,
                    f"{self._me} serves plan {plan.digest[:12]}, not {tensor.plan_digest[:12]}",
                )
            return
        stage = self._role()
        join = self._joins.get(request)
        if tensor.name not in stage.needs or (join is None and request in self._started):
            return  # not ours, or a copy of an input of a stage already run: run it once
        if join is None:
            join = self._joins[request] = _Join(created_s=self._clock(), plan=plan.digest)
        join.values[tensor.name] = tensor.array
        if checked:
            join.checked.add(tensor.name)
        else:
            join.checked.discard(tensor.name)
        join.arrived.set()  # a running stage's later segment may wait for it
        if not join.started and stage.segments[0].needs <= set(join.values):
            join.started = True
            self._started[request] = None
            if len(self._started) > STARTED_WINDOW:
                self._started.popitem(last=False)
            self._spawn(self._run_stage(stage, request, join))

    def _on_notice(self, request: str, notice: Tensor) -> None:
        attempt = self._attempts.get(request)
        if attempt is None or attempt.future.done():
            return  # an attempt already answered or abandoned
        message = control_text(notice)
        if notice.name == FAIL:
            attempt.future.set_exception(InferenceFailed(message))
        else:
            attempt.future.set_result(_Retry(message))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self, request: str, plan_digest: str, kind: str, message: str) -> None:
        """Tell the request's origin, once per request, that this attempt cannot finish."""
        if request in self._notified:
            return
        self._notified[request] = None
        if len(self._notified) > NOTIFIED_WINDOW:
            self._notified.popitem(last=False)
        request_log.debug(request, "%s", message)
        notice = control(RequestId(request), kind, message, plan_digest)
        self._spawn(self._outbox.notify(notice))

    async def _run_stage(self, stage: NodeRole, request: str, join: _Join) -> None:
        """Run the node's segments in turn, each once its inputs are there, sending what
        each makes as soon as it ends (the sends overlap the next segment)."""
        plan = stage.plan.digest
        sends: list[asyncio.Task[None]] = []
        try:
            made: set[str] = set()
            for segment in stage.segments:
                await self._inputs_of(segment, join)
                tensors = await self._run_segment(segment, request, join, made)
                sends.append(  # leaving from now on: before the next segment can start
                    self._outbox.start(
                        request, stage.plan, stage.replica, tensors, producer_parts=stage.parts
                    )
                )
            for send in sends:
                await send
        except (PlanError, TransportError) as exc:
            self._notify(request, plan, RETRY, f"{self._me}: {exc}")
        # A part (user code) that raises, or a bug here, fails the request: never loses it.
        except Exception as exc:  # noqa: BLE001
            request_log.warning(request, "parts %s failed: %s", list(stage.parts), exc)
            self._notify(request, plan, FAIL, f"{self._me}: parts {list(stage.parts)}: {exc}")
        finally:
            self._joins.pop(request, None)
            for send in sends:
                send.cancel()

    async def _inputs_of(self, segment: Segment, join: _Join) -> None:
        """Wait until the tensors ``segment`` reads from outside have arrived."""
        try:
            async with asyncio.timeout(self._deadline_s):
                while not segment.needs <= set(join.values):
                    join.arrived.clear()
                    await join.arrived.wait()
        except TimeoutError:
            missing = sorted(segment.needs - set(join.values))
            raise PlanError(f"{', '.join(missing)} never arrived") from None

    async def _run_segment(
        self, segment: Segment, request: str, join: _Join, made: set[str]
    ) -> list[Tensor]:
        """Run one segment's parts; the tensors it sends. ``made`` (what earlier segments
        made here, not checked again) grows by what this one makes."""
        checked = join.checked | made
        await self._outbox.sent(request)
        values = dict(join.values)  # arrivals may add to it while a worker reads it
        result = await self._host.run_chain(
            segment.parts, values, checked=checked, inline=not self._outbox.busy
        )
        for index, seconds in zip(segment.parts, result.seconds, strict=True):
            recent = self._part_s.get(index, seconds)  # a moving average, new runs 1/5
            self._part_s[index] = recent + 0.2 * (seconds - recent)
        if self._on_stage is not None:  # once per segment run: its parts and their times
            self._on_stage(segment.parts, result.seconds)
        outputs = {**result.outputs, **row_slices(self._manifest.tiles, result.outputs)}
        join.values.update(outputs)
        made.update(outputs)
        return self._tensors(request, join.plan, {n: join.values[n] for n in segment.sends})

    def _tensors(self, request: str, plan: str, values: Mapping[str, np.ndarray]) -> list[Tensor]:
        """``values`` to send, each C-contiguous (a row slice of a batch of more than one
        is not): model inputs and finals exact (the origin answers with them), the others
        (a stage's outputs, row slices) in the cluster's wire format (handed over locally,
        they are never encoded)."""
        exact = self._finals | self._input_names
        wire = self._manifest.wire_format
        return [
            Tensor(RequestId(request), name, np.ascontiguousarray(value), plan,
                   DEFAULT_WIRE_FORMAT if name in exact else wire)
            for name, value in values.items()
        ]  # fmt: skip

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            limit = self._clock() - self._deadline_s
            stale = [r for r, j in self._joins.items() if j.created_s < limit]
            for request in stale:
                del self._joins[request]
            if stale:
                logger.info("freed the join buffers of %d abandoned requests", len(stale))
