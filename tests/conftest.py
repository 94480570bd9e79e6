"""Shared test set-up: quiet TensorFlow, markers, and a guard against leaked threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, node_config, running_cluster

# Read by TensorFlow when it is first imported; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Read by gRPC's C core when grpc is first imported: no info line per failed TLS handshake.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Every test stops the Python threads it starts."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fork/join test model in 4 parts, split once for every module that starts nodes
    on it (read-only; a module that needs another split defines its own ``split_dir``)."""
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path_factory.mktemp("split")
    split_model(models.build("fork_join"), directory, parts=4)
    return directory


@pytest.fixture
def metrics_cluster(
    split_dir: Path, tmp_path: Path
) -> Iterator[tuple[list[NodeProcess], dict[str, Any]]]:
    """Nodes a and b serving ``split_dir`` with metrics on (port 0: each node picks a free
    port and logs it)."""
    config = node_config(tmp_path)
    metrics = '[node]\nmetrics_listen = "127.0.0.1:0"\n'
    config.write_text(config.read_text().replace("[node]\n", metrics, 1))
    with running_cluster(split_dir, tmp_path, ("a", "b"), config=config) as found:
        yield found
