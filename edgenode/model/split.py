"""``edgenode split``: choose cuts, write the part files and the manifest."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenode import __version__
from edgenode.errors import ModelError
from edgenode.model.cost import OpStats, graph_stats, layer_working_sets
from edgenode.model.graph import LayerGraph, TensorInfo, build_graph
from edgenode.model.loading import model_sha256
from edgenode.model.manifest import (
    DEFAULT_WIRE_FORMAT,
    MANIFEST_NAME,
    RESERVED_PREFIX,
    WIRE_FORMATS,
    LinkSpec,
    Manifest,
    ModelSpec,
    OutputSpec,
    PartSpec,
    TensorSpec,
    WireFormat,
    file_sha256,
    planning_link,
    wire_nbytes,
)
from edgenode.model.preprocess import family_of
from edgenode.model.slicing import SUFFIX, Part, cut_graph, export_part, run_parts
from edgenode.model.spatial_split import choose_region
from edgenode.model.tiles import build_tiles
from edgenode.planning import (
    CostGraph,
    OpCost,
    TensorCost,
    equal_cuts,
    narrow_cuts,
    plan_parts,
)

__all__ = [
    "CUT_METHODS",
    "ChainCheck",
    "SpatialOptions",
    "SplitResult",
    "choose_cuts",
    "layer_cost_graph",
    "split_model",
    "verify_chain",
]

logger = logging.getLogger(__name__)

CUT_METHODS = ("balanced", "narrow", "even", "per-op")
Progress = Callable[[str], None]


def layer_cost_graph(
    graph: LayerGraph,
    stats: Sequence[OpStats],
    op_seconds: dict[str, float] | None = None,
    *,
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT,
) -> CostGraph:
    """The planner's view of the whole model, one op per layer: work per op (FLOPs, or measured
    seconds), and the bytes a tensor costs between nodes (``wire_format`` for those between
    parts; model inputs and outputs exact); for the view of a cut model, one op per part, see
    ``Manifest.cost_graph``."""
    if op_seconds is not None:
        missing = [op.name for op in graph.ops if op.name not in op_seconds]
        if missing:
            raise ModelError(
                f"the profile does not match this model (no timing for {missing[0]!r})"
            )
    ops = tuple(
        OpCost(
            name=s.name,
            work=float(op_seconds[s.name] if op_seconds is not None else s.flops),
            param_bytes=s.param_bytes,
        )
        for s in stats
    )
    finals = set(graph.outputs)

    def nbytes(t: TensorInfo) -> int:
        if t.producer < 0 or t.name in finals:
            return t.nbytes
        return wire_nbytes(TensorSpec(name=t.name, shape=t.shape, dtype=t.dtype), wire_format)

    tensors = tuple(
        TensorCost(
            name=t.name,
            producer=t.producer,
            consumers=t.consumers,
            nbytes=nbytes(t),
            final=t.name in finals,
        )
        for t in graph.tensors.values()
    )
    return CostGraph(ops=ops, tensors=tensors)


def choose_cuts(
    graph: LayerGraph,
    stats: Sequence[OpStats],
    *,
    parts: int | None,
    method: str = "balanced",
    at: Sequence[int] | None = None,
    op_seconds: dict[str, float] | None = None,
) -> tuple[int, ...]:
    """Cut positions for ``parts`` parts by ``method``, or exactly ``at``; balanced and
    narrow cuts weigh ops by ``op_seconds`` (a profile) when given, else by FLOPs."""
    n = len(graph.ops)
    if at is not None:
        cuts = tuple(at)
        if any(not 0 < c < n for c in cuts) or list(cuts) != sorted(set(cuts)):
            raise ModelError(
                f"cut positions must be distinct, increasing and within 1..{n - 1}; got "
                f"{','.join(map(str, cuts))}"
            )
        return cuts
    if method == "per-op":
        return tuple(range(1, n))
    if parts is None:
        raise ModelError("give a part count (--parts), cut positions (--at) or --cut per-op")
    if parts < 1:
        raise ModelError(f"the part count must be at least 1, got {parts}")
    if parts > n:
        raise ModelError(f"cannot cut {n} operations into {parts} parts")
    if method == "balanced":
        return tuple(plan_parts(layer_cost_graph(graph, stats, op_seconds), parts))
    if method == "narrow":
        return tuple(narrow_cuts(layer_cost_graph(graph, stats, op_seconds), parts))
    if method == "even":
        return tuple(equal_cuts(n, parts))
    raise ModelError(f"unknown cut method {method!r}; expected one of {', '.join(CUT_METHODS)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpatialOptions:
    """``split --spatial``: how many stripes, the speed of the nodes that will run them
    (FLOP/s, to price halos against hops), and optionally the region's last op."""

    stripes: int
    speed: float
    last_op: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitResult:
    """What ``split_model`` wrote."""

    manifest: Manifest
    directory: Path
    parts: list[Part]
    graph: LayerGraph


def _spec(graph: LayerGraph, name: str) -> TensorSpec:
    t = graph.tensors[name]
    return TensorSpec(name=name, shape=t.shape, dtype=t.dtype)


def _weight_sizes(model: Any) -> list[int]:
    return [
        int(np.prod(w.shape, dtype=np.int64)) * np.dtype(w.dtype).itemsize for w in model.weights
    ]


def _unique_weight_bytes(model: Any) -> int:
    return sum(_weight_sizes(model))


def _prepare_directory(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ModelError(f"{out} is not empty and holds no earlier split; choose another --out")


def split_model(
    model: Any,
    out: Path,
    *,
    cuts: Sequence[int] | None = None,
    parts: int | None = None,
    method: str = "balanced",
    fmt: str = "keras",
    op_seconds: dict[str, float] | None = None,
    link: LinkSpec | None = None,
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT,
    spatial: SpatialOptions | None = None,
    progress: Progress | None = None,
) -> SplitResult:
    """Cut ``model``, export every part into ``out`` and write ``manifest.json`` last
    (with ``link``, the network the cluster plans for; None: gigabit Ethernet; and
    ``wire_format``, how intermediate tensors travel between nodes). With ``spatial``,
    the parts are stripes of a spatial region and a gather part (``spatial_split``)
    instead of consecutive cuts.

    Files are written into a temporary directory beside ``out`` and moved into place
    at the end, so an interrupted split never leaves a manifest that lies.
    """
    say = progress or (lambda _msg: None)
    if wire_format not in WIRE_FORMATS:
        raise ModelError(
            f"unknown wire format {wire_format!r}; expected one of {', '.join(WIRE_FORMATS)}"
        )
    graph = build_graph(model)
    stats = graph_stats(graph)
    _check_output_names(graph)
    model_spec = ModelSpec(
        name=graph.name,
        sha256=model_sha256(graph),
        inputs=tuple(_spec(graph, n) for n in graph.inputs),
        outputs=graph.outputs,
        output_names=graph.output_names,
        preprocess=family_of(graph.name),
        ops=len(graph.ops),
        macs=sum(s.macs for s in stats),
        flops=sum(s.flops for s in stats),
        param_bytes=_unique_weight_bytes(model),
    )
    planned: Manifest | None = None
    if spatial is not None:
        choice = choose_region(
            graph,
            stats,
            spatial.stripes,
            model=model_spec,
            speed=spatial.speed,
            link=planning_link(link),
            last_op=spatial.last_op,
            link_spec=link,
            wire_format=wire_format,
        )
        planned = choice.manifest
        say(
            f"spatial region: ops {choice.region.start}..{choice.region.stop - 1} "
            f"({graph.ops[choice.region.stop - 1].name}), {choice.region.input_height} rows in, "
            f"{choice.region.output_height} out; predicted {choice.latency_s * 1e3:.1f} ms on "
            f"{choice.nodes} node(s) against {choice.whole_s * 1e3:.1f} ms whole"
        )
        tiles = build_tiles(graph, choice.region, spatial.stripes)
        built = [*([tiles.before] if tiles.before else []), *(s.part for s in tiles.stripes)]
        built.append(tiles.gather)
    else:
        chosen = choose_cuts(
            graph, stats, parts=parts, method=method, at=cuts, op_seconds=op_seconds
        )
        say(f"cutting {graph.name} ({len(graph.ops)} ops) into {len(chosen) + 1} parts")
        built = cut_graph(graph, chosen)
    _prepare_directory(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finals = set(graph.outputs)
    working = layer_working_sets(graph)
    specs = []
    with tempfile.TemporaryDirectory(prefix=".edgenode-split-", dir=out.parent) as tmp:
        staging = Path(tmp)
        for part in built:
            say(f"exporting part {part.index + 1}/{len(built)} ({part.op_count} ops, {fmt})")
            path = export_part(part, staging / f"part-{part.index}{SUFFIX[fmt]}", fmt)
            ops = stats[part.start : part.stop]
            if planned is not None:  # tile parts: their interface and work as planned
                spec = dataclasses.replace(
                    planned.parts[part.index],
                    file=path.name,
                    sha256=file_sha256(path),
                    param_bytes=_unique_weight_bytes(part.model),
                )
            else:
                spec = PartSpec(
                    index=part.index,
                    file=path.name,
                    sha256=file_sha256(path),
                    inputs=tuple(_spec(graph, n) for n in part.inputs),
                    outputs=tuple(_output_spec(graph, n, n in finals) for n in part.outputs),
                    start=part.start,
                    stop=part.stop,
                    macs=sum(s.macs for s in ops),
                    flops=sum(s.flops for s in ops),
                    param_bytes=_unique_weight_bytes(part.model),
                    activation_bytes=max(working[part.start : part.stop], default=0),
                    largest_weight_bytes=max(_weight_sizes(part.model), default=0),
                )
            specs.append(spec)
        manifest = Manifest(
            model=model_spec,
            parts=tuple(specs),
            created_by=f"edgenode {__version__}",
            link=link,
            wire_format=wire_format,
            tiles=planned.tiles if planned is not None else None,
        )
        manifest.write(staging)
        _replace_directory(staging, out)
    return SplitResult(manifest=manifest, directory=out, parts=built, graph=graph)


def _check_output_names(graph: LayerGraph) -> None:
    """Answers are keyed by the model's output names: each must be usable as one."""
    for name in graph.output_names:
        if not name or name.startswith(RESERVED_PREFIX):
            raise ModelError(
                f"model output {name!r}: an output name must not be empty or start with "
                f"{RESERVED_PREFIX!r}; rename that output (its dict key or layer)"
            )


def _output_spec(graph: LayerGraph, name: str, final: bool) -> OutputSpec:
    t = graph.tensors[name]
    return OutputSpec(name=name, shape=t.shape, dtype=t.dtype, final=final)


def _replace_directory(staging: Path, out: Path) -> None:
    out.mkdir(exist_ok=True)
    manifest = out / MANIFEST_NAME
    manifest.unlink(missing_ok=True)  # the old manifest goes first: no stale claims
    for old in out.glob("part-*"):
        old.unlink() if old.is_file() else shutil.rmtree(old)
    for new in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME):
        new.replace(out / new.name)


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """Chained parts against the whole model, on inputs the check could tell apart."""

    diff: float  # largest max abs diff over the inputs and the final outputs
    spread: float  # smallest max abs diff between two inputs' whole-model outputs
    moves: bool  # whether the outputs move with the input by far more than the tolerance
    scale: float = 0.0  # the largest magnitude in the whole model's outputs


def verify_chain(
    result: SplitResult,
    *,
    tolerance: float,
    seed: int = 0,
    inputs: int = 2,
    runners: Sequence[Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]] | None = None,
) -> ChainCheck:
    """Chained parts against the whole model on ``inputs`` random inputs (edgenode.verify
    decides). ``moves`` is False when the model answers (nearly) the same whatever the
    input: then "equal" would also hold for a wrong chain, and the caller should say so.
    ``runners``: one per part, what runs it instead of its Keras sub-model (the part files
    as exported, e.g. LiteRT)."""
    from edgenode.errors import VacuousReference
    from edgenode.model.slicing import run_model
    from edgenode.verify import ReferenceSet, max_abs_diff

    graph = result.graph
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(inputs):
        batch = {}
        for name in graph.inputs:
            t = graph.tensors[name]
            shape = tuple(d if d is not None else 1 for d in t.shape)
            batch[name] = rng.uniform(-1.0, 1.0, size=shape).astype(t.dtype)
        batches.append(batch)
    references = [
        {n: v for n, v in run_model(graph, b).items() if n in graph.outputs} for b in batches
    ]
    tiles = result.manifest.tiles
    answers = [
        run_parts(result.parts, b, outputs=graph.outputs, tiles=tiles, runners=runners)
        for b in batches
    ]
    diff = max(max_abs_diff(r, a) for r, a in zip(references, answers, strict=True))
    scale = max(float(np.abs(v).max(initial=0.0)) for r in references for v in r.values())
    try:
        spread = ReferenceSet(references, tolerance=tolerance).spread()
    except VacuousReference:
        pairs = [(a, b) for i, a in enumerate(references) for b in references[i + 1 :]]
        return ChainCheck(diff, min(max_abs_diff(a, b) for a, b in pairs), False, scale)
    return ChainCheck(diff, spread, True, scale)
