"""A node not told its speed measures it for the backend its parts run on (real processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenode.runtime.selfbench import MODEL_EFFICIENCY
from tests.nodes import node_config, start_nodes, statuses

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _advertised(tmp_path: Path, fmt: str) -> tuple[float, str]:
    from edgenode.model.split import split_model
    from tests.model import models

    directory = tmp_path / fmt
    split_model(models.build("multi_io"), directory, cuts=[2, 4, 6], fmt=fmt)
    config = node_config(tmp_path / fmt, speed_gflops=0.0)  # 0: the node measures it
    [node] = start_nodes(directory, tmp_path / fmt, [f"n-{fmt}"], config=config)
    try:
        address = node.wait_serving()
        [status] = statuses([address]).values()
        return float(status["node"]["speed"]), node.log()
    finally:
        node.stop()


def test_the_speed_is_measured_for_the_parts_backend(tmp_path: Path) -> None:
    """LiteRT reaches a larger share of the machine's matmul rate than Keras (selfbench's
    MODEL_EFFICIENCY): the same device advertises more with LiteRT parts, whatever
    ``model.backend`` says (keras by default), and the log names the parts' backend."""
    keras, keras_log = _advertised(tmp_path, "keras")
    litert, litert_log = _advertised(tmp_path, "litert")
    expected = MODEL_EFFICIENCY["litert"] / MODEL_EFFICIENCY["keras"]
    assert expected > 2  # else the check below could not tell
    assert 1.5 < litert / keras < 1.5 * expected, (keras, litert)
    assert ", keras, 1 thread per part," in keras_log, keras_log
    assert ", litert, 1 thread per part," in litert_log, litert_log
