"""Where the log goes: stderr, or the systemd journal with fields (argv is parsed in
edgenode.cli).

Under systemd (stderr is the journal's stream, or `run --log-to journal`) a node logs
to the journal natively, each line with NODE_ID, PLAN_DIGEST, PEER_ID and REQUEST_ID fields
(edgenode/_journal.py), and no longer on stderr, which the journal would record twice.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from edgenode._journal import JOURNAL_SOCKET, JournalHandler, journal_stream

__all__ = ["LOG_FORMAT", "add_log_arguments", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """`run --log-to` and `--journal-socket`."""
    p.add_argument(
        "--log-to",
        choices=("auto", "journal", "stderr"),
        default="auto",
        help="where the log goes: the systemd journal, with NODE_ID, PLAN_DIGEST, PEER_ID and "
        "REQUEST_ID fields to filter on, or stderr; auto: the journal when stderr is "
        "the journal's stream (JOURNAL_STREAM, under systemd) (default: %(default)s)",
    )
    p.add_argument(
        "--journal-socket",
        default=JOURNAL_SOCKET,
        metavar="PATH",
        help="the journal's native socket (default: %(default)s)",
    )


def configure_logging(args: argparse.Namespace, *, environ: Mapping[str, str] = os.environ) -> None:
    """The root logger's level (-v, -vv) and handler (stderr, or the journal for `run`)."""
    verbose: int = args.verbose
    base: int = getattr(args, "log_level", logging.WARNING)
    level = base if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    # TensorFlow's C++ logging is read from the environment when it is first imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if verbose < 2 else "0")
    target = getattr(args, "log_to", "stderr")
    if target == "auto":
        target = "journal" if _stderr_is_the_journal(environ) else "stderr"
    if target == "journal":
        try:
            handler = JournalHandler(args.journal_socket)
        except OSError as exc:
            logging.basicConfig(level=level, format=LOG_FORMAT)
            logging.getLogger("edgenode").warning(
                "cannot log to the journal at %s (%s): logging to stderr",
                args.journal_socket,
                exc.strerror or exc,
            )
            return
        logging.basicConfig(level=level, handlers=[handler])
        return
    logging.basicConfig(level=level, format=LOG_FORMAT)


def _stderr_is_the_journal(environ: Mapping[str, str]) -> bool:
    if "JOURNAL_STREAM" not in environ:
        return False
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a stream without a descriptor
        return False
    return journal_stream(environ, fd)
