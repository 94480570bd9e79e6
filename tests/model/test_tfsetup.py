"""TensorFlow's process set-up: the thread cap must land before the runtime starts."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_cap_both_pools(threads: int) -> None:
    code = (
        "from edgenode.model.tfsetup import configure\n"
        f"configure(threads={threads})\n"
        "import tensorflow as tf\n"
        "t = tf.config.threading\n"
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(threads), str(threads)]
