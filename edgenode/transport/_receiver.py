"""The receiving half of a node: streams of frames -> codec -> one bounded inbox."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable

from edgenode.transport._api import StreamTotals, TransportConfig, TransportStats
from edgenode.transport._inbox import TensorInbox
from edgenode.transport.codec import FrameDecoder, Tensor

__all__ = ["Receiver"]

logger = logging.getLogger(__name__)


class Receiver:
    """Decodes every incoming stream of a node into one inbox and keeps the gauges."""

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self.inbox = TensorInbox(max_bytes=config.max_buffered_bytes)
        self._decoders: set[FrameDecoder] = set()

    async def receive(self, frames: AsyncIterable[bytes]) -> StreamTotals:
        """Decode one stream until it ends; raise the domain error of its first bad frame.

        While the inbox is full this stops reading, which stops the sender (flow control).
        A stream that fails or is cancelled frees its partial tensor before this returns.
        """
        decoder = FrameDecoder(max_tensor_bytes=self._config.max_tensor_bytes)
        self._decoders.add(decoder)
        try:
            async for frame in frames:
                await self._deliver(decoder.feed(frame))
            decoder.finish()
        finally:
            decoder.discard()
            self._decoders.discard(decoder)
        logger.debug("stream ended: %d tensors, %d bytes", decoder.tensors, decoder.bytes)
        return StreamTotals(tensors=decoder.tensors, bytes=decoder.bytes)

    async def _deliver(self, tensors: list[Tensor]) -> None:
        """Queue whole tensors in order; if the stream is cancelled while one waits for room
        (its sender cancelled a later send, or went away), queue it and the rest anyway: each
        is whole and checked, and its send completed."""
        for i, tensor in enumerate(tensors):
            try:
                await self.inbox.put(tensor)
            except asyncio.CancelledError:
                for whole in tensors[i:]:
                    self.inbox.put_over_budget(whole)
                raise

    def stats(self) -> TransportStats:
        """Open streams, partial tensors and queued tensors, with their bytes."""
        pending = [d.pending_bytes for d in self._decoders if d.pending_bytes]
        return TransportStats(
            streams=len(self._decoders),
            pending_tensors=len(pending),
            pending_bytes=sum(pending),
            queued_tensors=self.inbox.queued_tensors,
            queued_bytes=self.inbox.queued_bytes,
            held_tensors=self.inbox.held_tensors,
        )

    def close(self) -> None:
        """Stop accepting tensors (streams still open fail with PeerUnavailable)."""
        self.inbox.close()
