"""[model] wire_format: how intermediate tensors travel, for a model the node cuts itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.config import parse_config
from edgenode.errors import ConfigError
from edgenode.model.manifest import WIRE_FORMATS


def test_default_is_float32() -> None:
    assert parse_config({}).model.wire_format == "float32"


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
def test_each_format_is_accepted(fmt: str) -> None:
    assert parse_config({"model": {"wire_format": fmt}}).model.wire_format == fmt


@pytest.mark.parametrize("value", ["int4", "FLOAT16", 8])
def test_other_values_are_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"model\.wire_format"):
        parse_config({"model": {"wire_format": value}})


def test_a_split_directory_carries_its_own(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.wire_format: only for a model the node cuts"):
        parse_config({"model": {"source": str(tmp_path), "wire_format": "int8"}})
    assert parse_config({"model": {"source": str(tmp_path)}}).model.wire_format == "float32"
