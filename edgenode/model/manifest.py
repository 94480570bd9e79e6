"""The manifest: which parts a model was cut into, their tensors, and which are final.

``manifest.json`` sits beside the part files written by ``edgenode split``. It is
plain JSON so other tools can read it, and this module imports neither Keras nor
TensorFlow, so LiteRT-only nodes can use it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgenode.defaults import HOP_LATENCY_MS, LINK_MBPS
from edgenode.errors import ManifestError
from edgenode.planning import CostGraph, OpCost, TensorCost

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "LinkSpec",
    "Manifest",
    "ManifestError",
    "ModelSpec",
    "OutputSpec",
    "PartSpec",
    "TensorSpec",
    "file_sha256",
    "link_spec",
    "load_manifest",
]

FORMAT = "edgenode-manifest/1"
MANIFEST_NAME = "manifest.json"
_HASH_BLOCK_BYTES = 1 << 20
# Tensor names starting with this are the wire's own: its control tensors (transport.codec).
RESERVED_PREFIX = "!"
_FAMILY = re.compile(r"[a-z0-9_]{1,64}")  # model.preprocess

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

    @property
    def format(self) -> str:
        """``keras`` or ``litert``, from the file's suffix."""
        return "litert" if self.file.endswith(".tflite") else "keras"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSpec:
    """The network the cluster plans for. Every node must plan for the same one, so it
    travels in the manifest and is part of its identity; absent: gigabit Ethernet."""

    bandwidth_bytes_per_s: float
    latency_s: float  # fixed cost of one hop

    def to_json(self) -> dict[str, Any]:
        """JSON object of this spec."""
        return {"bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "latency_s": self.latency_s}


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
                }
                for p in self.parts
            ],
            **({"link": self.link.to_json()} if self.link is not None else {}),
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
        return _parse(data)

    def write(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory``."""
        path = directory / MANIFEST_NAME
        path.write_text(self.dumps())
        return path

    def cost_graph(self) -> CostGraph:
        """The planner's view of the parts: each part is one op, boundary tensors link them
        (``split.layer_cost_graph`` is the finer view, one op per layer, used to choose cuts)."""
        producer: dict[str, int] = {t.name: -1 for t in self.model.inputs}
        specs: dict[str, TensorSpec] = {t.name: t for t in self.model.inputs}
        consumers: dict[str, list[int]] = {}
        finals: set[str] = set()
        for part in self.parts:
            for t in part.inputs:
                consumers.setdefault(t.name, []).append(part.index)
            for out in part.outputs:
                producer[out.name] = part.index
                specs[out.name] = out
                if out.final:
                    finals.add(out.name)
        return CostGraph(
            ops=tuple(
                OpCost(name=f"part-{p.index}", work=float(p.flops), param_bytes=p.param_bytes)
                for p in self.parts
            ),
            tensors=tuple(
                TensorCost(
                    name=name,
                    producer=producer[name],
                    consumers=tuple(consumers.get(name, ())),
                    nbytes=_nbytes(specs[name]),
                    final=name in finals,
                )
                for name in producer
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
    return _parse(data)


# -- parsing ---------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, Mapping):
        raise ManifestError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise ManifestError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r:.60}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _shape(value: Any, where: str) -> tuple[int | None, ...]:
    if not isinstance(value, list) or not all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in value
    ):
        raise ManifestError(f"{where}.shape: expected a list of sizes or null, got {value!r:.60}")
    return tuple(value)


def _tensor(obj: Any, where: str) -> TensorSpec:
    return TensorSpec(
        name=_field(obj, "name", str, where),
        shape=_shape(_field(obj, "shape", list, where), where),
        dtype=_field(obj, "dtype", str, where),
    )


def _output(obj: Any, where: str) -> OutputSpec:
    base = _tensor(obj, where)
    final = _field(obj, "final", bool, where)
    return OutputSpec(name=base.name, shape=base.shape, dtype=base.dtype, final=final)


def _list(obj: Mapping[str, Any], key: str, where: str) -> Sequence[Any]:
    value: Sequence[Any] = _field(obj, key, list, where)
    return value


def _tensors(obj: Mapping[str, Any], key: str, where: str) -> tuple[TensorSpec, ...]:
    return tuple(_tensor(t, f"{where}.{key}[{i}]") for i, t in enumerate(_list(obj, key, where)))


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where}: expected str, got {value!r:.60}")
    return value


def _optional_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value: int = _field(obj, key, int, where) if key in obj else 0
    return value


def _parse(data: Any) -> Manifest:
    fmt = _field(data, "format", str, "manifest")
    if fmt != FORMAT:
        raise ManifestError(f"manifest.format: unsupported {fmt!r}, expected {FORMAT!r}")
    m = _field(data, "model", dict, "manifest")
    outputs = tuple(
        _name(o, f"model.outputs[{i}]") for i, o in enumerate(_list(m, "outputs", "model"))
    )
    model = ModelSpec(
        name=_field(m, "name", str, "model"),
        sha256=_field(m, "sha256", str, "model"),
        inputs=_tensors(m, "inputs", "model"),
        outputs=outputs,
        output_names=_output_names(m, outputs),
        preprocess=_preprocess(m),
        ops=_optional_int(m, "ops", "model"),
        macs=_optional_int(m, "macs", "model"),
        flops=_optional_int(m, "flops", "model"),
        param_bytes=_optional_int(m, "param_bytes", "model"),
    )
    parts = []
    for i, p in enumerate(_list(data, "parts", "manifest")):
        where = f"parts[{i}]"
        ops = _field(p, "ops", dict, where) if isinstance(p, Mapping) and "ops" in p else {}
        parts.append(
            PartSpec(
                index=_field(p, "index", int, where),
                file=_field(p, "file", str, where),
                sha256=_field(p, "sha256", str, where),
                inputs=_tensors(p, "inputs", where),
                outputs=tuple(
                    _output(t, f"{where}.outputs[{j}]")
                    for j, t in enumerate(_list(p, "outputs", where))
                ),
                start=_optional_int(ops, "start", f"{where}.ops"),
                stop=_optional_int(ops, "stop", f"{where}.ops"),
                macs=_optional_int(p, "macs", where),
                flops=_field(p, "flops", int, where),
                param_bytes=_field(p, "param_bytes", int, where),
            )
        )
    manifest = Manifest(
        model=model,
        parts=tuple(parts),
        created_by=str(data.get("created_by", "")),
        link=_link(data["link"]) if "link" in data else None,
    )
    _check(manifest)
    return manifest


def _preprocess(m: Mapping[str, Any]) -> str | None:
    """``model.preprocess``: a family name of lower-case letters, digits and ``_``, or None."""
    if "preprocess" not in m:
        return None
    family = str(_field(m, "preprocess", str, "model"))
    if not _FAMILY.fullmatch(family):
        raise ManifestError(f"model.preprocess: {family!r} is not a preprocessing family name")
    return family


def _output_names(m: Mapping[str, Any], outputs: Sequence[str]) -> tuple[str, ...] | None:
    """``model.output_names``: one distinct name per model output, or None when absent."""
    if "output_names" not in m:
        return None
    names = tuple(
        _name(o, f"model.output_names[{i}]")
        for i, o in enumerate(_list(m, "output_names", "model"))
    )
    if len(names) != len(outputs):
        raise ManifestError(
            f"model.output_names: {len(names)} names for {len(outputs)} model outputs; "
            "expected one per output"
        )
    for i, tensor in enumerate(outputs):
        if tensor in outputs[:i]:
            raise ManifestError(f"model.outputs[{i}]: {tensor!r} is listed twice")
    for i, name in enumerate(names):
        if not name:
            raise ManifestError(f"model.output_names[{i}]: '' is empty")
        if name.startswith(RESERVED_PREFIX):
            raise ManifestError(
                f"model.output_names[{i}]: {name!r} starts with {RESERVED_PREFIX!r}, "
                "reserved by the protocol"
            )
        if name in names[:i]:
            raise ManifestError(f"model.output_names[{i}]: {name!r} names two outputs")
    return names


def _link(data: Any) -> LinkSpec:
    bandwidth = _field(data, "bandwidth_bytes_per_s", (int, float), "link")
    latency = _field(data, "latency_s", (int, float), "link")
    if isinstance(bandwidth, bool) or not 0 < bandwidth < float("inf"):
        raise ManifestError(f"link.bandwidth_bytes_per_s: must be positive, got {bandwidth!r}")
    if isinstance(latency, bool) or not 0 <= latency < float("inf"):
        raise ManifestError(f"link.latency_s: must be 0 or more, got {latency!r}")
    return LinkSpec(bandwidth_bytes_per_s=float(bandwidth), latency_s=float(latency))


def _check(manifest: Manifest) -> None:
    """Cross-field checks: indices, file names, dataflow and final outputs."""
    if not manifest.parts:
        raise ManifestError("manifest.parts: empty")
    available = {t.name for t in manifest.model.inputs}
    finals: set[str] = set()
    for i, part in enumerate(manifest.parts):
        if part.index != i:
            raise ManifestError(f"parts[{i}].index: expected {i}, got {part.index}")
        if Path(part.file).name != part.file or part.file in ("", ".", ".."):
            raise ManifestError(f"parts[{i}].file: {part.file!r} must be a plain file name")
        for t in part.inputs:
            if t.name not in available:
                raise ManifestError(
                    f"parts[{i}].inputs: {t.name!r} is neither a model input nor an "
                    "output of an earlier part"
                )
        for out in part.outputs:
            available.add(out.name)
            if out.final:
                finals.add(out.name)
    missing = set(manifest.model.outputs) - finals
    extra = finals - set(manifest.model.outputs)
    if missing:
        raise ManifestError(f"model outputs {sorted(missing)} are not marked final in any part")
    if extra:
        raise ManifestError(f"outputs {sorted(extra)} are marked final but are not model outputs")
