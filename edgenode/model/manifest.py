"""The manifest: which parts a model was cut into, their tensors, and which are final.

``manifest.json`` sits beside the part files written by ``edgenode split``. It is
plain JSON so other tools can read it, and this module imports neither Keras nor
TensorFlow, so LiteRT-only nodes can use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args

from edgenode.defaults import HOP_LATENCY_MS, LINK_MBPS
from edgenode.errors import ManifestError
from edgenode.planning import (
    CostGraph,
    Link,
    OpCost,
    TensorCost,
    TileShape,
    node_link,
)

__all__ = [
    "DEFAULT_WIRE_FORMAT",
    "FORMAT",
    "MANIFEST_NAME",
    "WIRE_FORMATS",
    "LinkSpec",
    "Manifest",
    "ManifestError",
    "ModelSpec",
    "OutputSpec",
    "PartSpec",
    "RowSlice",
    "TensorSpec",
    "TileSpec",
    "WireFormat",
    "file_sha256",
    "link_spec",
    "load_manifest",
    "planning_link",
    "row_slices",
    "slice_name",
    "wire_nbytes",
]

FORMAT = "edgenode-manifest/1"
MANIFEST_NAME = "manifest.json"
_HASH_BLOCK_BYTES = 1 << 20
# Tensor names starting with this are the wire's own: its control tensors (transport.codec).
RESERVED_PREFIX = "!"

# How intermediate tensors travel between nodes (transport.codec encodes them): float32 is
# bit-exact; float16 and int8 (per-tensor affine) trade accuracy for a half or a quarter of the
# bytes. One per cluster: part of the manifest's identity, so of every plan's digest.
WireFormat = Literal["float32", "float16", "int8"]
WIRE_FORMATS: Final[tuple[WireFormat, ...]] = get_args(WireFormat)
DEFAULT_WIRE_FORMAT: Final[WireFormat] = "float32"
_WIRE_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1}  # encoded bytes per float32 element
_INT8_HEADER_BYTES = 12  # the scale and zero point each int8 tensor's header adds, at most

_V = TypeVar("_V")


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """A named tensor; ``None`` in ``shape`` is the batch (or another free) dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        """JSON object of this spec."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputSpec(TensorSpec):
    """A part output; ``final`` marks a model output (returned to the request's origin)."""

    final: bool

    def to_json(self) -> dict[str, Any]:
        """JSON object of this spec."""
        return {**TensorSpec.to_json(self), "final": self.final}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """The whole model the parts come from."""

    name: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]  # tensor names of the final outputs (between parts)
    ops: int
    macs: int
    flops: int
    param_bytes: int
    # The model's own name of each of ``outputs`` (a dict output's key, else the Keras
    # output name); None in a manifest written before they were recorded.
    output_names: tuple[str, ...] | None = None
    # The keras.applications family whose input preprocessing clients apply to images
    # (edgenode/model/preprocess.py); None: none recorded (pixels 0..255 are sent, or a
    # manifest written before the field, whose clients go by the model's name).
    preprocess: str | None = None

    @property
    def answer_names(self) -> tuple[str, ...]:
        """The name an answer gives each of ``outputs``: the model's own, or for an older
        manifest without them, the tensor name."""
        return self.output_names if self.output_names is not None else self.outputs

    def name_outputs(self, values: Mapping[str, _V]) -> dict[str, _V]:
        """Final outputs keyed by tensor name, re-keyed by the model's own names (model order)."""
        pairs = zip(self.outputs, self.answer_names, strict=True)
        return {name: values[tensor] for tensor, name in pairs}


@dataclass(frozen=True, slots=True, kw_only=True)
class PartSpec:
    """One part file and its interface."""

    index: int
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]
    start: int  # first op (position in the model's op order)
    stop: int  # one past the last op
    macs: int
    flops: int
    param_bytes: int
    # The largest working set of one layer in the part (every tensor it reads and writes),
    # for the memory model (planning.memory); 0 when the manifest does not say (older ones).
    activation_bytes: int = 0
    largest_weight_bytes: int = 0  # its largest single weight tensor (0: not said)

    @property
    def format(self) -> str:
        """``keras`` or ``litert``, from the file's suffix."""
        return "litert" if self.file.endswith(".tflite") else "keras"


def slice_name(source: str, rows: tuple[int, int]) -> str:
    """The name of rows ``[lo, hi)`` of tensor ``source`` (a stripe's input)."""
    return f"{source}.rows{rows[0]}_{rows[1]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RowSlice:
    """Rows ``[lo, hi)`` (height, axis 1) of tensor ``source``: a tensor of its own,
    ``name``, made where ``source`` is and sent only to the stripes that read it."""

    name: str
    source: str
    rows: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        """JSON object of this slice."""
        return {"name": self.name, "source": self.source, "rows": list(self.rows)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TileSpec:
    """Spatial parts (``edgenode split --spatial``): the stripes, consecutive parts that
    each compute some rows of a local region from a row slice of its input and can run
    at once on different nodes, and the part that gathers them."""

    slices: tuple[RowSlice, ...]
    stripes: tuple[int, ...]  # part indices, consecutive
    gather: int  # the part index that concatenates the stripes

    def role(self, index: int) -> str:
        """What part ``index`` does: "stripe 1 (rows 230..511)", "gather" or "before the
        stripes" (rows: of the region's input that the stripe reads, halo included)."""
        if index in self.stripes:
            stripe = self.stripes.index(index)
            lo, hi = self.slices[stripe].rows
            return f"stripe {stripe} (rows {lo}..{hi - 1})"
        return "gather" if index == self.gather else "before the stripes"

    def to_json(self) -> dict[str, Any]:
        """JSON object of this spec."""
        return {
            "slices": [s.to_json() for s in self.slices],
            "stripes": list(self.stripes),
            "gather": self.gather,
        }


def row_slices(tiles: TileSpec | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The row slices whose source is in ``values`` (views, not copies), by name."""
    if tiles is None:
        return {}
    return {
        s.name: values[s.source][:, s.rows[0] : s.rows[1]]
        for s in tiles.slices
        if s.source in values
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSpec:
    """The network the cluster plans for. Every node must plan for the same one, so it
    travels in the manifest and is part of its identity; absent: gigabit Ethernet."""

    bandwidth_bytes_per_s: float
    latency_s: float  # fixed cost of one hop

    def to_json(self) -> dict[str, Any]:
        """JSON object of this spec."""
        return {"bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "latency_s": self.latency_s}


def planning_link(spec: LinkSpec | None) -> Link:
    """The link a cluster plans with for a manifest's ``link`` (None: gigabit Ethernet),
    with the CPU nodes spend per request and per byte (``planning.node_link``)."""
    if spec is None:
        return node_link()
    return node_link(spec.bandwidth_bytes_per_s, spec.latency_s)


def link_spec(mbps: float | None, hop_latency_ms: float | None) -> LinkSpec | None:
    """The link to write into a manifest from user settings (None: neither given, so the
    default, gigabit Ethernet with 0.5 ms per hop, and nothing is written)."""
    if mbps is None and hop_latency_ms is None:
        return None
    return LinkSpec(
        bandwidth_bytes_per_s=(mbps or LINK_MBPS) * 1e6 / 8,
        latency_s=(HOP_LATENCY_MS if hop_latency_ms is None else hop_latency_ms) / 1e3,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A model cut into parts."""

    model: ModelSpec
    parts: tuple[PartSpec, ...]
    created_by: str = ""
    link: LinkSpec | None = None
    wire_format: WireFormat = DEFAULT_WIRE_FORMAT
    tiles: TileSpec | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (format ``edgenode-manifest/1``)."""
        m = self.model
        return {
            "format": FORMAT,
            "created_by": self.created_by,
            "model": {
                "name": m.name,
                "sha256": m.sha256,
                "inputs": [t.to_json() for t in m.inputs],
                "outputs": list(m.outputs),
                # Only when recorded: an older manifest keeps its digest and identity.
                **({"output_names": list(m.output_names)} if m.output_names is not None else {}),
                **({"preprocess": m.preprocess} if m.preprocess is not None else {}),
                "ops": m.ops,
                "macs": m.macs,
                "flops": m.flops,
                "param_bytes": m.param_bytes,
            },
            "parts": [
                {
                    "index": p.index,
                    "file": p.file,
                    "sha256": p.sha256,
                    "inputs": [t.to_json() for t in p.inputs],
                    "outputs": [t.to_json() for t in p.outputs],
                    "ops": {"start": p.start, "stop": p.stop},
                    "macs": p.macs,
                    "flops": p.flops,
                    "param_bytes": p.param_bytes,
                    # Only when recorded: an older manifest keeps its identity.
                    **({"activation_bytes": p.activation_bytes} if p.activation_bytes else {}),
                    **(
                        {"largest_weight_bytes": p.largest_weight_bytes}
                        if p.largest_weight_bytes
                        else {}
                    ),
                }
                for p in self.parts
            ],
            **({"link": self.link.to_json()} if self.link is not None else {}),
            # Only when not the default: a float32 manifest keeps the digest and identity
            # it had before wire formats existed.
            **(
                {"wire_format": self.wire_format} if self.wire_format != DEFAULT_WIRE_FORMAT else {}
            ),
            **({"tiles": self.tiles.to_json()} if self.tiles is not None else {}),
        }

    def dumps(self) -> str:
        """Canonical JSON text (stable key order, trailing newline)."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON, part file hashes included."""
        return hashlib.sha256(self.dumps().encode()).hexdigest()

    @property
    def identity(self) -> str:
        """sha256 of what the cluster must agree on: the model and this cut of it.

        Leaves out the part files (names, formats, hashes) and the tool version: two
        nodes that cut the same model the same way get files with different zip
        timestamps, or one exported Keras parts and the other LiteRT parts, yet serve
        the same parts and can work together. Keeps the output names: the origin keys
        its answer by them, so nodes whose manifests name the outputs differently (or one
        without names, answering with tensor names) would answer the same request
        differently; they serve different models to a client.
        """
        data = self.to_json()
        data.pop("created_by")
        for part in data["parts"]:
            part.pop("sha256")
            part.pop("file")
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse and validate a manifest; ManifestError names the offending field."""
        from edgenode.model._manifest_parse import parse_manifest  # it builds this class

        return parse_manifest(data)

    def write(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory``."""
        path = directory / MANIFEST_NAME
        path.write_text(self.dumps())
        return path

    @property
    def backend(self) -> str:
        """What these part files run on, ``keras`` or ``litert`` (a split writes one
        format; the identity leaves it out, so nodes of both can share a cluster)."""
        return self.parts[0].format

    def cost_graph(self) -> CostGraph:
        """The planner's view of the parts: each part is one op, boundary tensors link them
        (``split.layer_cost_graph`` is the finer view, one op per layer, used to choose cuts).

        A tensor sent from part to part costs its size in the manifest's wire format (so
        does a row slice of a model input: the origin sends it to a stripe); the model's
        inputs and final outputs travel exact (float32)."""
        producer: dict[str, int] = {t.name: -1 for t in self.model.inputs}
        specs: dict[str, TensorSpec] = {t.name: t for t in self.model.inputs}
        consumers: dict[str, list[int]] = {}
        finals: set[str] = set()
        slices = {s.name: s for s in self.tiles.slices} if self.tiles is not None else {}
        for part in self.parts:
            for t in part.inputs:
                consumers.setdefault(t.name, []).append(part.index)
            for out in part.outputs:
                producer[out.name] = part.index
                specs[out.name] = out
                if out.final:
                    finals.add(out.name)
            for t in part.inputs:  # a row slice is made where its source is
                if t.name in slices:
                    producer[t.name] = producer[slices[t.name].source]
                    specs[t.name] = t
        return CostGraph(
            ops=tuple(
                OpCost(
                    name=f"part-{p.index}",
                    work=float(p.flops),
                    param_bytes=p.param_bytes,
                    activation_bytes=p.activation_bytes,
                    largest_weight_bytes=p.largest_weight_bytes,
                )
                for p in self.parts
            ),
            tensors=tuple(
                TensorCost(
                    name=name,
                    producer=producer[name],
                    consumers=tuple(consumers.get(name, ())),
                    nbytes=(
                        _nbytes(specs[name])
                        if name in finals or (producer[name] < 0 and name not in slices)
                        else wire_nbytes(specs[name], self.wire_format)
                    ),
                    final=name in finals,
                )
                for name in producer
            ),
            tiles=(
                TileShape(stripes=self.tiles.stripes, gather=self.tiles.gather)
                if self.tiles is not None
                else None
            ),
        )

    def verify_files(self, directory: Path) -> None:
        """Check every part file exists and matches its sha256."""
        for part in self.parts:
            path = directory / part.file
            if not path.is_file():
                raise ManifestError(f"part {part.index}: file {path} is missing")
            actual = file_sha256(path)
            if actual != part.sha256:
                raise ManifestError(
                    f"part {part.index}: {path} has sha256 {actual[:12]}..., "
                    f"manifest says {part.sha256[:12]}..."
                )


_ITEMSIZE = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}


def _nbytes(spec: TensorSpec) -> int:
    """Bytes of one sample (free dimensions taken as 1)."""
    count = 1
    for dim in spec.shape:
        count *= dim if dim is not None else 1
    return count * _ITEMSIZE.get(spec.dtype, 4)


def wire_nbytes(spec: TensorSpec, wire_format: WireFormat) -> int:
    """Bytes of one sample of ``spec`` sent between parts in ``wire_format`` (only float32
    tensors are encoded; int8 adds its scale and zero point to the header)."""
    if spec.dtype != "float32" or wire_format == DEFAULT_WIRE_FORMAT:
        return _nbytes(spec)
    count = _nbytes(spec) // _ITEMSIZE["float32"]
    extra = _INT8_HEADER_BYTES if wire_format == "int8" else 0
    return count * _WIRE_ITEMSIZE[wire_format] + extra


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path: Path) -> Manifest:
    """Read a manifest from a file or from a directory holding ``manifest.json``."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    return Manifest.from_json(data)
