"""Measured latency of every operation on this device, saved for the planner.

Each op runs alone as a one-op part under ``tf.function`` at batch 1 on fixed random
inputs; the median of several timed runs after warm-up is its raw latency. A call
costs a fixed overhead (measured on an identity function) that a part pays once,
not once per op, so the overhead is subtracted, and the net times are scaled so
they add up to the whole model's measured time: the planner's predictions then
sum to what one device really takes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
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
    "load_profile",
    "profile_graph",
    "time_model",
    "time_whole_model",
]

logger = logging.getLogger(__name__)

PROFILE_FORMAT = "edgenode-profile/1"
DEFAULT_RUNS = 20
WARMUP_RUNS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Per-op latency (seconds) of one model on one device."""

    model_sha256: str
    device: dict[str, Any]
    op_seconds: dict[str, float]  # net of call overhead, scaled to the whole model
    raw_seconds: dict[str, float]  # each op timed alone
    call_overhead_s: float
    whole_model_s: float
    runs: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "format": PROFILE_FORMAT,
            "model_sha256": self.model_sha256,
            "device": self.device,
            "runs": self.runs,
            "whole_model_s": self.whole_model_s,
            "call_overhead_s": self.call_overhead_s,
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
    for _ in range(WARMUP_RUNS):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_graph(
    graph: LayerGraph,
    model_sha256: str,
    *,
    runs: int = DEFAULT_RUNS,
    progress: Callable[[int, int], None] | None = None,
) -> Profile:
    """Time every op of ``graph`` alone, and the whole model, on this device."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    raw: dict[str, float] = {}
    for i, op in enumerate(graph.ops):
        part = build_part(graph, i, i + 1, index=i)
        feed = {name: tf.constant(_sample(graph.tensors[name], rng)) for name in part.inputs}
        fn = tf.function(part.model)
        raw[op.name] = _median_seconds(functools.partial(fn, feed), runs)
        if progress is not None:
            progress(i + 1, len(graph.ops))
    identity = tf.function(tf.identity)
    probe = tf.constant(np.zeros((1, 4), np.float32))
    overhead = _median_seconds(lambda: identity(probe), runs)
    whole_s = time_whole_model(graph, runs=runs)
    net = {name: max(t - overhead, 0.0) for name, t in raw.items()}
    total = sum(net.values())
    scale = whole_s / total if total > 0 else 0.0
    op_seconds = {name: t * scale for name, t in net.items()}
    device = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
    }
    return Profile(
        model_sha256=model_sha256,
        device=device,
        op_seconds=op_seconds,
        raw_seconds=raw,
        call_overhead_s=overhead,
        whole_model_s=whole_s,
        runs=runs,
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
