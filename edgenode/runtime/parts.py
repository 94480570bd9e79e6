"""The parts this node owns, run on worker threads, or on the event loop when idle.

Model execution blocks for milliseconds, so each part gets a worker thread. A
stage's consecutive parts run back to back on the worker of its first part, in one
hand-off: every hand-off between the loop and a worker costs two thread wake-ups,
0.2-0.6 ms on an idle vCPU, which was a fifth of a hop
(benchmarks/results/inference.md). A node serving requests one at a time does not
need the worker at all: when nothing else runs, the node has been idle for at least
half as long as the chain last took, and that was at most ``inline_max_s``, the
chain runs on the event loop itself (5 LiteRT nodes: 1-2 ms less per request, A/B
interleaved). Under load the gaps between chains are short, so chains go to the
workers and the loop keeps receiving and sending beside them. A lock per part keeps
each runner to one call at a time (a LiteRT interpreter is not re-entrant) when two
chains share a part.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgenode.backends import PartRunner, check_inputs, load_runner
from edgenode.errors import ModelError, PlanError
from edgenode.model.manifest import Manifest, PartSpec, TensorSpec
from edgenode.planning import MEMORY_MODELS, parts_memory_bytes

__all__ = ["ChainResult", "PartHost", "RunnerFactory"]

logger = logging.getLogger(__name__)

RunnerFactory = Callable[[PartSpec, Path], PartRunner]

INLINE_MAX_S = 0.02  # the longest a chain may hold the event loop (control calls wait)


@dataclass(slots=True)
class _Loaded:
    spec: PartSpec
    runner: PartRunner
    worker: ThreadPoolExecutor
    lock: threading.Lock
    last_s: float = math.inf  # the last run's seconds; unknown until one ran

    def call(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the part on the calling thread (a worker); its inputs were checked on entry."""
        feed = {t.name: inputs[t.name] for t in self.spec.inputs if t.name in inputs}
        with self.lock:
            return self.runner(feed)


def _check_entry(
    parts: list[_Loaded], inputs: Mapping[str, np.ndarray], checked: Collection[str]
) -> None:
    """ModelError unless the tensors the chain reads from outside itself fit their specs.

    The one check of a tensor's name, dtype and shape on a node, made where it enters the
    chain; tensors the chain's own parts produce, and those in ``checked`` (already checked
    where they entered the node), are not checked again.
    """
    produced: set[str] = set()
    specs: dict[str, TensorSpec] = {}
    for part in parts:
        for t in part.spec.inputs:
            if t.name not in produced and t.name not in checked:
                specs.setdefault(t.name, t)
        produced.update(o.name for o in part.spec.outputs)
    check_inputs(tuple(specs.values()), {n: inputs[n] for n in specs if n in inputs})


@dataclass(frozen=True, slots=True)
class ChainResult:
    """What ``PartHost.run_chain`` produced."""

    outputs: dict[str, np.ndarray]  # every tensor the parts produced, by name
    seconds: tuple[float, ...]  # each part's run time, measured on the worker


def _run_parts(parts: list[_Loaded], inputs: Mapping[str, np.ndarray]) -> ChainResult:
    values = dict(inputs)
    produced: dict[str, np.ndarray] = {}
    seconds = []
    for part in parts:
        started = time.perf_counter()
        out = part.call(values)
        part.last_s = time.perf_counter() - started
        seconds.append(part.last_s)
        values.update(out)
        produced.update(out)
    return ChainResult(produced, tuple(seconds))


def _zeros(spec: PartSpec) -> dict[str, np.ndarray]:
    """A batch-1 input of zeros for a warm-up call."""
    return {
        t.name: np.zeros(tuple(d if d is not None else 1 for d in t.shape), dtype=t.dtype)
        for t in spec.inputs
    }


class PartHost:
    """Loads, runs and unloads manifest parts; an async context manager."""

    def __init__(
        self,
        manifest: Manifest,
        directory: Path,
        *,
        threads: int = 1,
        factory: RunnerFactory | None = None,
        inline_max_s: float = INLINE_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        memory_bytes: int = 0,
    ) -> None:
        self._manifest = manifest
        # The room the node's memory budget leaves its parts (budget less baseline; 0: no
        # limit), against what parts need by the planner's memory model: a new plan's parts
        # load after the old ones are freed when both would not fit in it, and beside them
        # (the node keeps serving) when they would.
        self._memory_bytes = memory_bytes
        self._graph = manifest.cost_graph()
        self._memory = MEMORY_MODELS.get(manifest.backend)  # this node's backend
        self._directory = directory
        self._factory: RunnerFactory = factory or (
            lambda spec, d: load_runner(spec, d, threads=threads)
        )
        self._loaded: dict[int, _Loaded] = {}
        self._inline_max_s = inline_max_s
        self._running = 0  # chains on workers now
        self._clock = clock
        self._idle_since = clock()
        self.inlined = 0  # chains run on the event loop
        self.handed_off = 0  # chains run on a worker
        self._lock = asyncio.Lock()
        # Parts being loaded: a request that reaches a part first waits for it (a new plan
        # is agreed cluster-wide before every node has loaded its new parts).
        self._loading: dict[int, asyncio.Event] = {}

    @property
    def loaded(self) -> tuple[int, ...]:
        """Indices of the parts ready to run."""
        return tuple(sorted(self._loaded))

    def needs_bytes(self, indices: Iterable[int]) -> int:
        """What these parts need loaded together beyond the node's baseline, by the
        planner's memory model (``planning.parts_memory_bytes``)."""
        return parts_memory_bytes(self._graph, indices, self._memory)

    async def load(self, indices: Iterable[int]) -> None:
        """Make exactly ``indices`` loaded: load what is missing, then drop the rest; drop
        the rest first when both together would exceed the memory budget."""
        wanted = sorted(set(indices))
        for i in wanted:
            if not 0 <= i < len(self._manifest.parts):
                raise ModelError(f"part {i} is not in the manifest")
        for i in wanted:
            if i not in self._loaded:
                self._loading.setdefault(i, asyncio.Event())
        async with self._lock:
            together = self.needs_bytes([*self._loaded, *wanted])
            if self._memory_bytes and together > self._memory_bytes:
                old = sorted(i for i in self._loaded if i not in wanted)
                if old:
                    logger.info(
                        "freeing parts %s before loading parts %s: together they would need "
                        "%d bytes, the memory budget leaves them %d",
                        old, [i for i in wanted if i not in self._loaded], together,
                        self._memory_bytes,
                    )  # fmt: skip
                    await self._unload(old)
            for i in wanted:
                if i in self._loaded:
                    continue
                spec = self._manifest.parts[i]
                worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"part-{i}")
                loop = asyncio.get_running_loop()
                try:
                    runner = await loop.run_in_executor(
                        worker, self._factory, spec, self._directory
                    )
                    # The first call traces the graph (~0.2 s): pay it now, not on a request.
                    await loop.run_in_executor(worker, runner, _zeros(spec))
                except BaseException:  # also on cancellation: never leak the worker thread
                    await asyncio.to_thread(worker.shutdown, wait=True)
                    self._loading.pop(i, asyncio.Event()).set()
                    raise
                self._loaded[i] = _Loaded(spec, runner, worker, threading.Lock())
                self._loading.pop(i, asyncio.Event()).set()
                logger.debug("loaded part %d (%s)", i, spec.file)
            await self._unload([i for i in self._loaded if i not in wanted])

    async def _unload(self, indices: Iterable[int]) -> None:
        for i in indices:
            await asyncio.to_thread(self._loaded.pop(i).worker.shutdown, wait=True)
            logger.debug("unloaded part %d", i)

    async def run(self, index: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run part ``index`` on its worker thread; ModelError on bad inputs."""
        loaded = await self._ready(index)
        _check_entry([loaded], inputs, ())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(loaded.worker, loaded.call, inputs)

    async def run_chain(
        self,
        indices: Iterable[int],
        inputs: Mapping[str, np.ndarray],
        *,
        checked: Collection[str] = (),
        inline: bool = True,
    ) -> ChainResult:
        """Run consecutive parts back to back on the first one's worker, in one hand-off,
        or on the loop when the node is idle and ``inline`` (see the module's doc; False
        while the loop has tensors to send: a stripe's rows must leave before its
        neighbour computes); PlanError when one is not loaded, ModelError on bad inputs
        (except those named in ``checked``)."""
        parts = [await self._ready(i) for i in indices]
        if not parts:
            return ChainResult({}, ())
        _check_entry(parts, inputs, checked)
        if inline and self._may_inline(parts):
            self.inlined += 1
            try:
                return _run_parts(parts, inputs)
            finally:
                self._idle_since = self._clock()
        loop = asyncio.get_running_loop()
        self.handed_off += 1
        self._running += 1
        try:
            return await loop.run_in_executor(parts[0].worker, _run_parts, parts, inputs)
        finally:
            self._running -= 1
            if not self._running:
                self._idle_since = self._clock()

    def _may_inline(self, parts: list[_Loaded]) -> bool:
        if self._running:
            return False
        expected = sum(p.last_s for p in parts)
        idle = self._clock() - self._idle_since
        return expected <= self._inline_max_s and idle >= expected / 2

    async def _ready(self, index: int) -> _Loaded:
        loaded = self._loaded.get(index)
        if loaded is None and index in self._loading:
            await self._loading[index].wait()
            loaded = self._loaded.get(index)
        if loaded is None:
            raise PlanError(f"part {index} is not loaded on this node")
        return loaded

    async def aclose(self) -> None:
        """Stop every worker thread (waiting for the part running now)."""
        async with self._lock:
            for loaded in self._loaded.values():
                await asyncio.to_thread(loaded.worker.shutdown, wait=True)
            self._loaded.clear()

    async def __aenter__(self) -> PartHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
