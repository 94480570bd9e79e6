"""Measured latency of every operation on this device, saved for the planner.

Each op runs alone as a one-op part under ``tf.function`` at batch 1 on fixed random
inputs; the median of several timed runs after warm-up is its raw latency. A call
costs a fixed overhead (measured on an identity function) that a part pays once,
not once per op, so the overhead is subtracted.

Ops timed alone are a poor guide to ops run together: on MobileNetV3Large the 209 ops
alone sum to 4-5x the whole model, and not evenly (early, wide layers are overstated
most). So the model is also cut into about ``segments`` consecutive parts of similar
alone-time, each part is timed as the node would run it, and the ops of a segment
share its measured net time in proportion to their alone-times. Last, the times are
scaled to add up to the whole model's measured time: the planner's predictions then
sum to what one device really takes, and a cut balanced on them is balanced on what
parts really cost.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenode.errors import ModelError
from edgenode.model.graph import LayerGraph, TensorInfo
from edgenode.model.slicing import build_part

__all__ = [
    "PROFILE_FORMAT",
    "Profile",
    "Segment",
    "calibrate",
    "load_profile",
    "profile_graph",
    "segment_ranges",
    "time_model",
    "time_whole_model",
]

logger = logging.getLogger(__name__)

PROFILE_FORMAT = "edgenode-profile/1"
DEFAULT_RUNS = 20
DEFAULT_SEGMENTS = 16
WARMUP_RUNS = 3


@dataclass(frozen=True, slots=True)
class Segment:
    """Ops ``[start, stop)`` timed together as one part (seconds, call overhead included)."""

    start: int
    stop: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Per-op latency (seconds) of one model on one device."""

    model_sha256: str
    device: dict[str, Any]
    op_seconds: dict[str, float]  # net of call overhead, calibrated on segments and whole
    raw_seconds: dict[str, float]  # each op timed alone
    call_overhead_s: float
    whole_model_s: float
    runs: int
    segments: tuple[Segment, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "format": PROFILE_FORMAT,
            "model_sha256": self.model_sha256,
            "device": self.device,
            "runs": self.runs,
            "whole_model_s": self.whole_model_s,
            "call_overhead_s": self.call_overhead_s,
            "segments": [
                {"start": g.start, "stop": g.stop, "seconds": g.seconds} for g in self.segments
            ],
            "ops": [
                {"name": k, "seconds": v, "raw_seconds": self.raw_seconds.get(k, v)}
                for k, v in self.op_seconds.items()
            ],
        }

    def save(self, path: Path) -> None:
        """Write the profile as JSON."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def load_profile(path: Path) -> Profile:
    """Read a profile written by ``edgenode profile``."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != PROFILE_FORMAT:
            raise ModelError(f"{path}: not an {PROFILE_FORMAT} file")
        return Profile(
            model_sha256=str(data["model_sha256"]),
            device=dict(data.get("device", {})),
            op_seconds={str(o["name"]): float(o["seconds"]) for o in data["ops"]},
            raw_seconds={
                str(o["name"]): float(o.get("raw_seconds", o["seconds"])) for o in data["ops"]
            },
            call_overhead_s=float(data.get("call_overhead_s", 0.0)),
            whole_model_s=float(data["whole_model_s"]),
            runs=int(data.get("runs", 0)),
            segments=tuple(
                Segment(int(g["start"]), int(g["stop"]), float(g["seconds"]))
                for g in data.get("segments", ())
            ),
        )
    except OSError as exc:
        raise ModelError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: malformed profile ({exc})") from exc


def _sample(spec: TensorInfo, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(d if d is not None else 1 for d in spec.shape)
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return rng.integers(0, 2, size=shape).astype(spec.dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(spec.dtype)


def _median_seconds(fn: Callable[[], Any], runs: int) -> float:
    return _chained_medians([fn], runs)[0]


def _chained_medians(calls: Sequence[Callable[[], Any]], runs: int) -> list[float]:
    """Median seconds of each call when every run calls them all in order. Timed in a
    chain, each call finds the caches as a whole-model run leaves them; timed alone in a
    loop, a part keeps its weights cached and looks cheaper than it is (measured here:
    the weight-heavy second half of MobileNetV3Large by ~25%)."""
    for _ in range(WARMUP_RUNS):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, out in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def segment_ranges(weights: Sequence[float], count: int) -> list[tuple[int, int]]:
    """At most ``count`` consecutive ``[start, stop)`` ranges covering ``weights``, each
    closing where the running sum first reaches the next multiple of total / count."""
    n = len(weights)
    if n == 0:
        return []
    count = max(1, min(count, n))
    total = sum(weights)
    bounds = [0]
    running = 0.0
    for i, w in enumerate(weights[:-1]):
        running += w
        due = len(bounds) * total / count if total > 0 else len(bounds) * n / count
        if (running if total > 0 else i + 1) >= due and len(bounds) < count:
            bounds.append(i + 1)
    bounds.append(n)
    return list(itertools.pairwise(bounds))


def calibrate(
    net: Mapping[str, float],
    segments: Sequence[Segment],
    overhead_s: float,
    whole_s: float,
) -> dict[str, float]:
    """Per-op seconds: each segment's measured time net of one call's overhead, shared
    by its ops in proportion to ``net`` (their alone-times in graph order; equally when
    those are all zero), then all scaled to add up to ``whole_s``. When no segment
    outlasts the overhead, the alone-times alone are scaled."""
    names = list(net)
    out: dict[str, float] = {}
    for g in segments:
        members = names[g.start : g.stop]
        share = sum(net[m] for m in members)
        budget = max(g.seconds - overhead_s, 0.0)
        for m in members:
            out[m] = budget * (net[m] / share if share > 0 else 1 / len(members))
    missing = [m for m in names if m not in out]
    if missing:
        raise ValueError(f"segments do not cover op {missing[0]!r}")
    if sum(out.values()) <= 0:  # every segment within the call overhead (tiny models)
        out = {m: net[m] for m in names} if sum(net.values()) > 0 else dict.fromkeys(names, 1.0)
    total = sum(out.values())
    return {m: t * whole_s / total for m, t in out.items()}


def profile_graph(
    graph: LayerGraph,
    model_sha256: str,
    *,
    runs: int = DEFAULT_RUNS,
    segments: int = DEFAULT_SEGMENTS,
    progress: Callable[[int, int], None] | None = None,
) -> Profile:
    """Time every op of ``graph`` alone, ``segments`` runs of consecutive ops together,
    and the whole model, on this device; ops and segments are each timed in a chain (see
    ``_chained_medians``). ``progress(done, total)`` counts the parts built."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ranges = [(i, i + 1) for i in range(len(graph.ops))]
    total = len(ranges) + min(segments, len(ranges))

    def call(start: int, stop: int) -> Callable[[], Any]:
        part = build_part(graph, start, stop, index=start)
        feed = {name: tf.constant(_sample(graph.tensors[name], rng)) for name in part.inputs}
        if progress is not None:
            progress(len(built) + 1, total)
        return functools.partial(tf.function(part.model), feed)

    built: list[Callable[[], Any]] = []
    for a, b in ranges:
        built.append(call(a, b))
    raw = dict(zip((op.name for op in graph.ops), _chained_medians(built, runs), strict=True))
    identity = tf.function(tf.identity)
    probe = tf.constant(np.zeros((1, 4), np.float32))
    overhead = _median_seconds(lambda: identity(probe), runs)
    net = {name: max(t - overhead, 0.0) for name, t in raw.items()}
    ranges = segment_ranges(list(net.values()), segments)
    built = []
    for a, b in ranges:
        built.append(call(a, b))
    timed_segments = tuple(
        Segment(a, b, t) for (a, b), t in zip(ranges, _chained_medians(built, runs), strict=True)
    )
    whole_s = time_whole_model(graph, runs=runs)
    device = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
    }
    return Profile(
        model_sha256=model_sha256,
        device=device,
        op_seconds=calibrate(net, timed_segments, overhead, whole_s),
        raw_seconds=raw,
        call_overhead_s=overhead,
        whole_model_s=whole_s,
        runs=runs,
        segments=timed_segments,
    )


def time_model(model: Any, inputs: Mapping[str, np.ndarray], runs: int) -> tuple[list[Any], float]:
    """A model's flattened outputs on ``inputs`` and the median seconds of one call
    under ``tf.function`` (inputs in the model's input order)."""
    import keras
    import tensorflow as tf

    fn = tf.function(model)
    flat = [tf.constant(v) for v in inputs.values()]
    feed = keras.tree.pack_sequence_as(model._inputs_struct, flat)
    outputs = [np.asarray(t) for t in keras.tree.flatten(fn(feed))]
    return outputs, _median_seconds(lambda: fn(feed), runs)


def time_whole_model(graph: LayerGraph, *, runs: int = DEFAULT_RUNS) -> float:
    """Median seconds of one batch-1 call of the whole model under ``tf.function``."""
    rng = np.random.default_rng(0)
    inputs = {n: _sample(graph.tensors[n], rng) for n in graph.inputs}
    return time_model(graph.functional, inputs, runs)[1]
