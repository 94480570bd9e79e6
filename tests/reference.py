"""The whole model's answers for several inputs, as a ReferenceSet every test compares against.

No test compares an answer with a single reference: ``edgenode.verify.ReferenceSet``
refuses references that do not move with their input, so every "equal" below could
fail for a wrong answer (see tests/runtime/test_mutations.py, which makes them fail).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from edgenode.verify import DEFAULT_MARGIN, LOGITS_TOLERANCE, ReferenceSet, Verdict

# Largest max abs diff from the whole model run here, for the small hand-built models:
KERAS_TOLERANCE = 1e-6  # Keras parts, eager or traced, here or in node processes
NODE_TOLERANCE = 1e-5  # a margin for nodes whose thread settings differ from this process's
LITERT_TOLERANCE = 1e-6  # LiteRT parts: measured <= 1.2e-7 (applications: see their tests)
# Application logits through node processes: edgenode.verify's, which the demo uses too
# (measured up to 1.2e-5 in tests/test_pretrained.py, 7.7e-6 and 5.7e-6 in
# benchmarks/resilience.py).
APPLICATION_TOLERANCE = LOGITS_TOLERANCE


class WholeModel:
    """The whole model's value of any of its tensors, computed by Keras itself.

    A Keras model over the original model's own symbolic tensors (no part of ours), so
    it is an independent reference for what a part produces. Tensors inside an inlined
    nested model are not reachable this way.
    """

    def __init__(self, graph: Any, names: Iterable[str] | None = None) -> None:
        import keras

        self.graph = graph
        functional = graph.functional
        symbolic = _symbolic(graph)
        wanted = tuple(graph.outputs if names is None else names)
        missing = [n for n in wanted if n not in symbolic]
        if missing:
            raise KeyError(f"not reachable from the model's own tensors: {missing}")
        self.names = wanted
        inputs = list(functional.inputs)
        self._model = keras.Model(
            inputs=inputs if len(inputs) > 1 else inputs[0],
            outputs={n: symbolic[n] for n in wanted},
        )

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = [inputs[name] for name in self.graph.inputs]
        out = self._model(feed if len(feed) > 1 else feed[0], training=False)
        return {name: np.asarray(out[name]) for name in self.names}


def _symbolic(graph: Any) -> dict[str, Any]:
    """The model's own KerasTensor of every graph tensor outside inlined nested models."""
    import keras

    functional = graph.functional
    outer = {id(n) for nodes in functional._nodes_by_depth.values() for n in nodes}
    symbolic: dict[str, Any] = dict(zip(graph.inputs, functional.inputs, strict=True))
    for op in graph.ops:
        if id(op.node) in outer:
            symbolic.update(zip(op.outputs, keras.tree.flatten(op.node.outputs), strict=True))
    return symbolic


class ModelTensors:
    """The whole model's value of every tensor it shows, for several inputs: what each
    part must hand on or return, the model's final outputs included."""

    def __init__(self, graph: Any, batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        from edgenode.model.slicing import run_model

        symbolic = _symbolic(graph)
        produced = [n for n in graph.tensors if n in symbolic and graph.tensors[n].producer >= 0]
        whole = WholeModel(graph, names=produced)
        self.graph = graph
        self.batches = [dict(b) for b in batches]
        # run_model for the finals: an inlined nested model's output is not reachable
        self.values = [{**whole(b), **run_model(graph, b)} for b in self.batches]
        self.shown = set(self.values[0])

    def boundary(self, parts: Sequence[Any]) -> list[str]:
        """The tensors ``parts`` hand on or return, where the whole model shows them."""
        names = dict.fromkeys([*(n for p in parts for n in p.outputs), *self.graph.outputs])
        return [n for n in names if n in self.shown]

    def references(
        self, names: Iterable[str], *, tolerance: float, margin: float = DEFAULT_MARGIN
    ) -> ReferenceSet:
        """A ReferenceSet of ``names`` over every input."""
        return ReferenceSet(restrict(self.values, names), tolerance=tolerance, margin=margin)


def check_chain(
    tensors: ModelTensors,
    parts: Sequence[Any],
    *,
    tolerance: float = KERAS_TOLERANCE,
    run: Callable[[Mapping[str, np.ndarray], Sequence[str]], Mapping[str, np.ndarray]]
    | None = None,
) -> None:
    """Fail unless chaining ``parts`` gives, for every input, every boundary tensor and
    final output of the whole model. ``run(inputs, names)`` chains them (default: the
    Keras parts in this process)."""
    from edgenode.model.slicing import run_parts

    names = tensors.boundary(parts)
    refs = tensors.references(names, tolerance=tolerance)
    for i, batch in enumerate(tensors.batches):
        got = run(batch, names) if run else run_parts(parts, batch, outputs=names)
        assert_answer(refs, i, got)


def answers(graph: Any, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The whole model's final outputs for each batch, keyed by tensor name."""
    from edgenode.model.slicing import run_model

    return [run_model(graph, batch) for batch in batches]


def reference_set(
    graph: Any,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    tolerance: float,
    manifest: Any = None,
) -> ReferenceSet:
    """The whole model's final outputs for ``batches``: keyed by tensor name, or by the
    model's own output names (what a cluster answers) when ``manifest`` is given."""
    found = answers(graph, batches)
    if manifest is not None:
        found = [manifest.model.name_outputs(a) for a in found]
    return ReferenceSet(found, tolerance=tolerance)


def restrict(
    values: Sequence[Mapping[str, np.ndarray]], names: Iterable[str]
) -> list[dict[str, np.ndarray]]:
    """Each mapping reduced to ``names``."""
    kept = list(names)
    return [{n: v[n] for n in kept} for v in values]


def assert_answer(refs: ReferenceSet, index: int, got: Mapping[str, np.ndarray]) -> Verdict:
    """Fail the test unless ``got`` is the answer for input ``index``."""
    verdict = refs.check(index, {k: np.asarray(v) for k, v in got.items()})
    assert verdict.ok, f"answer for input {index}: {verdict.detail}"
    return verdict
