"""The manifest format: round trip, validation with named fields, file verification."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from edgenode.model.manifest import LinkSpec, Manifest, ManifestError, load_manifest


def _sample() -> dict:
    def t(name: str, shape: tuple = (None, 4)) -> dict:
        return {"name": name, "shape": list(shape), "dtype": "float32"}

    return {
        "format": "edgenode-manifest/1",
        "model": {
            "name": "m",
            "sha256": "ab" * 32,
            "inputs": [t("input")],
            "outputs": ["head", "aux"],
        },
        "parts": [
            {
                "index": 0,
                "file": "part-0.keras",
                "sha256": "0" * 64,
                "inputs": [t("input")],
                "outputs": [{**t("aux"), "final": True}, {**t("mid"), "final": False}],
                "ops": {"start": 0, "stop": 3},
                "macs": 10,
                "flops": 25,
                "param_bytes": 64,
            },
            {
                "index": 1,
                "file": "part-1.keras",
                "sha256": "1" * 64,
                "inputs": [t("mid"), t("aux")],
                "outputs": [{**t("head"), "final": True}],
                "ops": {"start": 3, "stop": 5},
                "macs": 5,
                "flops": 12,
                "param_bytes": 32,
            },
        ],
    }


def test_round_trip_is_identical() -> None:
    manifest = Manifest.from_json(_sample())
    again = Manifest.from_json(json.loads(manifest.dumps()))
    assert again == manifest and again.digest == manifest.digest
    assert manifest.parts[1].inputs[0].shape == (None, 4)
    assert [o.final for o in manifest.parts[0].outputs] == [True, False]


def test_manifest_module_does_not_import_tensorflow() -> None:
    import subprocess

    code = (
        "import sys, edgenode.model.manifest\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _broken(mutate) -> dict:
    data = copy.deepcopy(_sample())
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other/2"), "unsupported 'other/2'"),
        (lambda d: d["model"].pop("sha256"), r"model\.sha256: missing"),
        (lambda d: d["parts"][0].update(flops="many"), r"parts\[0\]\.flops: expected int"),
        (lambda d: d["parts"][0].update(index=True), r"parts\[0\]\.index: expected int"),
        (lambda d: d["parts"][1].update(index=5), r"parts\[1\]\.index: expected 1, got 5"),
        (lambda d: d["parts"][0]["inputs"][0].update(shape=[None, -1]), r"inputs\[0\]\.shape"),
        (lambda d: d["parts"][1]["outputs"][0].update(final=False), "'head'.*not marked final"),
        (lambda d: d["parts"][0]["outputs"][1].update(final=True), "'mid'.*not model outputs"),
        (lambda d: d["parts"][1]["inputs"][0].update(name="ghost"), "'ghost' is neither"),
        (lambda d: d["parts"][0].update(file="../evil.keras"), "plain file name"),
        (lambda d: d.update(parts=[]), "parts: empty"),
        (lambda d: d.update(model=[]), "model: expected dict"),
        (lambda d: d.update(link={"latency_s": 0.001}), r"link\.bandwidth_bytes_per_s: missing"),
        (lambda d: d.update(link={"bandwidth_bytes_per_s": 0, "latency_s": 0}), "positive"),
        (lambda d: d.update(link={"bandwidth_bytes_per_s": 1e6, "latency_s": -1}), "0 or more"),
        (lambda d: d.update(link={"bandwidth_bytes_per_s": True, "latency_s": 0}), "positive"),
        (lambda d: d["model"].update(preprocess=3), r"model\.preprocess: expected str"),
        (lambda d: d["model"].update(preprocess="../x"), "not a preprocessing family"),
        (lambda d: d["parts"][0].update(activation_bytes=-1), r"parts\[0\]\.activation_bytes"),
        (lambda d: d["parts"][0].update(activation_bytes="x"), r"activation_bytes: expected int"),
        (lambda d: d["parts"][1].update(largest_weight_bytes=-3), r"largest_weight_bytes"),
    ],
)
def test_invalid_manifests_name_the_field(mutate, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(_broken(mutate))


def test_load_from_directory_and_verify_files(tmp_path: Path) -> None:
    from edgenode.model.manifest import file_sha256

    data = _sample()
    for part in data["parts"]:
        (tmp_path / part["file"]).write_bytes(part["file"].encode())
        part["sha256"] = file_sha256(tmp_path / part["file"])
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(tmp_path)
    manifest.verify_files(tmp_path)
    (tmp_path / "part-1.keras").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match=r"part 1: .* has sha256"):
        manifest.verify_files(tmp_path)
    (tmp_path / "part-0.keras").unlink()
    with pytest.raises(ManifestError, match=r"part 0: .* is missing"):
        manifest.verify_files(tmp_path)


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_cost_graph_links_parts_by_their_boundary_tensors() -> None:
    graph = Manifest.from_json(_sample()).cost_graph()
    assert [op.name for op in graph.ops] == ["part-0", "part-1"]
    assert [op.work for op in graph.ops] == [25.0, 12.0]
    by_name = {t.name: t for t in graph.tensors}
    assert by_name["input"].producer == -1 and by_name["input"].consumers == (0,)
    assert by_name["aux"].producer == 0 and by_name["aux"].consumers == (1,)
    assert by_name["aux"].final and by_name["head"].final and not by_name["mid"].final
    assert by_name["mid"].nbytes == 4 * 4  # (None, 4) float32, batch 1


def test_identity_ignores_part_files_but_not_the_cut() -> None:
    base = Manifest.from_json(_sample())
    rehashed = _sample()
    rehashed["parts"][0]["sha256"] = "f" * 64
    rehashed["created_by"] = "edgenode 9"
    other = Manifest.from_json(rehashed)
    assert other.identity == base.identity and other.digest != base.digest
    exported = _sample()  # the same cut exported for LiteRT: a mixed cluster works together
    for part in exported["parts"]:
        part["file"] = part["file"].rsplit(".", 1)[0] + ".tflite"
    litert = Manifest.from_json(exported)
    assert litert.parts[0].format == "litert" and litert.identity == base.identity
    recut = _sample()
    recut["parts"][0]["ops"]["stop"] = 4
    assert Manifest.from_json(recut).identity != base.identity


def test_the_link_the_cluster_plans_for_travels_in_the_manifest_and_its_identity() -> None:
    """Nodes that plan for different networks compute different plans: the link is part
    of the identity, so such nodes see each other as serving another model."""
    base = Manifest.from_json(_sample())
    assert base.link is None and "link" not in base.to_json()  # gigabit: nothing written
    wifi = _sample()
    wifi["link"] = {"bandwidth_bytes_per_s": 2.5e6, "latency_s": 0.003}
    manifest = Manifest.from_json(wifi)
    assert manifest.link == LinkSpec(bandwidth_bytes_per_s=2.5e6, latency_s=0.003)
    assert Manifest.from_json(json.loads(manifest.dumps())) == manifest
    assert manifest.identity != base.identity


def test_the_preprocessing_travels_in_the_manifest_and_its_identity() -> None:
    from edgenode.model.preprocess import preprocess_of

    plain = Manifest.from_json(_sample())
    assert plain.model.preprocess is None and "preprocess" not in plain.to_json()["model"]
    data = _sample()
    data["model"]["preprocess"] = "resnet50"
    recorded = Manifest.from_json(data)
    assert recorded.model.preprocess == "resnet50"
    assert Manifest.from_json(recorded.to_json()) == recorded
    assert recorded.identity != plain.identity  # clients would send other inputs
    # Clients use what the manifest says, and guess from the name only without it.
    assert preprocess_of("MobileNetV3Large", "resnet50") == "resnet50"
    assert preprocess_of("MobileNetV3Large", None) == "mobilenet_v3"
    assert preprocess_of("my_detector", None) is None


def _tiled_json() -> dict:
    from tests.runtime.test_stages import tiled

    return tiled().to_json()


def test_tiles_round_trip_and_enter_the_identity_and_cost_graph() -> None:
    data = _tiled_json()
    manifest = Manifest.from_json(json.loads(json.dumps(data)))
    assert manifest.to_json() == data
    assert manifest.tiles is not None and manifest.tiles.stripes == (1, 2)
    untiled = copy.deepcopy(data)
    del untiled["tiles"]
    untiled["parts"][1]["inputs"][0]["name"] = "image"
    untiled["parts"][2]["inputs"][0]["name"] = "image"
    assert Manifest.from_json(untiled).identity != manifest.identity
    graph = manifest.cost_graph()
    assert graph.tiles is not None and graph.tiles.gather == 3
    rows = {t.name: t for t in graph.tensors}
    # a row slice is made where its source is, and costs its own rows only
    assert rows["image.rows4_10"].producer == 0 and rows["image.rows4_10"].consumers == (2,)
    assert rows["image.rows4_10"].nbytes == 6 * 4 * 2 * 4


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t["slices"][0].update(rows=[6, 2]), r"tiles.slices\[0\].rows"),
        (
            lambda t: t["slices"][0].update(rows=[0, 11], name="image.rows0_11"),
            r"past the 10 rows",
        ),
        (lambda t: t["slices"][1].update(name="image.rows0_1"), r"tiles.slices\[1\].name"),
        (
            lambda t: t["slices"][0].update(source="nothing", name="nothing.rows0_6"),
            r"no tensor with rows",
        ),
        (lambda t: t.update(stripes=[1, 3]), "consecutive"),
        (lambda t: t.update(gather=1), "the gather after the stripes"),
        (lambda t: t.update(gather=True), r"tiles.gather"),
        (lambda t: t.pop("slices"), r"tiles.slices: missing"),
    ],
)
def test_invalid_tiles_name_the_field(mutate, message: str) -> None:
    data = _tiled_json()
    mutate(data["tiles"])
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(data)


def test_layer_working_sets_travel_in_the_manifest_and_its_cost_graph() -> None:
    from edgenode.planning import MEMORY_MODELS, PLAIN, stage_memory_bytes

    plain = Manifest.from_json(_sample())  # an older manifest: no working sets
    assert "activation_bytes" not in plain.to_json()["parts"][0]
    data = _sample()
    data["parts"][0]["activation_bytes"] = 5 * 2**20
    data["parts"][0]["largest_weight_bytes"] = 40
    recorded = Manifest.from_json(data)
    assert recorded.parts[0].activation_bytes == 5 * 2**20
    assert recorded.parts[0].largest_weight_bytes == 40
    assert Manifest.from_json(recorded.to_json()) == recorded
    assert recorded.identity != plain.identity  # nodes would plan differently
    graph = recorded.cost_graph()
    # Whatever its part files' format: a Keras node and a LiteRT node on one cut plan alike,
    # each with its own backend's model (NodeSpec.memory).
    assert graph.memory is PLAIN
    assert graph.ops[0].activation_bytes == 5 * 2**20
    assert (graph.ops[0].heaviest_weight_bytes, graph.ops[1].heaviest_weight_bytes) == (40, 32)
    litert = MEMORY_MODELS["litert"]
    assert stage_memory_bytes(graph, 0, 1, litert) > stage_memory_bytes(
        plain.cost_graph(), 0, 1, litert
    )
