"""`split_model(wire_format=...)` writes the cluster's wire format into the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.errors import ModelError
from edgenode.model.manifest import load_manifest
from edgenode.model.split import split_model
from tests.model import models


def test_split_writes_the_wire_format(tmp_path: Path) -> None:
    model = models.build("multi_io")
    plain = split_model(model, tmp_path / "f32", cuts=[3, 5]).manifest
    int8 = split_model(model, tmp_path / "i8", cuts=[3, 5], wire_format="int8").manifest
    assert plain.wire_format == "float32" and int8.wire_format == "int8"
    assert load_manifest(tmp_path / "i8") == int8
    assert '"wire_format": "int8"' in (tmp_path / "i8" / "manifest.json").read_text()
    assert "wire_format" not in (tmp_path / "f32" / "manifest.json").read_text()
    assert int8.identity != plain.identity


def test_split_refuses_an_unknown_wire_format(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown wire format 'int4'"):
        split_model(models.build("multi_io"), tmp_path / "x", wire_format="int4")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
