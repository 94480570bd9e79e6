"""Layer graph of a Keras functional model, built from its symbolic tensors.

The graph is read from the model's nodes (``_nodes_by_depth``, node arguments and
``_keras_history``), never from ``get_config()``: that way operations that are not
layers (``x + 3.0``, ``keras.ops.*``), shared layers, multi-output operations and
nested models are all seen exactly as Keras executes them.

Tensor names are model-relative, ``[scope.]op[.call][.oN]``:

* ``op`` is the layer's name; operations that are not layers and layers with
  automatic names (both named from a process-global counter) are renamed
  ``<kind>-<k>``, ``k`` counting that kind in the model's own execution order;
  Keras never puts ``-`` in a name it makes, so these cannot collide with one;
* ``.call`` is added when a layer is called more than once in the model;
* ``.oN`` is added when an operation has more than one output (flattened order);
* ``scope.`` is the name of an inlined nested model's call.

So one model gives the same names in every process, whatever was built before. These
names stay between parts; an answer calls each model output by the model's own name
(``LayerGraph.output_names``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
from keras.src.utils.naming import to_snake_case

from edgenode.errors import ModelError

__all__ = ["LayerGraph", "OpInfo", "TensorInfo", "build_graph"]

_AUTO_INPUT_NAME = re.compile(r"input_layer(_\d+)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorInfo:
    """A tensor of the graph: where it comes from and who reads it."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    producer: int  # position of the producing op, -1 for a model input
    consumers: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of one sample (batch dimension and other unknowns taken as 1)."""
        count = 1
        for dim in self.shape:
            count *= dim if dim is not None else 1
        return count * _itemsize(self.dtype)

    def spec(self) -> dict[str, Any]:
        """The JSON description used by the manifest."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OpInfo:
    """One call of one operation, at its position in the graph's order."""

    index: int
    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    operation: Any = field(repr=False)
    node: Any = field(repr=False)
    # id(KerasTensor) of every tensor in the node's arguments -> graph tensor name;
    # per call, because an inlined model called twice reuses its nodes.
    arg_names: Mapping[int, str] = field(repr=False)

    @property
    def is_layer(self) -> bool:
        """Whether the operation is a Keras layer (it may own weights)."""
        return isinstance(self.operation, keras.layers.Layer)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LayerGraph:
    """The DAG of a functional model, its operations in one topological order."""

    model: Any = field(repr=False)
    functional: Any = field(repr=False)  # the model itself, or a Sequential's graph
    name: str
    ops: tuple[OpInfo, ...]
    tensors: Mapping[str, TensorInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # distinct model outputs, in the model's flattened order
    output_slots: tuple[str, ...]  # the tensor of each flattened model output (may repeat)
    # The model's own name of each of ``outputs``: the key of a dict output (``a/b`` when
    # nested), else Keras' output name without an automatic counter; distinct (``-N``).
    output_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ops)

    def op(self, name: str) -> OpInfo:
        """The op called ``name``; ModelError if there is none."""
        for info in self.ops:
            if info.name == name:
                return info
        raise ModelError(f"no operation named {name!r} in model {self.name!r}")

    def boundary(self, start: int, stop: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Input and output tensor names of the contiguous part ``[start, stop)``.

        Inputs: tensors read in the part but produced before it (model inputs too),
        in order of first use. Outputs: tensors produced in the part that a later op
        reads or that are model outputs, in production order.
        """
        if not 0 <= start < stop <= len(self.ops):
            raise ModelError(f"invalid part [{start}, {stop}) of a {len(self.ops)}-op graph")
        inputs: dict[str, None] = {}
        for info in self.ops[start:stop]:
            for name in info.inputs:
                if not start <= self.tensors[name].producer < stop:
                    inputs.setdefault(name)
        finals = set(self.outputs)
        outputs = [
            name
            for info in self.ops[start:stop]
            for name in info.outputs
            if name in finals or any(c >= stop for c in self.tensors[name].consumers)
        ]
        return tuple(inputs), tuple(dict.fromkeys(outputs))


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)


@dataclass(slots=True)
class _Call:
    """A node found while walking, before names are given."""

    scope: str
    operation: Any
    node: Any
    arg_ids: tuple[int, ...]  # id() of the node's argument KerasTensors
    out_ids: tuple[int, ...]  # id() of its output KerasTensors, in this scope
    scope_key: int  # distinguishes calls of the same inlined model


def _is_functional(operation: Any) -> bool:
    return isinstance(operation, keras.Model) and hasattr(operation, "_nodes_by_depth")


def _as_functional(operation: Any) -> Any | None:
    """The functional graph behind a nested model, or None for other operations."""
    if isinstance(operation, keras.Sequential):
        functional = getattr(operation, "_functional", None)
        if functional is None:
            raise ModelError(f"nested Sequential model {operation.name!r} is not built")
        return functional
    if _is_functional(operation):
        return operation
    if isinstance(operation, keras.Model):
        raise ModelError(
            f"model {operation.name!r} is a subclassed keras.Model: only functional "
            "and Sequential models can be cut"
        )
    return None


def _execution_order(model: Any) -> Iterator[Any]:
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


class _Walker:
    """Flattens a model and its nested models into calls with scoped tensor ids."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        # (scope_key, id(KerasTensor)) -> canonical key of the tensor
        self.alias: dict[tuple[int, int], tuple[int, int]] = {}
        self._next_scope = 0

    def key(self, scope_key: int, tensor: Any) -> tuple[int, int]:
        k = (scope_key, id(tensor))
        return self.alias.get(k, k)

    def walk(self, model: Any, scope: str, scope_key: int) -> None:
        nodes = list(_execution_order(model))
        calls_of = Counter(id(node.operation) for node in nodes)
        seen: Counter[int] = Counter()
        for node in nodes:
            inner = _as_functional(node.operation)
            args = tuple(node.arguments.keras_tensors)
            if inner is None:
                self.calls.append(
                    _Call(
                        scope=scope,
                        operation=node.operation,
                        node=node,
                        arg_ids=tuple(id(t) for t in args),
                        out_ids=tuple(id(t) for t in node.outputs),
                        scope_key=scope_key,
                    )
                )
                continue
            call = seen[id(node.operation)]
            seen[id(node.operation)] += 1
            suffix = f".{call}" if calls_of[id(node.operation)] > 1 else ""
            self._inline(node, inner, f"{scope}{node.operation.name}{suffix}.", scope_key)

    def _inline(self, node: Any, inner: Any, scope: str, scope_key: int) -> None:
        if not node.arguments.args:
            raise ModelError(f"nested model {inner.name!r} is called without inputs")
        flat_args = keras.tree.flatten(node.arguments.args[0])
        if len(flat_args) != len(inner.inputs):
            raise ModelError(
                f"nested model {inner.name!r} takes {len(inner.inputs)} inputs, "
                f"called with {len(flat_args)}"
            )
        self._next_scope += 1
        inner_key = self._next_scope
        for inner_input, outer_arg in zip(inner.inputs, flat_args, strict=True):
            self.alias[(inner_key, id(inner_input))] = self.key(scope_key, outer_arg)
        self.walk(inner, scope, inner_key)
        for outer_out, inner_out in zip(node.outputs, inner.outputs, strict=True):
            self.alias[(scope_key, id(outer_out))] = self.key(inner_key, inner_out)


def build_graph(model: Any) -> LayerGraph:
    """The layer graph of a functional (or Sequential) Keras model."""
    functional = _as_functional(model)
    if functional is None:
        raise ModelError(f"{type(model).__name__} is not a Keras functional model")
    walker = _Walker()
    walker.walk(functional, "", 0)

    names: dict[tuple[int, int], str] = {}
    used: set[str] = set()

    def claim(key: tuple[int, int], wanted: str) -> str:
        name, n = wanted, 1
        while name in used:
            name, n = f"{wanted}-{n}", n + 1
        used.add(name)
        names[key] = name
        return name

    auto_inputs = [
        bool(_AUTO_INPUT_NAME.fullmatch(t._keras_history.operation.name)) for t in functional.inputs
    ]
    for i, tensor in enumerate(functional.inputs):
        wanted = tensor._keras_history.operation.name
        if auto_inputs[i]:
            wanted = "input" if len(functional.inputs) == 1 else f"input-{i}"
        claim((0, id(tensor)), wanted)

    # Layers keep their own names (explicit, or stored in the model file); other
    # operations get a counter of the model's own, in execution order.
    per_op = Counter((c.scope, id(c.operation)) for c in walker.calls)
    seen_op: Counter[tuple[str, int]] = Counter()
    per_kind: Counter[tuple[str, str]] = Counter()
    call_names: list[str] = []
    for call in walker.calls:
        base = call.operation.name
        kind = to_snake_case(type(call.operation).__name__)
        if not isinstance(call.operation, keras.layers.Layer) or re.fullmatch(
            rf"{re.escape(kind)}(_\d+)?", base
        ):
            base = f"{kind}-{per_kind[(call.scope, kind)]}"
            per_kind[(call.scope, kind)] += 1
        op_key = (call.scope, id(call.operation))
        if per_op[op_key] > 1:
            base = f"{base}.{seen_op[op_key]}"
        seen_op[op_key] += 1
        call_names.append(call.scope + base)
        outs = call.out_ids
        for j, out in enumerate(outs):
            suffix = f".o{j}" if len(outs) > 1 else ""
            claim((call.scope_key, out), call.scope + base + suffix)

    def tensor_name(scope_key: int, tensor_id: int) -> str:
        key = walker.alias.get((scope_key, tensor_id), (scope_key, tensor_id))
        try:
            return names[key]
        except KeyError:
            raise ModelError("the model reads a tensor that no operation produces") from None

    # Keep only what the outputs need, in depth-first post-order from the outputs:
    # each branch of a fork stays contiguous, which keeps cuts narrow.
    producer_of: dict[str, int] = {}
    for i, call in enumerate(walker.calls):
        for out in call.out_ids:
            producer_of[tensor_name(call.scope_key, out)] = i
    call_inputs = [
        tuple(dict.fromkeys(tensor_name(c.scope_key, a) for a in c.arg_ids)) for c in walker.calls
    ]
    outputs = tuple(tensor_name(0, id(t)) for t in functional.outputs)
    slot_names = _slot_names(functional)
    order = _post_order(outputs, call_inputs, producer_of)

    consumers: dict[str, list[int]] = {}
    ops: list[OpInfo] = []
    for pos, call_index in enumerate(order):
        call = walker.calls[call_index]
        for name in call_inputs[call_index]:
            consumers.setdefault(name, []).append(pos)
        ops.append(
            OpInfo(
                index=pos,
                name=call_names[call_index],
                kind=type(call.operation).__name__,
                inputs=call_inputs[call_index],
                outputs=tuple(tensor_name(call.scope_key, o) for o in call.out_ids),
                operation=call.operation,
                node=call.node,
                arg_names={a: tensor_name(call.scope_key, a) for a in call.arg_ids},
            )
        )

    tensors: dict[str, TensorInfo] = {}
    inputs = tuple(names[(0, id(t))] for t in functional.inputs)
    for name, tensor in zip(inputs, functional.inputs, strict=True):
        tensors[name] = _tensor_info(name, tensor, -1, consumers)
    for op in ops:
        for name, tensor in zip(op.outputs, op.node.outputs, strict=True):
            tensors[name] = _tensor_info(name, tensor, op.index, consumers)
    for name in outputs:
        if name not in tensors:
            raise ModelError(f"model output {name!r} is not produced by the model")
    return LayerGraph(
        model=model,
        functional=functional,
        name=str(model.name),
        ops=tuple(ops),
        tensors=tensors,
        inputs=inputs,
        outputs=tuple(dict.fromkeys(outputs)),
        output_slots=outputs,
        output_names=_output_names(outputs, slot_names),
    )


def _slot_names(functional: Any) -> list[str]:
    """The model's own name of each flattened output: for dict outputs the key (path
    joined with ``/`` when nested), otherwise Keras' ``output_names`` (the producing
    operation's name), where an automatic name loses its process-global counter
    (``dense_7`` -> ``dense``) so that building the model twice gives the same names."""
    struct = functional._outputs_struct
    if isinstance(struct, Mapping):
        return ["/".join(map(str, path)) for path, _ in keras.tree.flatten_with_path(struct)]
    names = []
    for tensor in functional.outputs:
        operation = tensor._keras_history.operation
        name, kind = str(operation.name), to_snake_case(type(operation).__name__)
        names.append(kind if re.fullmatch(rf"{re.escape(kind)}(_\d+)?", name) else name)
    return names


def _output_names(slots: Sequence[str], slot_names: Sequence[str]) -> tuple[str, ...]:
    """One distinct name per distinct output tensor.

    A tensor returned twice keeps its first name; outputs Keras names alike (list outputs
    of one layer) get ``-1``, ``-2``, ... (Keras never puts ``-`` in a name it makes).
    """
    if len(slots) != len(slot_names):
        raise ModelError(f"the model has {len(slots)} outputs but {len(slot_names)} output names")
    first: dict[str, str] = {}
    for tensor, name in zip(slots, slot_names, strict=True):
        first.setdefault(tensor, name)
    used: set[str] = set()
    names = []
    for wanted in first.values():
        name, n = wanted, 1
        while name in used:
            name, n = f"{wanted}-{n}", n + 1
        used.add(name)
        names.append(name)
    return tuple(names)


def _tensor_info(
    name: str, tensor: Any, producer: int, consumers: Mapping[str, Sequence[int]]
) -> TensorInfo:
    return TensorInfo(
        name=name,
        shape=tuple(tensor.shape),
        dtype=str(tensor.dtype),
        producer=producer,
        consumers=tuple(consumers.get(name, ())),
    )


def _post_order(
    outputs: Sequence[str],
    call_inputs: Sequence[tuple[str, ...]],
    producer_of: Mapping[str, int],
) -> list[int]:
    """Calls needed by ``outputs``, each after its inputs' producers (iterative DFS)."""
    order: list[int] = []
    done: set[int] = set()
    for output in outputs:
        if output not in producer_of:
            continue  # a model input returned as an output
        stack: list[tuple[int, int]] = [(producer_of[output], 0)]
        while stack:
            call, next_arg = stack.pop()
            if call in done:
                continue
            args = call_inputs[call]
            while next_arg < len(args):
                producer = producer_of.get(args[next_arg])
                next_arg += 1
                if producer is not None and producer not in done:
                    stack.append((call, next_arg))
                    stack.append((producer, 0))
                    break
            else:
                done.add(call)
                order.append(call)
    return order
