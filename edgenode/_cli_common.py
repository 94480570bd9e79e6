"""What the command modules share: exit codes, progress messages, TensorFlow set-up."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "load_model_arg",
           "say", "setup_tensorflow"]  # fmt: skip

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
