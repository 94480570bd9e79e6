"""TEST ONLY: part runners that answer wrong on purpose, to prove the checks catch it.

Mutation tests wrap one part's runner so that what it sends to the next stage is
wrong in a way a plausible bug would make it wrong, with the right names, shapes and
dtypes: two same-shaped tensors swapped, the tensors of another request, a zeroed
tensor, or the part skipped. Nothing in the library enables this: a node only wraps
its runners when ``edgenode run`` finds ``EDGENODE_TEST_MUTATE=KIND@PART`` in its
environment (read by the CLI, logged as an ERROR), which no configuration file or
flag can set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgenode.backends import PartRunner
from edgenode.errors import UsageError
from edgenode.model.manifest import PartSpec
from edgenode.runtime.parts import RunnerFactory

__all__ = ["ENV_VAR", "KINDS", "MutatedRunner", "Mutation", "mutating"]

logger = logging.getLogger(__name__)

ENV_VAR = "EDGENODE_TEST_MUTATE"
KINDS = ("swap", "other", "zero", "skip")


@dataclass(frozen=True, slots=True)
class Mutation:
    """What to break (``kind``) in which part's outputs (``part``)."""

    kind: str
    part: int

    @classmethod
    def parse(cls, text: str) -> Mutation:
        """``KIND@PART``, e.g. ``swap@0``."""
        kind, sep, part = text.partition("@")
        if kind not in KINDS or not sep or not part.isdigit():
            raise UsageError(
                f"{ENV_VAR}: expected KIND@PART with KIND one of {', '.join(KINDS)}, got {text!r}"
            )
        return cls(kind, int(part))


class MutatedRunner:
    """A part runner whose outputs are wrong in the way ``kind`` says."""

    def __init__(self, runner: PartRunner, spec: PartSpec, kind: str) -> None:
        self.inputs = runner.inputs
        self.outputs = runner.outputs
        self._runner = runner
        self._kind = kind
        self._previous: dict[str, np.ndarray] | None = None
        shapes = {o.name: o.shape for o in spec.outputs}
        if kind == "swap":
            pairs = [
                (a, b) for i, a in enumerate(shapes) for b in list(shapes)[i + 1 :]
                if shapes[a] == shapes[b]
            ]  # fmt: skip
            if not pairs:
                raise UsageError(f"part {spec.index} has no two outputs of one shape to swap")
            self._swap = pairs[0]
        if kind == "skip":
            free = list(spec.inputs)
            self._forward: dict[str, str] = {}
            for name, shape in shapes.items():
                same = next((t for t in free if t.shape == shape), None)
                if same is None:
                    raise UsageError(
                        f"part {spec.index} cannot be skipped: no input of shape {shape} "
                        f"to forward as {name!r}"
                    )
                free.remove(same)
                self._forward[name] = same.name

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the part (or not), then break its outputs."""
        if self._kind == "skip":
            return {name: np.asarray(inputs[src]) for name, src in self._forward.items()}
        out = self._runner(inputs)
        if self._kind == "swap":
            a, b = self._swap
            return {**out, a: out[b], b: out[a]}
        if self._kind == "zero":
            first = self.outputs[0]
            return {**out, first: np.zeros_like(out[first])}
        previous, self._previous = self._previous, out  # "other": the last call's tensors
        if previous is None or any(previous[k].shape != v.shape for k, v in out.items()):
            return {k: np.zeros_like(v) for k, v in out.items()}
        return previous


def mutating(factory: RunnerFactory, mutation: Mutation) -> RunnerFactory:
    """``factory``, with the runner of part ``mutation.part`` wrapped in a MutatedRunner."""

    def build(spec: PartSpec, directory: Path) -> PartRunner:
        runner = factory(spec, directory)
        if spec.index != mutation.part:
            return runner
        logger.error("TEST ONLY: part %d answers wrong on purpose (%s)", spec.index, mutation.kind)
        return MutatedRunner(runner, spec, mutation.kind)

    return build
