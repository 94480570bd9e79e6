"""Reading a manifest: its JSON data checked field by field, then as a whole.

Every error is a ManifestError that names the offending field (``parts[2].outputs[0].final``),
so a hand-edited or truncated ``manifest.json`` is refused with a pointer to the mistake.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgenode.errors import ManifestError
from edgenode.model.manifest import (
    DEFAULT_WIRE_FORMAT,
    FORMAT,
    RESERVED_PREFIX,
    WIRE_FORMATS,
    LinkSpec,
    Manifest,
    ModelSpec,
    OutputSpec,
    PartSpec,
    RowSlice,
    TensorSpec,
    TileSpec,
    WireFormat,
    slice_name,
)

__all__ = ["parse_manifest"]

_FAMILY = re.compile(r"[a-z0-9_]{1,64}")  # model.preprocess


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


def _optional_size(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = _optional_int(obj, key, where)
    if value < 0:
        raise ManifestError(f"{where}.{key}: expected a byte count >= 0, got {value}")
    return value


def parse_manifest(data: Any) -> Manifest:
    """Parse and validate a manifest's JSON data; ManifestError names the offending field."""
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
                activation_bytes=_optional_size(p, "activation_bytes", where),
                largest_weight_bytes=_optional_size(p, "largest_weight_bytes", where),
            )
        )
    manifest = Manifest(
        model=model,
        parts=tuple(parts),
        created_by=str(data.get("created_by", "")),
        link=_link(data["link"]) if "link" in data else None,
        wire_format=_wire_format(data),
        tiles=_tiles(data["tiles"]) if "tiles" in data else None,
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


def _wire_format(data: Mapping[str, Any]) -> WireFormat:
    """``wire_format``: one of WIRE_FORMATS; absent (a manifest written before it): float32."""
    if "wire_format" not in data:
        return DEFAULT_WIRE_FORMAT
    value = _field(data, "wire_format", str, "manifest")
    for known in WIRE_FORMATS:
        if value == known:
            return known
    raise ManifestError(
        f"manifest.wire_format: unknown {value!r:.40}; expected one of {', '.join(WIRE_FORMATS)}"
    )


def _link(data: Any) -> LinkSpec:
    bandwidth = _field(data, "bandwidth_bytes_per_s", (int, float), "link")
    latency = _field(data, "latency_s", (int, float), "link")
    if isinstance(bandwidth, bool) or not 0 < bandwidth < float("inf"):
        raise ManifestError(f"link.bandwidth_bytes_per_s: must be positive, got {bandwidth!r}")
    if isinstance(latency, bool) or not 0 <= latency < float("inf"):
        raise ManifestError(f"link.latency_s: must be 0 or more, got {latency!r}")
    return LinkSpec(bandwidth_bytes_per_s=float(bandwidth), latency_s=float(latency))


def _rows(value: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        raise ManifestError(f"{where}.rows: expected [start, stop) with 0 <= start < stop")
    return value[0], value[1]


def _index(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"{where}: expected a part index, got {value!r:.60}")
    return value


def _tiles(data: Any) -> TileSpec:
    slices = []
    for i, s in enumerate(_list(data, "slices", "tiles")):
        where = f"tiles.slices[{i}]"
        rows = _rows(_field(s, "rows", list, where), where)
        source = _field(s, "source", str, where)
        name = _field(s, "name", str, where)
        if name != slice_name(source, rows):
            raise ManifestError(f"{where}.name: expected {slice_name(source, rows)!r}")
        slices.append(RowSlice(name=name, source=source, rows=rows))
    stripes = tuple(
        _index(v, f"tiles.stripes[{i}]") for i, v in enumerate(_list(data, "stripes", "tiles"))
    )
    if not stripes or list(stripes) != list(range(stripes[0], stripes[0] + len(stripes))):
        raise ManifestError("tiles.stripes: expected consecutive part indices")
    gather = _index(_field(data, "gather", int, "tiles"), "tiles.gather")
    return TileSpec(slices=tuple(slices), stripes=stripes, gather=gather)


def _check_tiles(manifest: Manifest) -> None:
    tiles = manifest.tiles
    if tiles is None:
        return
    n = len(manifest.parts)
    if tiles.stripes[-1] >= n or not tiles.stripes[-1] < tiles.gather < n:
        raise ManifestError(
            f"tiles: stripes {list(tiles.stripes)} and gather {tiles.gather} "
            f"must be parts (0..{n - 1}), the gather after the stripes"
        )
    shapes = {t.name: t.shape for t in manifest.model.inputs}
    shapes.update((o.name, o.shape) for p in manifest.parts for o in p.outputs)
    for i, s in enumerate(tiles.slices):
        shape = shapes.get(s.source)
        if shape is None or len(shape) < 2:
            raise ManifestError(f"tiles.slices[{i}].source: {s.source!r} is no tensor with rows")
        height = shape[1]
        if height is not None and s.rows[1] > height:
            raise ManifestError(f"tiles.slices[{i}].rows: past the {height} rows of {s.source!r}")


def _check(manifest: Manifest) -> None:
    """Cross-field checks: indices, file names, dataflow and final outputs."""
    if not manifest.parts:
        raise ManifestError("manifest.parts: empty")
    _check_tiles(manifest)
    slices = manifest.tiles.slices if manifest.tiles is not None else ()
    available = {t.name for t in manifest.model.inputs}
    available |= {s.name for s in slices if s.source in available}
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
        available |= {s.name for s in slices if s.source in available}
    missing = set(manifest.model.outputs) - finals
    extra = finals - set(manifest.model.outputs)
    if missing:
        raise ManifestError(f"model outputs {sorted(missing)} are not marked final in any part")
    if extra:
        raise ManifestError(f"outputs {sorted(extra)} are marked final but are not model outputs")
