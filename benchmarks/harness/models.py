"""Model splits made once per work directory, and their parts run in this process."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness import ROOT
from harness.report import say

# -- splits, local runners, offline plans -----------------------------------------------------


class Splits:
    """Model splits in a work directory, made once and reused across sections."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seconds: dict[str, float] = {}
        self._models: dict[str, Any] = {}

    def model(self, name: str) -> Any:
        if name not in self._models:
            from edgenode.model.loading import load_model

            self._models[name] = load_model(name)
        return self._models[name]

    def get(
        self,
        model: str,
        parts: int | None,
        *,
        method: str = "balanced",
        fmt: str = "keras",
        profiled: bool = False,
    ) -> Path:
        """A split of ``model``; ``profiled``: balanced on this machine's profile (one
        TensorFlow thread on core 0, as the pipelining section's nodes run) instead of
        FLOPs."""
        from edgenode.model.profile import load_profile
        from edgenode.model.split import split_model

        slug = re.sub(r"[^a-z0-9]+", "", model.lower())
        shape = "per-op" if method == "per-op" else f"{parts}-{method}"
        out = self.root / f"{slug}-{shape}{'-profiled' if profiled else ''}-{fmt}"
        if (out / "manifest.json").is_file():
            return out
        op_seconds = load_profile(self.profile(model)).op_seconds if profiled else None
        say(f"splitting {model}: {shape}{', on the profile' if profiled else ''}, {fmt}")
        started = time.monotonic()
        split_model(
            self.model(model), out, parts=parts, method=method, fmt=fmt, op_seconds=op_seconds
        )
        self.seconds[out.name] = time.monotonic() - started
        return out

    def profile(self, model: str) -> Path:
        """`edgenode profile` of ``model``, pinned to core 0 with one TensorFlow thread."""
        slug = re.sub(r"[^a-z0-9]+", "", model.lower())
        out = self.root / f"{slug}-profile.json"
        if not out.is_file():
            say(f"profiling {model} (taskset -c 0, --threads 1)")
            started = time.monotonic()
            command = ["taskset", "-c", "0", sys.executable, "-m", "edgenode.cli", "--quiet"]
            command += ["profile", "--model", model, "--threads", "1", "--out", str(out)]
            subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            self.seconds[out.name] = time.monotonic() - started
        return out


def manifest_of(directory: Path) -> Any:
    from edgenode.model.manifest import load_manifest

    return load_manifest(directory)


def sample_inputs(manifest: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random batch-1 model inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in manifest.model.inputs:
        shape = tuple(d if d is not None else 1 for d in t.shape)
        out[t.name] = rng.uniform(-1.0, 1.0, size=shape).astype(t.dtype)
    return out


class PartRunners:
    """Every part of a split, loaded in this process with the runner a node uses."""

    def __init__(self, directory: Path) -> None:
        from edgenode.backends import load_runner

        self.directory = directory
        self.manifest = manifest_of(directory)
        # LiteRT: one thread, as a node's default [model] threads; Keras: TensorFlow's default.
        self.runners = [load_runner(p, directory, threads=1) for p in self.manifest.parts]
        self.inputs = sample_inputs(self.manifest)
        self.values = dict(self.inputs)
        for part, runner in zip(self.manifest.parts, self.runners, strict=True):
            self.values.update(runner(self.feed(part.index)))

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return {t.name: self.values[t.name] for t in self.manifest.parts[index].inputs}

    def whole(self) -> Callable[[], Any]:
        """One call of the whole model (a 1-part split)."""
        assert len(self.runners) == 1
        runner, feed = self.runners[0], self.feed(0)
        return lambda: runner(feed)

    def time_parts(self, runs: int, idle_s: float = 0.0) -> list[list[float]]:
        """Seconds per run of each part, parts interleaved within each run; with
        ``idle_s``, this process sleeps that long before each part (a node serving one
        request at a time idles while the other stages run)."""
        feeds = [self.feed(i) for i in range(len(self.runners))]
        for runner, feed in zip(self.runners, feeds, strict=True):
            for _ in range(3):
                runner(feed)
        times: list[list[float]] = [[] for _ in self.runners]
        for _ in range(runs):
            for i, (runner, feed) in enumerate(zip(self.runners, feeds, strict=True)):
                if idle_s:
                    time.sleep(idle_s)  # the idling itself is what is measured
                start = time.perf_counter()
                runner(feed)
                times[i].append(time.perf_counter() - start)
        return times
