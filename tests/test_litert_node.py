"""A node serving LiteRT parts does not import TensorFlow (~480 MiB resident), whatever
`model.backend` says; one serving Keras parts does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nodes import node_config, start_node

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def tensorflow_loaded(pid: int) -> bool:
    """Whether TensorFlow's native library is mapped into the process."""
    return "_pywrap_tensorflow_internal" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def litert_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("litert")
    split_model(models.build("fork_join"), directory, parts=2, fmt="litert")
    return directory


@pytest.mark.parametrize("kind", ["litert", "keras"])
def test_tensorflow_only_for_keras_parts(
    kind: str, litert_split: Path, split_dir: Path, tmp_path: Path
) -> None:
    directory = litert_split if kind == "litert" else split_dir
    node = start_node(directory, tmp_path, "a", config=node_config(tmp_path))  # backend: keras
    try:
        node.wait_serving()
        assert tensorflow_loaded(node.process.pid) is (kind == "keras"), node.log()
    finally:
        node.stop()
