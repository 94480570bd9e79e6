"""Real nodes answer under the model's own output names: `infer --json`, `--save-outputs`,
the text report and the Python client show "cls", "reg", "emb", never internal tensors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from edgenode.verify import ReferenceSet
from tests.nodes import cli as _cli
from tests.nodes import running_cluster

pytestmark = [pytest.mark.tf, pytest.mark.slow]

ATOL = 1e-5
NAMES = ["cls", "emb", "reg"]  # the model's dict keys, in the model's (sorted) order


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory):
    """The model with dict outputs, cut so that each part produces one final output."""
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("named-split")
    model = models.build("named_outputs")
    manifest = split_model(model, directory, cuts=[1, 2]).manifest
    assert manifest.model.outputs == ("cls_head", "inner.inner_dense", "reg_head")
    return model, manifest, directory


@pytest.fixture(scope="module")
def nodes(named, tmp_path_factory: pytest.TempPathFactory):
    """Three nodes serving it, started once: these tests only send requests."""
    _, _, directory = named
    tmp_path = tmp_path_factory.mktemp("named-nodes")
    # slow pinned speeds: the finals come from several nodes
    with running_cluster(directory, tmp_path) as (started, found):
        assert len([st for st in found.values() if st["parts"]]) >= 2
        yield started


def _cases(model, tmp_path: Path) -> list[tuple[Path, dict[str, np.ndarray]]]:
    """Two input files and Keras' own answer for each (a dict keyed by the model)."""
    from tests.model import models

    cases = []
    for seed in (1, 2):
        inputs = models.sample_inputs(model, seed=seed, batch=1)
        path = tmp_path / f"x{seed}.npz"
        np.savez(path, **inputs)
        out = model(inputs["features"], training=False)
        cases.append((path, {k: np.asarray(v) for k, v in out.items()}))
    assert sorted(cases[0][1]) == NAMES
    return cases


def _check(cases, index: int, answer) -> None:
    """``answer`` is Keras' own for case ``index`` and no other's: the references must move
    with the input, so a crossed answer cannot pass (ReferenceSet)."""
    refs = ReferenceSet([want for _, want in cases], tolerance=ATOL)
    verdict = refs.check(index, {name: np.asarray(answer[name], np.float32) for name in NAMES})
    assert verdict.ok, verdict.detail


def test_infer_json_and_saved_outputs_use_the_models_names(named, nodes, tmp_path: Path) -> None:
    model, _, _ = named
    cases = _cases(model, tmp_path)
    saved = tmp_path / "y.npz"
    out = _cli("infer", *(str(p) for p, _ in cases), "--peer", nodes[1].address,
               "--json", "--save-outputs", str(saved))  # fmt: skip
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert [r["file"] for r in results] == [str(p) for p, _ in cases]
    got = np.load(saved)
    assert sorted(got.files) == sorted(f"{p.name}/{n}" for p, _ in cases for n in NAMES)
    for i, (result, (path, _)) in enumerate(zip(results, cases, strict=True)):
        assert list(result["outputs"]) == NAMES
        _check(cases, i, result["outputs"])
        _check(cases, i, {name: got[f"{path.name}/{name}"] for name in NAMES})


def test_the_text_report_and_a_single_saved_file_use_the_models_names(
    named, nodes, tmp_path: Path
) -> None:
    model, _, _ = named
    cases = _cases(model, tmp_path)
    path = cases[0][0]
    saved = tmp_path / "one.npz"
    out = _cli("infer", str(path), "--peer", nodes[0].address, "--save-outputs", str(saved))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in NAMES:
        assert any(line.startswith(f"  {name}: shape (1, ") for line in lines), out.stdout
    assert "inner" not in out.stdout and "_head" not in out.stdout  # internal tensor names
    got = np.load(saved)
    assert sorted(got.files) == NAMES
    _check(cases, 0, got)


def test_the_python_client_returns_the_models_names(named, nodes, tmp_path: Path) -> None:
    from edgenode.transport import ControlClient, run

    model, _, _ = named
    cases = _cases(model, tmp_path)
    inputs = [dict(np.load(path)) for path, _ in cases]

    async def go() -> list[dict[str, np.ndarray]]:
        client = ControlClient(protocol=1)
        try:
            return list(
                await asyncio.gather(
                    *(client.infer(nodes[i].address, x, timeout_s=60) for i, x in enumerate(inputs))
                )
            )
        finally:
            await client.aclose()

    for i, answer in enumerate(run(go())):
        assert list(answer) == NAMES
        _check(cases, i, answer)
