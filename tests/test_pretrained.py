"""The ImageNet-trained EfficientNetLite0 through a real 3-node cluster, Keras and LiteRT
parts: `edgenode infer` names the right classes and returns the local model's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.model.test_efficientnet_lite import EXPECTED, IMAGES
from tests.nodes import node_config, running_cluster
from tests.reference import APPLICATION_TOLERANCE

pytestmark = [pytest.mark.tf, pytest.mark.slow]

# Logits of magnitude ~10 in float32: a node's traced function with one thread rounds
# differently from the eager whole model (measured up to 1.2e-5, LiteRT alike).
TOLERANCE = {"keras": APPLICATION_TOLERANCE, "litert": APPLICATION_TOLERANCE}


@pytest.fixture(scope="module")
def references():
    from edgenode.client import load_inputs
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import load_model
    from edgenode.model.slicing import run_model

    model = load_model("EfficientNetLite0", weights="imagenet")
    graph = build_graph(model)
    specs = [graph.tensors[n] for n in graph.inputs]
    refs = []
    for name in EXPECTED:
        batch = load_inputs(IMAGES / name, specs, preprocess="efficientnet_lite")
        refs.append(run_model(graph, batch))
    return refs


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "-q", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["keras", "litert"])
def test_pretrained_lite0_through_three_nodes(fmt: str, references, tmp_path: Path) -> None:
    from edgenode.verify import ReferenceSet

    parts = tmp_path / "parts"
    out = _cli("split", "--model", "EfficientNetLite0", "--weights", "imagenet", "--parts", "5",
               "--format", fmt, "--out", str(parts))  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = node_config(tmp_path, speed_gflops=0.5, extra=f'[model]\nbackend = "{fmt}"\n')
    with running_cluster(parts, tmp_path, config=config) as (nodes, found):
        assert sum(1 for st in found.values() if st["parts"]) >= 2
        saved = tmp_path / "answers.npz"
        photos = [str(IMAGES / name) for name in EXPECTED]
        out = _cli("infer", *photos, "--peer", nodes[0].address, "--insecure", "--json",
                   "--top", "5", "--save-outputs", str(saved))  # fmt: skip
        assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["results"]
    for entry, (name, wanted) in zip(report, EXPECTED.items(), strict=True):
        assert Path(entry["file"]).name == name
        (classes,) = entry["outputs"].values()
        labels = [c["label"] for c in classes]
        assert wanted & set(labels), f"{name}: top 5 {labels}"
    assert report[0]["outputs"] and len({e_top1(e) for e in report}) == 3
    check = ReferenceSet(references, tolerance=TOLERANCE[fmt])
    answers = np.load(saved)
    for i, name in enumerate(EXPECTED):
        got = {k.split("/", 1)[1]: answers[k] for k in answers.files if k.startswith(f"{name}/")}
        verdict = check.check(i, got)
        assert verdict.ok, f"{name}: {verdict.detail}"


def e_top1(entry: dict) -> str:
    (classes,) = entry["outputs"].values()
    return str(classes[0]["label"])
