"""The manifest's wire format: round trip, identity, validation and the cost of a hop."""

from __future__ import annotations

import json

import pytest

from edgenode.model.manifest import WIRE_FORMATS, Manifest, ManifestError, wire_nbytes
from edgenode.planning import Link, NodeSpec, plan_cluster
from tests.model.test_manifest import _sample

MID = 10_000  # elements of the tensor between the parts


def _data(wire_format: str | None = None) -> dict:
    data = _sample()
    for part in data["parts"]:
        for t in [*part["inputs"], *part["outputs"]]:
            if t["name"] == "mid":
                t["shape"] = [None, MID]
    if wire_format is not None:
        data["wire_format"] = wire_format
    return data


def test_older_manifest_without_it_means_float32_and_keeps_its_identity() -> None:
    old = Manifest.from_json(_data())
    assert old.wire_format == "float32"
    assert "wire_format" not in old.to_json()  # the default is not written
    explicit = Manifest.from_json(_data("float32"))
    assert explicit == old and explicit.identity == old.identity and explicit.digest == old.digest


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
def test_each_format_round_trips(fmt: str) -> None:
    manifest = Manifest.from_json(_data(fmt))
    assert manifest.wire_format == fmt
    again = Manifest.from_json(json.loads(manifest.dumps()))
    assert again == manifest and again.digest == manifest.digest
    assert again.identity == manifest.identity


def test_each_format_is_another_cluster() -> None:
    """Nodes sending another format are another cluster: identities and plan digests differ."""
    manifests = [Manifest.from_json(_data(f)) for f in WIRE_FORMATS]
    assert len({m.identity for m in manifests}) == len(WIRE_FORMATS)
    assert len({m.digest for m in manifests}) == len(WIRE_FORMATS)
    members = [NodeSpec(node_id=n, speed=1e3, memory_bytes=1 << 30) for n in ("a", "b")]
    digests = {
        plan_cluster(m.cost_graph(), members, Link(), manifest_digest=m.identity).digest
        for m in manifests
    }
    assert len(digests) == len(WIRE_FORMATS)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("int4", "manifest.wire_format: unknown 'int4'; expected one of float32, float16, int8"),
        ("INT8", "manifest.wire_format: unknown 'INT8'"),
        (8, "manifest.wire_format: expected str, got 8"),
        (None, "manifest.wire_format: expected str, got None"),
    ],
)
def test_unknown_formats_are_refused_naming_the_field(value: object, message: str) -> None:
    data = _data()
    data["wire_format"] = value
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(data)


def test_hop_bytes_in_the_cost_graph_shrink_with_the_format() -> None:
    graphs = {f: Manifest.from_json(_data(f)).cost_graph() for f in WIRE_FORMATS}
    nbytes = {f: {t.name: t.nbytes for t in g.tensors} for f, g in graphs.items()}
    assert nbytes["float32"]["mid"] == MID * 4
    assert nbytes["float16"]["mid"] == MID * 2
    assert MID < nbytes["int8"]["mid"] <= MID + 16  # a quarter, plus scale and zero point
    for fmt in WIRE_FORMATS:  # the client's inputs and the final outputs travel exact
        for name in ("input", "aux", "head"):
            assert nbytes[fmt][name] == nbytes["float32"][name] == 4 * 4


def test_on_a_slow_link_only_int8_makes_the_cut_worth_a_hop() -> None:
    """1 MB/s: 40 ms to send ``mid`` as float32, 20 ms as float16, 10 ms as int8, against
    25 ms and 12 ms of work: only int8 lowers the bottleneck below one node's 37 ms."""
    members = [NodeSpec(node_id=n, speed=1e3, memory_bytes=1 << 30) for n in ("a", "b")]
    slow = Link(bandwidth_bytes_per_s=1e6, latency_s=0.001)
    plans = {}
    for fmt in WIRE_FORMATS:
        m = Manifest.from_json(_data(fmt))
        plans[fmt] = plan_cluster(m.cost_graph(), members, slow, manifest_digest=m.identity)
    stages = {f: sum(a.replica == 0 for a in p.assignments) for f, p in plans.items()}
    assert stages == {"float32": 1, "float16": 1, "int8": 2}
    assert plans["int8"].bottleneck_s < plans["float32"].bottleneck_s


def test_wire_nbytes_encodes_float32_only() -> None:
    from edgenode.model.manifest import TensorSpec

    f32 = TensorSpec(name="a", shape=(None, 8, 8), dtype="float32")
    i32 = TensorSpec(name="b", shape=(None, 8, 8), dtype="int32")
    assert [wire_nbytes(f32, f) for f in WIRE_FORMATS] == [256, 128, 64 + 12]
    assert {wire_nbytes(i32, f) for f in WIRE_FORMATS} == {256}
