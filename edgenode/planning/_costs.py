"""Cost model of a pipeline stage: graph, nodes, link, and what one contiguous part costs.

Cost of a part [a, b) of the topological order on a node (the model every planner shares):

- compute: sum(work[a:b]) / speed, taken as a difference of prefix sums, so that for a fixed
  stop the value can only shrink as the start grows (planning relies on that);
- send bytes: every tensor produced in [a, b) with a consumer at or after b, once, plus every
  final tensor produced in [a, b), again, because it also goes back to the request's origin;
  model inputs (producer -1) come from the request's origin and cost no stage anything;
- CPU: compute + the link's per-request CPU + its per-byte CPU for every byte sent, twice:
  once for the sender and once for the receiver, both charged to the sending stage (so that
  a part's cost still never grows as its start moves later);
- time: CPU + send_bytes / bandwidth + the hop latency, where the latency is paid only by a
  stage that sends at least one byte (to the next stage or to the origin). Measured in the
  edge lab, a node's sends do not overlap its next request's compute: the times add up.
- memory: what the graph's ``MemoryModel`` (``planning.memory``) predicts for its parameters,
  the largest working set of a layer in it (``OpCost.activation_bytes``, or the op's own
  tensors when it is one layer) and the bytes it receives and sends (the transport's
  buffers). The plain model, the default, is parameters plus the largest working set. An
  estimate, not a bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edgenode.defaults import BYTE_CPU_NS, HOP_LATENCY_MS, LINK_MBPS, STAGE_CPU_MS
from edgenode.errors import PlanError
from edgenode.planning.memory import PLAIN, MemoryModel

__all__ = [
    "DEFAULT_BANDWIDTH_BYTES_PER_S",
    "DEFAULT_BYTE_CPU_S",
    "DEFAULT_HOP_LATENCY_S",
    "DEFAULT_STAGE_CPU_S",
    "CostGraph",
    "CostTables",
    "Link",
    "NodeSpec",
    "OpCost",
    "StageCost",
    "TensorCost",
    "TileShape",
    "boundary_tensors",
    "build_tables",
    "check_graph",
    "check_link",
    "check_speed",
    "crossing_bytes",
    "make_stage",
    "node_link",
    "parts_memory_bytes",
    "stage_cost",
    "stage_memory_bytes",
    "work_prefix",
]

DEFAULT_BANDWIDTH_BYTES_PER_S = LINK_MBPS * 1e6 / 8  # gigabit Ethernet, edgenode.defaults
DEFAULT_HOP_LATENCY_S = HOP_LATENCY_MS / 1e3
DEFAULT_STAGE_CPU_S = STAGE_CPU_MS / 1e3
DEFAULT_BYTE_CPU_S = BYTE_CPU_NS / 1e9
# Stands for "cannot fit" in the memory table; far above any real memory.
_NO_FIT_BYTES = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True, kw_only=True)
class OpCost:
    """One operation at its position in the fixed topological order."""

    name: str
    work: float  # FLOPs or reference-device seconds; NodeSpec.speed uses the same unit
    param_bytes: int = 0
    # The largest working set of one layer inside the op (an op that is a whole part of a
    # cut model); 0: the op is one layer, its working set is its own tensors.
    activation_bytes: int = 0
    # Its largest single weight tensor; 0: not known, its param_bytes stand in (an upper
    # bound).
    largest_weight_bytes: int = 0

    @property
    def heaviest_weight_bytes(self) -> int:
        """Its largest weight tensor, or its parameters where that is not known."""
        return self.largest_weight_bytes or self.param_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorCost:
    """A tensor: its producing op (-1 for a model input), its readers and its size."""

    name: str
    producer: int
    consumers: tuple[int, ...] = ()
    nbytes: int
    final: bool = False  # a model output, sent back to the request's origin


@dataclass(frozen=True, slots=True, kw_only=True)
class TileShape:
    """Spatial ops: ``stripes`` (consecutive ops that may run at once on different nodes,
    each computing some rows of one region) and the op ``gather`` that joins them."""

    stripes: tuple[int, ...]
    gather: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CostGraph:
    """Ops in topological order and the tensors between them; ``tiles`` when some ops
    are stripes of a spatial region (``planning.tiles`` plans those for latency); ``memory``
    how the backend's resident memory grows with the ops a node holds."""

    ops: tuple[OpCost, ...]
    tensors: tuple[TensorCost, ...] = ()
    tiles: TileShape | None = None
    memory: MemoryModel = PLAIN


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """A device: its speed in work units per second, the bytes it can hold for its part (its
    budget less its baseline, ``planning.memory.room_bytes``), and the bandwidth of its own
    link (0: as fast as the cluster's ``Link``)."""

    node_id: str
    speed: float
    memory_bytes: int
    link_bytes_per_s: float = 0.0
    # How its backend's resident memory grows with parts (planning.memory); None: the
    # graph's model.
    memory: MemoryModel | None = None

    def bandwidth(self, link: Link) -> float:
        """Bytes per second this node sends at: the cluster's link, or its own when slower."""
        own = self.link_bytes_per_s
        return min(own, link.bandwidth_bytes_per_s) if own > 0 else link.bandwidth_bytes_per_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """The network between nodes, the same for every hop, and the CPU a node spends on it:
    per request of each stage, and per byte at each end (0 by default, for the model's own
    arithmetic; ``node_link`` is the link with what nodes were measured to spend)."""

    bandwidth_bytes_per_s: float = DEFAULT_BANDWIDTH_BYTES_PER_S
    latency_s: float = DEFAULT_HOP_LATENCY_S
    stage_cpu_s: float = 0.0
    byte_cpu_s: float = 0.0

    def cpu_s(self, send_bytes: float) -> float:
        """CPU one request costs a stage besides its part, for the bytes it sends."""
        return self.stage_cpu_s + 2 * self.byte_cpu_s * send_bytes


def node_link(
    bandwidth_bytes_per_s: float = DEFAULT_BANDWIDTH_BYTES_PER_S,
    latency_s: float = DEFAULT_HOP_LATENCY_S,
) -> Link:
    """The link as the product plans for it: with the CPU nodes were measured to spend per
    request and per byte (edgenode.defaults)."""
    return Link(
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        latency_s=latency_s,
        stage_cpu_s=DEFAULT_STAGE_CPU_S,
        byte_cpu_s=DEFAULT_BYTE_CPU_S,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCost:
    """Part [start, stop) on one node, with what it costs there."""

    node_id: str
    start: int
    stop: int
    compute_s: float
    send_bytes: int
    send_s: float
    cpu_s: float  # compute plus the link's CPU per request and per byte
    time_s: float  # cpu_s + send_s + the hop latency
    param_bytes: int
    work: float


@dataclass(frozen=True, slots=True)
class CostTables:
    """Per-graph tables indexed [start, stop] (shape (n + 1, n + 1)) for every part at once."""

    n: int
    work_prefix: NDArray[np.float64]
    param_prefix: NDArray[np.int64]
    send_bytes: NDArray[np.int64]
    largest_bytes: NDArray[np.int64]  # the largest layer working set in the part
    summed_bytes: NDArray[np.int64]  # the ops' largest layer working sets, added up
    largest_weights: NDArray[np.int64]  # the part's largest weight tensor
    moved_bytes: NDArray[np.int64]  # what the part receives and sends per request
    memory: MemoryModel  # the graph's, for nodes that name none
    _memory_tables: dict[MemoryModel, NDArray[np.int64]]

    def memory_bytes(self, node: NodeSpec | None = None) -> NDArray[np.int64]:
        """What every part needs on ``node`` by its memory model (the graph's for None);
        _NO_FIT_BYTES where stop <= start."""
        model = node.memory if node is not None and node.memory is not None else self.memory
        table = self._memory_tables.get(model)
        if table is None:
            n = self.n
            params = self.param_prefix[None, :] - self.param_prefix[:, None]
            # need_bytes' arithmetic in its order, for every part at once (int() truncates
            # as astype does)
            need = model.runtime_bytes + model.weights * params
            need += model.loading * self.largest_weights
            layers = self.summed_bytes if model.activations_add_up else self.largest_bytes
            need += model.activations * layers
            need += model.buffers * self.moved_bytes
            table = need.astype(np.int64)
            table[np.tril(np.ones((n + 1, n + 1), dtype=np.bool_))] = _NO_FIT_BYTES
            self._memory_tables[model] = table
        return table


def check_graph(graph: CostGraph) -> None:
    """Raise PlanError unless the graph is non-empty and consistent with its order."""
    n = len(graph.ops)
    if n == 0:
        raise PlanError("graph has no ops")
    for op in graph.ops:
        if not (math.isfinite(op.work) and op.work >= 0):
            raise PlanError(f"op {op.name!r} has work {op.work!r}; need a finite value >= 0")
        if op.param_bytes < 0:
            raise PlanError(f"op {op.name!r} has negative param_bytes {op.param_bytes}")
        if op.activation_bytes < 0 or op.largest_weight_bytes < 0:
            raise PlanError(f"op {op.name!r} has a negative activation or weight size")
    for t in graph.tensors:
        if not -1 <= t.producer < n:
            raise PlanError(f"tensor {t.name!r} has producer {t.producer} outside -1..{n - 1}")
        if t.nbytes < 0:
            raise PlanError(f"tensor {t.name!r} has negative nbytes {t.nbytes}")
        for c in t.consumers:
            if not t.producer < c < n:
                raise PlanError(
                    f"tensor {t.name!r} has consumer {c} outside {t.producer + 1}..{n - 1}"
                )


def check_link(link: Link) -> None:
    """Raise PlanError unless bandwidth is positive and latency non-negative."""
    if not link.bandwidth_bytes_per_s > 0:
        raise PlanError(f"link bandwidth must be positive, got {link.bandwidth_bytes_per_s!r}")
    if not (math.isfinite(link.latency_s) and link.latency_s >= 0):
        raise PlanError(f"link latency must be finite and >= 0, got {link.latency_s!r}")
    for name in ("stage_cpu_s", "byte_cpu_s"):
        value = getattr(link, name)
        if not (math.isfinite(value) and value >= 0):
            raise PlanError(f"link {name} must be finite and >= 0, got {value!r}")


def check_speed(node: NodeSpec) -> None:
    """Raise PlanError unless the node's speed is finite and positive."""
    if not (math.isfinite(node.speed) and node.speed > 0):
        raise PlanError(f"node {node.node_id!r} has speed {node.speed!r}; need a finite value > 0")


def _check_range(graph: CostGraph, start: int, stop: int) -> None:
    if not 0 <= start < stop <= len(graph.ops):
        raise PlanError(f"part [{start}, {stop}) is not a non-empty range of {len(graph.ops)} ops")


def work_prefix(graph: CostGraph) -> NDArray[np.float64]:
    """Cumulative work before each position, from 0 to the total (length n + 1)."""
    prefix = np.zeros(len(graph.ops) + 1, dtype=np.float64)
    np.cumsum([op.work for op in graph.ops], dtype=np.float64, out=prefix[1:])
    return prefix


def make_stage(
    node: NodeSpec,
    start: int,
    stop: int,
    work: float,
    send_bytes: int,
    param_bytes: int,
    link: Link,
) -> StageCost:
    """Build a StageCost; the arithmetic matches the planner's tables operation for operation."""
    compute_s = work / node.speed
    send_s = send_bytes / node.bandwidth(link)
    hop_s = link.latency_s if send_bytes > 0 else 0.0
    cpu_s = compute_s + link.cpu_s(send_bytes)
    return StageCost(
        node_id=node.node_id,
        start=start,
        stop=stop,
        compute_s=compute_s,
        send_bytes=send_bytes,
        send_s=send_s,
        cpu_s=cpu_s,
        time_s=cpu_s + (send_s + hop_s),
        param_bytes=param_bytes,
        work=work,
    )


def _send_bytes(graph: CostGraph, start: int, stop: int) -> int:
    total = 0
    for t in graph.tensors:
        if start <= t.producer < stop:
            if max(t.consumers, default=-1) >= stop:
                total += t.nbytes
            if t.final:
                total += t.nbytes
    return total


def stage_cost(graph: CostGraph, start: int, stop: int, node: NodeSpec, link: Link) -> StageCost:
    """Cost of part [start, stop) on node (memory is not checked; see stage_memory_bytes)."""
    check_graph(graph)
    check_link(link)
    _check_range(graph, start, stop)
    check_speed(node)
    prefix = work_prefix(graph)
    work = float(prefix[stop] - prefix[start])
    params = sum(op.param_bytes for op in graph.ops[start:stop])
    return make_stage(node, start, stop, work, _send_bytes(graph, start, stop), params, link)


def stage_memory_bytes(
    graph: CostGraph, start: int, stop: int, model: MemoryModel | None = None
) -> int:
    """Bytes a node needs beyond its baseline to hold part [start, stop), by ``model`` (a
    node's; None: the graph's)."""
    check_graph(graph)
    _check_range(graph, start, stop)
    return parts_memory_bytes(graph, range(start, stop), model)


def parts_memory_bytes(
    graph: CostGraph, ops: Iterable[int], model: MemoryModel | None = None
) -> int:
    """Bytes a node needs beyond its baseline to hold these ops (any set, e.g. the parts of
    an old plan and a new one loaded together) by ``model`` (None: the graph's); 0 for
    none."""
    held = sorted(set(ops))
    if not held:
        return 0
    if not 0 <= held[0] <= held[-1] < len(graph.ops):
        raise PlanError(f"ops {held} are not all among the {len(graph.ops)} ops")
    inside = set(held)
    moved = 0  # what the set receives and sends, as the transport holds it
    for t in graph.tensors:
        read = any(c in inside for c in t.consumers)
        if t.producer in inside:
            moved += t.nbytes * (any(c not in inside for c in t.consumers) + t.final)
        elif read:
            moved += t.nbytes
    layers = _activations(graph, _working_sets(graph))[held]
    model = model or graph.memory
    layer_bytes = int(layers.sum()) if model.activations_add_up else int(layers.max())
    params = sum(graph.ops[i].param_bytes for i in held)
    heaviest = max(graph.ops[i].heaviest_weight_bytes for i in held)
    return model.need_bytes(params, heaviest, layer_bytes, moved)


def _working_sets(graph: CostGraph) -> NDArray[np.int64]:
    """Per op: bytes of every tensor it reads plus every tensor it writes."""
    held = np.zeros(len(graph.ops), dtype=np.int64)
    for t in graph.tensors:
        for c in set(t.consumers):
            held[c] += t.nbytes
        if t.producer >= 0:
            held[t.producer] += t.nbytes
    return held


def _activations(graph: CostGraph, own: NDArray[np.int64]) -> NDArray[np.int64]:
    """Per op: the largest working set of a layer in it (at least its own tensors)."""
    inside = np.array([op.activation_bytes for op in graph.ops], dtype=np.int64)
    return np.maximum(inside, own)


def crossing_bytes(graph: CostGraph, cut: int) -> int:
    """Bytes of the tensors produced before cut and read at or after it (model inputs too)."""
    check_graph(graph)
    if not 0 <= cut <= len(graph.ops):
        raise PlanError(f"cut {cut} is outside 0..{len(graph.ops)}")
    return sum(t.nbytes for t in graph.tensors if t.producer < cut <= max(t.consumers, default=-1))


def boundary_tensors(
    graph: CostGraph, start: int, stop: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the tensors part [start, stop) receives and sends, in graph.tensors order."""
    check_graph(graph)
    _check_range(graph, start, stop)
    inputs = tuple(
        t.name
        for t in graph.tensors
        if t.producer < start and any(start <= c < stop for c in t.consumers)
    )
    outputs = tuple(
        t.name
        for t in graph.tensors
        if start <= t.producer < stop and (t.final or max(t.consumers, default=-1) >= stop)
    )
    return inputs, outputs


def _add_rectangle(diff: NDArray[np.int64], last_start: int, stops: range, nbytes: int) -> None:
    # Adds nbytes to every part [a, b) with a <= last_start and b in stops (2-D difference).
    first, after = stops.start, stops.stop
    diff[0, first] += nbytes
    diff[0, after] -= nbytes
    diff[last_start + 1, first] -= nbytes
    diff[last_start + 1, after] += nbytes


def build_tables(graph: CostGraph) -> CostTables:
    """Prefix sums, send bytes and memory needs of every part of a checked graph."""
    n = len(graph.ops)
    param_prefix = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([op.param_bytes for op in graph.ops], dtype=np.int64, out=param_prefix[1:])
    diff = np.zeros((n + 2, n + 2), dtype=np.int64)
    received = np.zeros((n + 2, n + 2), dtype=np.int64)
    for t in graph.tensors:
        readers = sorted(set(t.consumers))
        # received by [a, b) when the first reader at or after a is before b
        for prev, c in zip([t.producer, *readers], readers, strict=False):
            _add_rectangle(received, c, range(c + 1, n + 1), t.nbytes)
            _add_rectangle(received, prev, range(c + 1, n + 1), -t.nbytes)
        if t.producer < 0:
            continue
        last = max(t.consumers, default=-1)
        if last > t.producer:
            _add_rectangle(diff, t.producer, range(t.producer + 1, last + 1), t.nbytes)
        if t.final:
            _add_rectangle(diff, t.producer, range(t.producer + 1, n + 1), t.nbytes)
    send = np.cumsum(np.cumsum(diff, axis=0), axis=1)[: n + 1, : n + 1]
    moved = send + np.cumsum(np.cumsum(received, axis=0), axis=1)[: n + 1, : n + 1]
    layers = _activations(graph, _working_sets(graph))
    largest = np.zeros((n + 1, n + 1), dtype=np.int64)
    heaviest = np.zeros((n + 1, n + 1), dtype=np.int64)
    own_weights = np.array([op.heaviest_weight_bytes for op in graph.ops], dtype=np.int64)
    for a in range(n):
        largest[a, a + 1 :] = np.maximum.accumulate(layers[a:])
        heaviest[a, a + 1 :] = np.maximum.accumulate(own_weights[a:])
    layer_prefix = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(layers, dtype=np.int64, out=layer_prefix[1:])
    return CostTables(
        n=n,
        work_prefix=work_prefix(graph),
        param_prefix=param_prefix,
        send_bytes=send,
        largest_bytes=largest,
        summed_bytes=layer_prefix[None, :] - layer_prefix[:, None],
        largest_weights=heaviest,
        moved_bytes=moved,
        memory=graph.memory,
        _memory_tables={},
    )
