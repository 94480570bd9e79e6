"""The request path: origin, join buffers, running owned parts, forwarding outputs.

A request enters at any node (its origin). The origin sends each model input to the
owners of the parts that read it. A node that owns parts [a, b) waits until every
tensor its range reads from outside has arrived for a request (join buffer), runs
its parts back to back on their worker threads, and sends each output straight to
the owners of the parts that read it and every final output to the origin.
Intermediate tensors never go back through the origin or the client. Tensors for
this node itself are handed over without the network.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenode.backends import check_inputs
from edgenode.errors import EdgenodeError, ModelError, PeerUnavailable, PlanError
from edgenode.model.manifest import Manifest
from edgenode.planning import ClusterPlan
from edgenode.runtime.parts import PartHost
from edgenode.transport import RequestId, Tensor, Transport

__all__ = ["RequestTimeout", "Router"]

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0


class RequestTimeout(EdgenodeError):
    """A request was not answered before its deadline."""


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[dict[str, np.ndarray]]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(slots=True)
class _Join:
    created_s: float
    values: dict[str, np.ndarray] = field(default_factory=dict)
    started: bool = False


@dataclass(frozen=True, slots=True)
class _Stage:
    """What this node does under one plan."""

    plan: ClusterPlan
    parts: range
    needs: frozenset[str]  # tensors the range reads from outside it
    sends: tuple[str, ...]  # tensors the range produces for other parts or the origin


class Router:
    """Runs this node's side of every request; ``run()`` consumes the inbox until cancelled."""

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
        on_stage: Callable[[int, float], None] | None = None,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._me = node_id
        self._manifest = manifest
        self._host = host
        self._transport = transport
        self._plan = plan
        self._address_of = address_of
        self._deadline_s = deadline_s
        self._on_stage = on_stage
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._consumers: dict[str, list[int]] = {}
        for part in manifest.parts:
            for t in part.inputs:
                self._consumers.setdefault(t.name, []).append(part.index)
        self._finals = frozenset(manifest.model.outputs)
        self._pending: dict[str, _Pending] = {}
        self._joins: dict[str, _Join] = {}
        self._prefix = f"{node_id}.{secrets.token_hex(4)}"
        self._counter = itertools.count()
        self._stage_cache: _Stage | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0

    @property
    def open_requests(self) -> int:
        """Requests with a join buffer or an origin waiting on this node."""
        return len(self._joins) + len(self._pending)

    # -- origin --------------------------------------------------------------------------

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request through the cluster; the model's final outputs by name."""
        stage = self._stage()
        check_inputs(self._manifest.model.inputs, dict(inputs))
        request = RequestId(f"{self._prefix}.{next(self._counter)}")
        loop = asyncio.get_running_loop()
        pending = _Pending(future=loop.create_future())
        self._pending[request] = pending
        try:
            tensors = [
                Tensor(request, name, np.ascontiguousarray(value), stage.plan.digest)
                for name, value in inputs.items()
            ]
            await self._route(stage.plan, tensors, producer_parts=range(0))
            async with asyncio.timeout(self._deadline_s):
                result = await pending.future
        except TimeoutError:
            raise RequestTimeout(
                f"no answer within {self._deadline_s:g} s (plan {stage.plan.digest[:12]})"
            ) from None
        finally:
            self._pending.pop(request, None)
        self.served += 1
        return result

    # -- every node ----------------------------------------------------------------------

    async def run(self) -> None:
        """Take tensors from the inbox and sweep abandoned join buffers, until cancelled."""
        sweeper = asyncio.create_task(self._sweep())
        try:
            async for tensor in self._transport.inbox:
                self._accept(tensor)
        finally:
            sweeper.cancel()
            for task in list(self._tasks):
                task.cancel()

    def _stage(self) -> _Stage:
        plan = self._plan()
        if plan is None:
            raise PlanError("the cluster has not agreed on a plan yet")
        cached = self._stage_cache
        if cached is not None and cached.plan is plan:
            return cached
        parts = plan.parts_of(self._me)
        produced = {o.name for i in parts for o in self._manifest.parts[i].outputs}
        needs = {
            t.name for i in parts for t in self._manifest.parts[i].inputs if t.name not in produced
        }
        sends = tuple(
            o.name
            for i in parts
            for o in self._manifest.parts[i].outputs
            if o.final or any(c not in parts for c in self._consumers.get(o.name, ()))
        )
        self._stage_cache = _Stage(plan=plan, parts=parts, needs=frozenset(needs), sends=sends)
        return self._stage_cache

    def _origin_of(self, request: str) -> str:
        return request.split(".", 1)[0]

    def _accept(self, tensor: Tensor) -> None:
        request = str(tensor.request_id)
        pending = self._pending.get(request)
        if pending is not None and tensor.name in self._finals:
            pending.outputs[tensor.name] = tensor.array
            if set(pending.outputs) >= self._finals and not pending.future.done():
                pending.future.set_result(dict(pending.outputs))
        try:
            stage = self._stage()
        except PlanError:
            logger.debug("tensor %s of %s before any agreed plan: dropped", tensor.name, request)
            return
        if tensor.name not in stage.needs:
            return
        if tensor.plan_digest != stage.plan.digest:
            logger.info(
                "request %s: tensor %s under plan %s, serving %s: dropped",
                request, tensor.name, tensor.plan_digest[:12], stage.plan.digest[:12],
            )  # fmt: skip
            return
        join = self._joins.setdefault(request, _Join(created_s=self._clock()))
        join.values[tensor.name] = tensor.array
        if not join.started and stage.needs <= set(join.values):
            join.started = True
            task = asyncio.create_task(self._run_stage(stage, request, join))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_stage(self, stage: _Stage, request: str, join: _Join) -> None:
        self._joins.pop(request, None)
        values: dict[str, Any] = dict(join.values)
        try:
            for index in stage.parts:
                started = time.perf_counter()
                values.update(await self._host.run(index, values))
                if self._on_stage is not None:
                    self._on_stage(index, time.perf_counter() - started)
            tensors = [
                Tensor(RequestId(request), name, values[name], stage.plan.digest)
                for name in stage.sends
            ]
            await self._route(stage.plan, tensors, producer_parts=stage.parts, request=request)
        except EdgenodeError as exc:
            logger.warning("request %s: parts %s failed: %s", request, list(stage.parts), exc)

    async def _route(
        self,
        plan: ClusterPlan,
        tensors: list[Tensor],
        *,
        producer_parts: range,
        request: str | None = None,
    ) -> None:
        """Send each tensor once to every node that needs it (and finals to the origin)."""
        by_node: dict[str, list[Tensor]] = {}
        for tensor in tensors:
            targets = {
                plan.owner(c)
                for c in self._consumers.get(tensor.name, ())
                if c not in producer_parts
            }
            if tensor.name in self._finals:
                targets.add(self._origin_of(str(tensor.request_id)))
            for node in sorted(targets):
                by_node.setdefault(node, []).append(tensor)
        sends = []
        for node, batch in by_node.items():
            if node == self._me:
                for tensor in batch:
                    self._accept(tensor)
                continue
            address = self._address_of(node)
            if address is None:
                raise PeerUnavailable(f"no address for node {node}")
            sends.append(self._transport.peer(address).send(batch))
        results = await asyncio.gather(*sends, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, EdgenodeError):
                    raise result
                raise ModelError(f"sending failed: {result}") from result

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            limit = self._clock() - self._deadline_s
            for request in [r for r, j in self._joins.items() if j.created_s < limit]:
                logger.info("request %s abandoned: freeing its join buffer", request)
                del self._joins[request]
