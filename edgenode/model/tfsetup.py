"""TensorFlow process settings, applied before the first op runs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

__all__ = ["configure", "silenced_native_stderr"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def silenced_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up banners ignore
    TF_CPP_MIN_LOG_LEVEL and absl prints before logging is configured."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def configure(*, threads: int | None = None, quiet: bool = True) -> None:
    """Import TensorFlow (quietly), cap its thread pools at ``threads`` (None: one
    thread per core, TensorFlow's default), silence Keras' progress bars."""
    with silenced_native_stderr() if quiet else contextlib.nullcontext():
        import keras
        import tensorflow as tf

        if threads is not None:
            # Only before the runtime starts: the first op below starts it.
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:
                # Already started in this process: the first setting stays.
                logger.debug("TensorFlow threads already fixed; ignoring threads=%d", threads)
        tf.constant(0)  # the first op initialises the runtime and prints its banners

    keras.utils.disable_interactive_logging()
