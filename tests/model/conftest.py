"""Model tests need TensorFlow: all are marked ``tf``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/model/" in str(item.path) and "test_manifest" not in item.path.name:
            item.add_marker(pytest.mark.tf)
