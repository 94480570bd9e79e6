"""Where a node's tensors go under a plan, and which of a request's are still leaving.

The send side of the request path (``requests.Router``): each tensor goes once to every
node of the request's replica that reads it, and final outputs to the request's origin;
tensors for this node itself are handed back to the router without the network. The
outbox counts each request's sends in flight, so that a part waits for its own request's
sends (a stripe's neighbour waits for those rows) and no part takes the event loop while
any send is leaving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgenode.errors import EdgenodeError, TransportError
from edgenode.logfields import RequestLog
from edgenode.planning import ClusterPlan
from edgenode.runtime.stages import Consumers, recipients
from edgenode.transport import Tensor, Transport

__all__ = ["Outbox", "origin_of"]

request_log = RequestLog(logging.getLogger(__name__))


def origin_of(request: str) -> str:
    """The node a request entered at: request ids start with its node id."""
    return request.split(".", 1)[0]


@dataclass(slots=True)
class _Leaving:
    count: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Outbox:
    """Sends a node's tensors to the nodes that need them; ``deliver`` takes those for
    this node itself."""

    def __init__(
        self,
        *,
        me: str,
        transport: Transport,
        address_of: Callable[[str], str | None],
        consumers: Consumers,
        finals: Iterable[str],
        deliver: Callable[[Tensor], None],
        deadline_s: float,
    ) -> None:
        self._me = me
        self._transport = transport
        self._address_of = address_of
        self._consumers = consumers
        self._finals = frozenset(finals)
        self._deliver = deliver
        self._deadline_s = deadline_s
        self._leaving: dict[str, _Leaving] = {}

    @property
    def busy(self) -> bool:
        """Whether any send from this node is in flight."""
        return bool(self._leaving)

    def _hold(self, request: str, count: int) -> None:
        self._leaving.setdefault(request, _Leaving()).count += count

    def _release(self, request: str, count: int) -> None:
        leaving = self._leaving[request]
        leaving.count -= count
        if not leaving.count:
            del self._leaving[request]
            leaving.done.set()

    async def sent(self, request: str) -> None:
        """Wait until ``request``'s sends from here have left (TransportError at the
        deadline)."""
        leaving = self._leaving.get(request)
        if leaving is not None:
            try:
                async with asyncio.timeout(self._deadline_s):
                    await leaving.done.wait()
            except TimeoutError:
                raise TransportError("its tensors for other nodes never left") from None

    def start(
        self, request: str, plan: ClusterPlan, replica: int, tensors: list[Tensor], *,
        producer_parts: range,
    ) -> asyncio.Task[None]:  # fmt: skip
        """``route`` as a task, counted as leaving from now on (before it first runs)."""
        task = asyncio.create_task(
            self.route(plan, replica, tensors, producer_parts=producer_parts)
        )
        self._hold(request, 1)
        task.add_done_callback(lambda _task: self._release(request, 1))
        return task

    async def route(
        self,
        plan: ClusterPlan,
        replica: int,
        tensors: list[Tensor],
        *,
        producer_parts: range,
    ) -> None:
        """Send each tensor (all of one request) once to every node of ``replica`` that
        needs it, finals to the origin; TransportError when a peer cannot be reached."""
        by_node: dict[str, list[Tensor]] = {}
        for tensor in tensors:
            for node in recipients(
                plan,
                replica,
                tensor.name,
                consumers=self._consumers,
                finals=self._finals,
                origin=origin_of(str(tensor.request_id)),
                producer_parts=producer_parts,
            ):
                by_node.setdefault(node, []).append(tensor)
        addresses = {n: self._address_of(n) for n in by_node if n != self._me}
        missing = sorted(n for n, a in addresses.items() if a is None)
        if missing:  # before sending anything: the attempt is re-sent as a whole
            raise TransportError(f"no address for node {missing[0]}")
        sends = []
        for node, batch in by_node.items():
            address = addresses.get(node)
            if address is None:  # this node itself
                for tensor in batch:
                    self._deliver(tensor)
                continue
            sends.append(self._transport.peer(address).send(batch))
        if not sends:
            return
        request = str(tensors[0].request_id)
        self._hold(request, len(sends))
        try:
            results = await asyncio.gather(*sends, return_exceptions=True)
        finally:
            self._release(request, len(sends))
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, EdgenodeError):
                    raise result
                raise TransportError(f"sending failed: {result!r}") from result

    async def notify(self, notice: Tensor) -> None:
        """Hand a control notice to its request's origin (this node: ``deliver``); a
        notice that cannot reach it is dropped (the origin's deadline ends the attempt)."""
        origin = origin_of(str(notice.request_id))
        if origin == self._me:
            self._deliver(notice)
            return
        address = self._address_of(origin)
        if address is None:
            request_log.debug(
                notice.request_id, "origin %s is not a member; notice dropped", origin
            )
            return
        try:
            await self._transport.peer(address).send([notice])
        except EdgenodeError as exc:
            request_log.debug(notice.request_id, "origin unreachable: %s", exc)
