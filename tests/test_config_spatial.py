"""[model] spatial: a node that cuts the model itself cuts it into spatial stripes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.config import ModelConfig, parse_config
from edgenode.defaults import SPATIAL_GFLOPS
from edgenode.errors import ConfigError


def test_default_is_off() -> None:
    model = parse_config({}).model
    assert model.spatial == 0 and model.spatial_gflops == SPATIAL_GFLOPS


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"spatial": 1}, r"model\.spatial: 0 \(off\) or at least 2"),
        ({"spatial": -2}, r"model\.spatial: 0 \(off\) or at least 2"),
        ({"spatial": "2"}, r"model\.spatial: expected an integer"),
        ({"spatial": 2, "spatial_gflops": 0}, r"model\.spatial_gflops: must be positive"),
    ],
)
def test_bad_values_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"model": values})


def test_a_split_directory_carries_its_own_cut(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.spatial: only for a model the node cuts"):
        parse_config({"model": {"source": str(tmp_path), "spatial": 2}})


@pytest.mark.tf
def test_a_node_cuts_stripes_the_same_way_every_time(tmp_path: Path) -> None:
    from edgenode.node import prepare_model
    from tests.model.test_spatial import conv_stack

    path = tmp_path / "stack.keras"
    conv_stack(23).save(path)
    config = ModelConfig(source=str(path), spatial=3)
    first, directory = prepare_model(config, tmp_path / "a")
    assert first.tiles is not None and len(first.tiles.stripes) == 3
    assert "spatial3" in directory.name
    again, _ = prepare_model(config, tmp_path / "b")
    assert again.identity == first.identity  # every node cuts alike: they can cooperate
