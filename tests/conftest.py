"""Shared test set-up: quiet TensorFlow, markers, and a guard against leaked threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

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
