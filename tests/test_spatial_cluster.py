"""A tiled model (`split --spatial`) served by real node processes: the planner spreads
the stripes over the nodes, each node computes its rows, and every answer equals the
whole model run locally for its own input (the references move with the input)."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import cli, running_cluster
from tests.reference import NODE_TOLERANCE, assert_answer, reference_set

pytestmark = [pytest.mark.tf, pytest.mark.slow]

STRIPES = 3


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """conv_stack (stride-2 "same", dilation, a residual Add and a Concatenate inside the
    region) at an odd height, in 3 stripes ending after the Concatenate."""
    from edgenode.model.graph import build_graph
    from edgenode.model.split import SpatialOptions, split_model
    from tests.model.test_spatial import conv_stack

    model = conv_stack(23)
    directory = tmp_path_factory.mktemp("tiled")
    options = SpatialOptions(stripes=STRIPES, speed=1e9, last_op="cat")
    manifest = split_model(model, directory, spatial=options).manifest
    return {"model": model, "graph": build_graph(model), "manifest": manifest, "dir": directory}


def test_stripes_run_on_different_nodes_and_answer_like_the_whole_model(
    tiled: dict[str, Any], tmp_path: Path
) -> None:
    from edgenode.transport import ControlClient, run
    from tests.model.test_spatial import image

    manifest = tiled["manifest"]
    assert manifest.tiles is not None
    stripes = manifest.tiles.stripes
    assert len(stripes) == STRIPES
    rows = [s.rows for s in manifest.tiles.slices]
    assert rows[0][0] == 0 and rows[-1][1] == 23  # the halos overlap, the border is padded
    assert all(a[1] > b[0] for a, b in itertools.pairwise(rows))
    with running_cluster(tiled["dir"], tmp_path, ("a", "b", "c")) as (nodes, found):
        owners = {
            a["node_id"]: range(a["start"], a["stop"])
            for st in found.values()
            for a in st["plan"]["assignments"]
            if a["replica"] == 0
        }
        # equal nodes, a fast link: one stripe each, run at once
        assert sorted(len([s for s in stripes if s in r]) for r in owners.values()) == [1, 1, 1]
        batches = [image(tiled["model"], seed, batch=1) for seed in range(6)]

        async def go() -> list[dict[str, Any]]:
            client = ControlClient(protocol=1)
            try:
                return list(
                    await asyncio.gather(
                        *(
                            client.infer(nodes[i % 3].address, b, timeout_s=60)
                            for i, b in enumerate(batches)
                        )
                    )
                )
            finally:
                await client.aclose()

        outs = run(go())
        table = cli("status", "--peer", nodes[0].address)
        assert table.returncode == 0, table.stderr
        for node in ("a", "b", "c"):  # each runs one stripe, and one of them the gather
            assert any(
                line.startswith(node) and ": stripe " in line for line in table.stdout.splitlines()
            ), table.stdout
        assert table.stdout.count("gather") == 1, table.stdout
        wide = cli("status", "--peer", nodes[0].address, "--wide", "--json")
        roles = [r for st in json.loads(wide.stdout) for r in st.get("roles", [])]
        assert roles.count("gather") == 1 and "stripe 0 (rows 0.." in " ".join(roles)
    refs = reference_set(tiled["graph"], batches, tolerance=NODE_TOLERANCE, manifest=manifest)
    for i, out in enumerate(outs):
        assert_answer(refs, i, out)
