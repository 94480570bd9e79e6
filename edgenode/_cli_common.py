"""What the command modules share: exit codes, progress messages, TensorFlow set-up,
checks that come before it, and a quick end of the process."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, NoReturn

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "check_model_arg",
           "end_process", "load_model_arg", "say", "setup_tensorflow"]  # fmt: skip

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def check_model_arg(args: argparse.Namespace) -> None:
    """--model and --weights, checked before TensorFlow is imported (which takes seconds)."""
    from edgenode.model.loading import check_model_source

    check_model_source(args.model, weights=args.weights)


def end_process(code: int) -> NoReturn:
    """Flush the logs and exit with ``code`` now, without the interpreter's teardown.

    Once a node has closed what it opened, that teardown only garbage-collects the objects
    of TensorFlow and Keras: 2-5 s (more with several processes on few cores) between a
    node's last log line and its exit, spent in finalize_modules' collections.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def load_model_arg(args: argparse.Namespace) -> Any:
    from edgenode.model.loading import load_model

    say(args, f"loading {args.model}")
    return load_model(
        args.model, weights=args.weights, input_shape=args.input_shape, seed=args.seed
    )


def say(args: argparse.Namespace, message: str) -> None:
    """Progress for long work, on stderr so stdout stays machine-readable."""
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"edgenode: {message}\n")
        sys.stderr.flush()


def setup_tensorflow(args: argparse.Namespace, *, threads: int | None = None) -> None:
    """TensorFlow's set-up for a command: ``threads``, else the command's --threads."""
    from edgenode.model.tfsetup import configure

    configure(threads=threads or getattr(args, "threads", None), quiet=args.verbose < 2)
