"""A byte-bounded queue of received tensors: when it is full, receivers stop reading streams."""

from __future__ import annotations

import asyncio
from collections import deque

from edgenode.errors import PeerUnavailable
from edgenode.transport.codec import Tensor

__all__ = ["TensorInbox"]


class TensorInbox:
    """Whole tensors waiting for the consumer, at most ``max_bytes`` of them (or one tensor)."""

    def __init__(self, *, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: deque[Tensor] = deque()
        self._bytes = 0
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.high_water_bytes = 0  # the most bytes ever queued at once

    @property
    def queued_tensors(self) -> int:
        """Tensors waiting."""
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the tensors waiting."""
        return self._bytes

    @property
    def held_tensors(self) -> int:
        """Whole tensors whose put waits for room."""
        return sum(not future.done() for future in self._putters)

    @property
    def closed(self) -> bool:
        """True once the node stopped receiving."""
        return self._closed

    async def put(self, tensor: Tensor) -> None:
        """Queue a tensor, waiting while that would exceed the byte bound."""
        size = tensor.nbytes
        while self._items and self._bytes + size > self._max_bytes and not self._closed:
            await self._wait(self._putters)
        if self._closed:
            raise PeerUnavailable("the receiving node is shutting down")
        self._append(tensor)

    def put_over_budget(self, tensor: Tensor) -> bool:
        """Queue a tensor now, even past the byte bound; False once closed (not queued).

        For a whole tensor whose stream is being torn down while it waits for room: its
        sender's send completed, so dropping it would lose a request that did nothing wrong.
        """
        if self._closed:
            return False
        self._append(tensor)
        return True

    def _append(self, tensor: Tensor) -> None:
        self._items.append(tensor)
        self._bytes += tensor.nbytes
        self.high_water_bytes = max(self.high_water_bytes, self._bytes)
        _wake(self._getters)

    async def get(self) -> Tensor:
        """The oldest tensor, waiting for one; PeerUnavailable once closed and empty."""
        while not self._items:
            if self._closed:
                raise PeerUnavailable("the inbox is closed")
            await self._wait(self._getters)
        return self._pop()

    def get_nowait(self) -> Tensor | None:
        """The oldest tensor, or None when none is waiting."""
        return self._pop() if self._items else None

    def close(self) -> None:
        """Stop accepting tensors; waiting consumers drain what is left, then stop."""
        self._closed = True
        for waiters in (self._getters, self._putters):
            while waiters:
                _wake(waiters)

    def __aiter__(self) -> TensorInbox:
        return self

    async def __anext__(self) -> Tensor:
        try:
            return await self.get()
        except PeerUnavailable:
            raise StopAsyncIteration from None

    def _pop(self) -> Tensor:
        tensor = self._items.popleft()
        self._bytes -= tensor.nbytes
        while self._putters:  # every putter re-checks the room
            _wake(self._putters)
        return tensor

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        future = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        finally:
            if future in waiters:
                waiters.remove(future)


def _wake(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the oldest waiter still waiting."""
    while waiters:
        future = waiters.popleft()
        if not future.done():
            future.set_result(None)
            return
