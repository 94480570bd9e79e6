"""The parts this node owns, each run on a worker thread of its own.

Model execution blocks for milliseconds, so it never runs on the event loop: each
part gets a single worker thread (parts run concurrently with each other and with
the loop, and one part's requests run in order). Consecutive parts owned by this
node run back to back on their own threads without touching the network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgenode.backends import PartRunner, check_inputs, load_runner
from edgenode.errors import ModelError, PlanError
from edgenode.model.manifest import Manifest, PartSpec

__all__ = ["PartHost", "RunnerFactory"]

logger = logging.getLogger(__name__)

RunnerFactory = Callable[[PartSpec, Path], PartRunner]


@dataclass(slots=True)
class _Loaded:
    spec: PartSpec
    runner: PartRunner
    worker: ThreadPoolExecutor


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
    ) -> None:
        self._manifest = manifest
        self._directory = directory
        self._factory: RunnerFactory = factory or (
            lambda spec, d: load_runner(spec, d, threads=threads)
        )
        self._loaded: dict[int, _Loaded] = {}
        self._lock = asyncio.Lock()
        # Parts being loaded: a request that reaches a part first waits for it (a new plan
        # is agreed cluster-wide before every node has loaded its new parts).
        self._loading: dict[int, asyncio.Event] = {}

    @property
    def loaded(self) -> tuple[int, ...]:
        """Indices of the parts ready to run."""
        return tuple(sorted(self._loaded))

    async def load(self, indices: Iterable[int]) -> None:
        """Make exactly ``indices`` loaded: load what is missing, then drop the rest."""
        wanted = sorted(set(indices))
        for i in wanted:
            if not 0 <= i < len(self._manifest.parts):
                raise ModelError(f"part {i} is not in the manifest")
        for i in wanted:
            if i not in self._loaded:
                self._loading.setdefault(i, asyncio.Event())
        async with self._lock:
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
                self._loaded[i] = _Loaded(spec=spec, runner=runner, worker=worker)
                self._loading.pop(i, asyncio.Event()).set()
                logger.info("loaded part %d (%s)", i, spec.file)
            for i in [i for i in self._loaded if i not in wanted]:
                await asyncio.to_thread(self._loaded.pop(i).worker.shutdown, wait=True)
                logger.info("unloaded part %d", i)

    async def run(self, index: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run part ``index`` on its worker thread; ModelError on bad inputs."""
        loaded = self._loaded.get(index)
        if loaded is None and index in self._loading:
            await self._loading[index].wait()
            loaded = self._loaded.get(index)
        if loaded is None:
            raise PlanError(f"part {index} is not loaded on this node")
        feed = {t.name: inputs[t.name] for t in loaded.spec.inputs if t.name in inputs}
        check_inputs(loaded.spec.inputs, feed)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(loaded.worker, loaded.runner, feed)

    async def run_chain(
        self, indices: Iterable[int], inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run consecutive parts locally; every tensor produced is in the result."""
        values = dict(inputs)
        produced: dict[str, np.ndarray] = {}
        for i in indices:
            out = await self.run(i, values)
            values.update(out)
            produced.update(out)
        return produced

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
