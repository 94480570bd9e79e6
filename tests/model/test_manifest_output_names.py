"""The model's own output names in the manifest: recorded, validated, older manifests."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest

from edgenode.model.manifest import Manifest, ManifestError


def _older() -> dict:
    """A manifest as written before output names were recorded."""

    def t(name: str, width: int) -> dict:
        return {"name": name, "shape": [None, width], "dtype": "float32"}

    return {
        "format": "edgenode-manifest/1",
        "created_by": "edgenode 0.1.0",
        "model": {
            "name": "m",
            "sha256": "ab" * 32,
            "inputs": [t("features", 6)],
            "outputs": ["cls_head", "inner.inner_dense", "reg_head"],
            "ops": 4,
            "macs": 1,
            "flops": 2,
            "param_bytes": 3,
        },
        "parts": [
            {
                "index": 0,
                "file": "part-0.keras",
                "sha256": "0" * 64,
                "inputs": [t("features", 6)],
                "outputs": [{**t("inner.inner_dense", 6), "final": True}],
                "ops": {"start": 0, "stop": 1},
                "macs": 0,
                "flops": 1,
                "param_bytes": 1,
            },
            {
                "index": 1,
                "file": "part-1.keras",
                "sha256": "1" * 64,
                "inputs": [t("inner.inner_dense", 6)],
                "outputs": [
                    {**t("cls_head", 4), "final": True},
                    {**t("reg_head", 2), "final": True},
                ],
                "ops": {"start": 1, "stop": 4},
                "macs": 1,
                "flops": 1,
                "param_bytes": 2,
            },
        ],
    }


def _named() -> dict:
    data = _older()
    data["model"]["output_names"] = ["cls", "emb", "reg"]
    return data


def _identity_before_output_names(data: dict) -> str:
    """Manifest.identity as computed before output names existed (the same recipe)."""
    data = copy.deepcopy(data)
    data.pop("created_by")
    for part in data["parts"]:
        part.pop("sha256")
        part.pop("file")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_an_older_manifest_parses_answers_with_tensor_names_and_keeps_its_identity() -> None:
    data = _older()
    manifest = Manifest.from_json(data)
    assert manifest.model.output_names is None
    assert manifest.model.answer_names == manifest.model.outputs
    assert "output_names" not in manifest.to_json()["model"]  # nothing added on the way
    assert manifest.to_json() == data
    assert manifest.identity == _identity_before_output_names(data)
    values = {t: np.full(1, i) for i, t in enumerate(manifest.model.outputs)}
    assert manifest.model.name_outputs(values) == values


def test_output_names_round_trip_and_key_the_answer() -> None:
    manifest = Manifest.from_json(_named())
    assert manifest.model.output_names == ("cls", "emb", "reg")
    assert manifest.model.answer_names == ("cls", "emb", "reg")
    again = Manifest.from_json(json.loads(manifest.dumps()))
    assert again == manifest and again.digest == manifest.digest
    by_tensor = {
        "reg_head": np.zeros((1, 2)),
        "cls_head": np.zeros((1, 4)),
        "inner.inner_dense": np.zeros((1, 6)),
    }
    answer = manifest.model.name_outputs(by_tensor)
    assert list(answer) == ["cls", "emb", "reg"]  # the model's order
    assert {k: v.shape[-1] for k, v in answer.items()} == {"cls": 4, "emb": 6, "reg": 2}


def test_output_names_are_part_of_the_identity() -> None:
    """The origin keys its answer by these names: nodes whose manifests name the outputs
    differently (or not at all) would answer the same request differently."""
    older, named = Manifest.from_json(_older()), Manifest.from_json(_named())
    renamed = _named()
    renamed["model"]["output_names"] = ["cls", "embedding", "reg"]
    assert len({older.identity, named.identity, Manifest.from_json(renamed).identity}) == 3
    rehashed = _named()
    rehashed["parts"][0]["sha256"] = "f" * 64
    assert Manifest.from_json(rehashed).identity == named.identity


def _with(mutate) -> dict:
    data = _named()
    mutate(data["model"])
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(output_names="cls"), r"model\.output_names: expected list"),
        (lambda m: m.update(output_names=["cls", "emb"]), "2 names for 3 model outputs"),
        (lambda m: m.update(output_names=["cls", "emb", "reg", "x"]), "4 names for 3"),
        (lambda m: m.update(output_names=["cls", "cls", "reg"]), r"\[1\]: 'cls' names two"),
        (lambda m: m.update(output_names=["cls", 7, "reg"]), r"output_names\[1\]: expected str"),
        (lambda m: m.update(output_names=["cls", "", "reg"]), r"\[1\]: '' is empty"),
        (lambda m: m.update(output_names=["cls", "!end", "reg"]), "'!end' starts with '!'"),
        (
            lambda m: m.update(outputs=["cls_head", "cls_head", "reg_head"]),
            r"model\.outputs\[1\]: 'cls_head' is listed twice",
        ),
    ],
)
def test_invalid_output_names_name_the_field(mutate, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(_with(mutate))
