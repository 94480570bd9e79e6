"""Part runners: Keras (TensorFlow) and LiteRT. Each imports its runtime lazily.

A runner is called with a dict holding exactly the part's input names and returns
a dict of its output names. Inputs are checked against the manifest first, so a
wrong name, dtype or shape is a clear ``ModelError``, never a crash or garbage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edgenode.errors import ModelError
from edgenode.model.manifest import PartSpec, TensorSpec

__all__ = ["PartRunner", "check_inputs", "import_backend", "load_runner"]


class PartRunner(Protocol):
    """Runs one part: named inputs in, named outputs out (blocking; call off the loop)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> None:
    """ModelError unless ``inputs`` has exactly the specs' names, dtypes and shapes."""
    expected = {s.name for s in specs}
    if set(inputs) != expected:
        missing = sorted(expected - set(inputs))
        extra = sorted(set(inputs) - expected)
        raise ModelError(f"part inputs: missing {missing}, unexpected {extra}")
    batch = None
    for spec in specs:
        value = inputs[spec.name]
        if str(value.dtype) != spec.dtype:
            raise ModelError(f"input {spec.name!r}: dtype {value.dtype}, expected {spec.dtype}")
        if len(value.shape) != len(spec.shape) or any(
            want is not None and got != want
            for got, want in zip(value.shape, spec.shape, strict=True)
        ):
            shape = tuple(value.shape)
            raise ModelError(f"input {spec.name!r}: shape {shape}, expected {spec.shape}")
        if value.shape and spec.shape[:1] == (None,):
            if value.shape[0] == 0:
                raise ModelError(f"input {spec.name!r}: empty batch")
            if batch is not None and value.shape[0] != batch:
                raise ModelError(f"input {spec.name!r}: batch {value.shape[0]}, others {batch}")
            batch = value.shape[0]


def load_runner(spec: PartSpec, directory: Path, *, threads: int = 1) -> PartRunner:
    """The runner for a manifest part file (Keras or LiteRT by its suffix)."""
    path = directory / spec.file
    if spec.format == "litert":
        from edgenode.backends.litert import LiteRTPart

        return LiteRTPart(path, threads=threads)
    from edgenode.backends.keras import KerasPart

    return KerasPart(path)


def import_backend(fmt: str) -> None:
    """Import the runtime that runs parts of this format ("keras" or "litert") now, so that a
    node's resident memory at start-up (its baseline, ``planning.memory``) includes it."""
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    else:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
