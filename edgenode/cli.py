"""The ``edgenode`` command line: the only place that parses argv and configures logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from edgenode import __version__
from edgenode._cli_args import (
    Parser,
    int_list,
    non_negative_float,
    positive_float,
    positive_int,
    shape,
)
from edgenode._cli_cluster import DEFAULT_KEY, cmd_run
from edgenode._cli_common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    end_process,
    setup_tensorflow,
)
from edgenode._cli_demo import cmd_demo
from edgenode._cli_infer import cmd_infer
from edgenode._cli_keygen import cmd_keygen
from edgenode._cli_logging import add_log_arguments, configure_logging
from edgenode._cli_model import (
    add_plan_command,
    check_profile,
    check_split,
    cmd_profile,
    cmd_split,
)
from edgenode._cli_progress import add_progress_arguments
from edgenode._cli_status import DEFAULT_READY_TIMEOUT_S, cmd_status
from edgenode._cli_watch import add_watch_arguments
from edgenode.defaults import HOP_LATENCY_MS, LINK_MBPS
from edgenode.errors import ConfigError, EdgenodeError, UsageError
from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, WIRE_FORMATS

logger = logging.getLogger("edgenode")

# Defaults that a library module owns too. Importing it here would load numpy, TensorFlow or
# cryptography before the arguments are checked, so each is pinned to its owner by a test
# (tests/test_cli.py::test_cli_defaults_match_the_library).
DEFAULT_LINK_MBPS = LINK_MBPS  # gigabit Ethernet (edgenode.defaults: imports nothing)
DEFAULT_HOP_LATENCY_MS = HOP_LATENCY_MS
DEFAULT_SEED = 0  # edgenode.model.loading
DEFAULT_PROFILE_RUNS = 20  # edgenode.model.profile.DEFAULT_RUNS
DEFAULT_PROFILE_SEGMENTS = 16  # edgenode.model.profile.DEFAULT_SEGMENTS
DEFAULT_CREDENTIAL_DAYS = 3650  # edgenode.security.DEFAULT_DAYS

_Parser = Parser  # the parser class of every command, by its former name (tests/test_cli.py)


def _no_command(parser: argparse.ArgumentParser) -> int:
    """`edgenode` alone: the usage and one line per command, on stderr (a usage error)."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# -- model arguments shared by several commands ---------------------------------------


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="a .keras file, or a keras.applications name such as MobileNetV3Large",
    )
    p.add_argument(
        "--weights",
        default="none",
        metavar="none|imagenet|PATH",
        help="weights for a keras.applications model: none (random, seeded), "
        "imagenet (needs internet) or a local weights file",
    )
    p.add_argument(
        "--input-shape",
        type=shape,
        metavar="H,W,C",
        help="input shape without the batch dimension (default: the model's native size)",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for random weights")


# -- parser and entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = Parser(
        prog="edgenode",
        description="Run one neural network across several small devices as a peer-to-peer "
        "cluster.",
        epilog="`edgenode COMMAND --help` shows a command's options and their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"edgenode {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    # No command is a usage error that lists the commands, not argparse's one-line complaint.
    parser.set_defaults(func=lambda _args: _no_command(parser))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    split = sub.add_parser(
        "split",
        help="cut a model into parts and write them with manifest.json",
        description="Cut a model into parts (Keras sub-models with named inputs and "
        "outputs) and write part files plus manifest.json into a directory.",
    )
    _add_model_arguments(split)
    split.add_argument(
        "--parts", type=positive_int, help="number of parts (needed unless --at or --per-op)"
    )
    split.add_argument("--out", required=True, metavar="DIR", help="output directory")
    split.add_argument(
        "--format", choices=("keras", "litert"), default="keras", help="part file format"
    )
    split.add_argument(
        "--cut",
        choices=("balanced", "narrow", "even"),
        default="balanced",
        help="where to cut: balanced work with narrow cuts, the narrowest "
        "points within +-50%% of equal work, or equal operation counts",
    )
    split.add_argument(
        "--at", type=int_list, metavar="K,K,...", help="cut before these op positions"
    )
    split.add_argument("--per-op", action="store_true", help="one operation per part")
    split.add_argument(
        "--profile",
        metavar="FILE",
        help="balance on per-op latencies from `edgenode profile` instead of FLOPs",
    )
    split.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip checking that the chained parts reproduce the whole model",
    )
    split.add_argument(
        "--link-mbps",
        type=positive_float,
        metavar="MBIT_S",
        help="the network the cluster plans for, in Mbit/s, written into the manifest so "
        "every node plans alike; Wi-Fi is often 20-100 "
        f"(default: {DEFAULT_LINK_MBPS:g}, gigabit Ethernet)",
    )
    split.add_argument(
        "--hop-latency-ms",
        type=non_negative_float,
        metavar="MS",
        help=f"fixed cost of one hop for the planner (default: {DEFAULT_HOP_LATENCY_MS})",
    )
    split.add_argument(
        "--wire-format",
        choices=WIRE_FORMATS,
        default=DEFAULT_WIRE_FORMAT,
        help="how tensors travel between nodes, written into the manifest so every node "
        "agrees: float32 (bit-exact), float16 (half the bytes) or int8 (a quarter, with a "
        "per-tensor scale: for slow links; `benchmarks/wire_formats.py` measures the cost) "
        "(default: %(default)s)",
    )
    split.add_argument(
        "--spatial",
        type=positive_int,
        metavar="N",
        help="cut the early convolutional layers into N horizontal stripes that N nodes "
        "compute at once (one answer sooner), plus a part that gathers them; the region's "
        "depth is chosen with the cost model (instead of --parts/--at)",
    )
    split.add_argument(
        "--spatial-last-op",
        metavar="OP",
        help="with --spatial: end the striped region after this op instead of choosing",
    )
    split.add_argument(
        "--gflops",
        type=positive_float,
        help="with --spatial: the nodes' speed in GFLOP/s, to weigh halos against hops "
        "(default: measure here)",
    )
    split.add_argument("--tolerance", type=float, default=1e-6, help=argparse.SUPPRESS)
    split.add_argument(
        "--threads", type=positive_int, help="TensorFlow threads (default: one per core)"
    )
    split.set_defaults(needs_tensorflow=True, check=check_split, func=cmd_split)

    add_plan_command(sub, _add_model_arguments)

    prof = sub.add_parser(
        "profile",
        help="measure every operation's latency on this device",
        description="Time every operation of a model alone, then consecutive segments of "
        "operations as parts, on this device, and save per-operation latencies calibrated "
        "on the segments as JSON for `edgenode plan --profile` and `edgenode split --profile`.",
    )
    _add_model_arguments(prof)
    prof.add_argument("--out", default="profile.json", metavar="FILE", help="output file")
    prof.add_argument(
        "--runs", type=positive_int, default=DEFAULT_PROFILE_RUNS, help="timed runs per op"
    )
    prof.add_argument(
        "--segments",
        type=positive_int,
        default=DEFAULT_PROFILE_SEGMENTS,
        help="segments timed as parts to calibrate the ops",
    )
    prof.add_argument("--threads", type=positive_int, default=1, help="TensorFlow threads")
    prof.set_defaults(needs_tensorflow=True, check=check_profile, func=cmd_profile)

    run = sub.add_parser(
        "run",
        help="run a node (what the systemd service starts)",
        description="Run one node: find the others (mDNS or static peers), agree on a plan, "
        "load the parts this node owns and serve until SIGTERM/SIGINT.",
    )
    run.add_argument("--config", metavar="FILE", help="node.toml (default: built-in defaults)")
    run.add_argument("--name", help="override node.name")
    run.add_argument("--listen", metavar="HOST:PORT", help="override node.listen")
    run.add_argument("--model", metavar="PATH_OR_NAME", help="override model.source")
    run.add_argument("--backend", choices=("keras", "litert"), help="override model.backend")
    run.add_argument(
        "--interfaces", metavar="LIST", help="override cluster.interfaces: all, or 127.0.0.1,..."
    )
    run.add_argument(
        "--peer", action="append", metavar="HOST:PORT", help="static peer (repeatable)"
    )
    run.add_argument("--no-multicast", action="store_true", help="use only static peers")
    run.add_argument("--key", metavar="FILE", help="override security.key (cluster.pem)")
    run.add_argument(
        "--insecure", action="store_true", help="no TLS, no membership checks (development)"
    )
    run.add_argument(
        "--state-dir",
        default=os.path.join(os.path.expanduser("~"), ".local", "share", "edgenode"),
        metavar="DIR",
        help="where a node keeps the parts it cuts or fetches",
    )
    run.add_argument(
        "--threads", type=positive_int, help="override model.threads (threads per part)"
    )
    run.add_argument(
        "--ready-file",
        metavar="FILE",
        help="once the node serves, write FILE (atomically) as JSON: node_id, address "
        "(host:port) and pid; removed when the node stops",
    )
    add_log_arguments(run)
    run.set_defaults(func=cmd_run, log_level=logging.INFO, end_process=True)

    status = sub.add_parser(
        "status",
        help="show the cluster as a table",
        description="Ask a node (found by mDNS, or --peer) and every peer it knows for their "
        "status: the parts the agreed plan gives it, plan digest and agreement, its state "
        "(waiting for a plan, loading, unloading parts of an old plan, ready), requests that "
        "entered the cluster here, runs of its parts (for requests entered anywhere), the "
        "median time to run its parts once (the sum of each part's median over its last 256 "
        "runs), uptime and speed. --wide adds failed requests, memory and each part's median "
        "and p90 run time. --wait-ready N first waits until N nodes serve one agreed plan "
        "with their parts loaded (progress on stderr; exit 1 with what is missing when the "
        "timeout passes).",
    )
    status.add_argument("--peer", action="append", metavar="HOST:PORT", help="a node to ask")
    status.add_argument("--interfaces", metavar="LIST", help="where to browse (default: all)")
    status.add_argument("--wait", type=float, default=1.5, help="seconds to browse for nodes")
    # Not the cluster name in the --key credential: nothing ties it to cluster.name, and
    # with a key only nodes holding a credential of the same CA answer anyway.
    cluster_help = (
        "without --peer, only nodes whose mDNS records name this cluster (cluster.name in "
        "their node.toml); default: any node that answers as its record says"
    )
    status.add_argument("--cluster", metavar="NAME", help=cluster_help)
    _add_security_arguments(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--wide", action="store_true", help="every column (the default table fits 100 columns)"
    )
    status.add_argument(
        "--wait-ready",
        type=positive_int,
        metavar="N",
        help="first wait until N nodes serve one agreed plan with their parts loaded",
    )
    status.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_READY_TIMEOUT_S,
        metavar="SECONDS",
        help="how long --wait-ready waits",
    )
    add_watch_arguments(status)
    status.set_defaults(func=cmd_status)

    infer = sub.add_parser(
        "infer",
        help="run the cluster's model on images or .npy/.npz inputs",
        description="Send inputs to a node of the cluster (found by mDNS, or --peer) and "
        "print the answer: top classes for classifiers, a summary of every other output. "
        "Class labels are the model's own in --json (golden_retriever) and read with spaces "
        "for underscores in text (golden retriever). A batch answers every input it can: "
        "an input that cannot be read or does not fit the model, or whose request fails, "
        'is reported on stderr (and as an "error" entry in --json) while the others go '
        "on, and the exit status is then 1; a missing file or an unsupported file type "
        "stops the command before anything is sent. Progress goes to stderr: one line "
        "updated in place on a terminal, else a line per tenth of the inputs; --progress "
        "draws a bar with the rate and the time left.",
    )
    infer.add_argument("inputs", nargs="+", metavar="FILE", help="images, .npy/.npz, folders")
    infer.add_argument(
        "--peer",
        action="append",
        metavar="HOST:PORT",
        help="a node to send the requests to (repeatable); when it goes away they go to "
        "another node of its cluster",
    )
    infer.add_argument("--interfaces", metavar="LIST", help="where to browse (default: all)")
    infer.add_argument("--wait", type=float, default=1.5, help="seconds to browse for nodes")
    infer.add_argument("--cluster", metavar="NAME", help=cluster_help)
    _add_security_arguments(infer)
    infer.add_argument("--top", type=positive_int, default=5, help="classes to show")
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    infer.add_argument("--concurrency", type=positive_int, default=4, help="in flight")
    infer.add_argument(
        "--save-outputs",
        metavar="FILE.npz",
        help="write every final output to this .npz: for one input under the model's output "
        "names (probs); for several as FILE/NAME, FILE being the input's path from the "
        "deepest folder that holds them all (a/cat.jpg/probs and b/cat.jpg/probs for "
        "a/cat.jpg b/cat.jpg; cat.jpg/probs for a folder); each file may be given only once",
    )
    infer.add_argument("--json", action="store_true", help="machine-readable output")
    add_progress_arguments(infer)
    infer.set_defaults(func=cmd_infer)

    keygen = sub.add_parser(
        "keygen",
        help="create a cluster key (CA and member credential)",
        description="Create a cluster CA (OUT/ca.pem: keep it off the devices) and a member "
        "credential (OUT/cluster.pem: copy it to every device and point security.key at it). "
        "With --ca, issue another member credential from an existing CA. Key files are "
        "written 0600; a new OUT is created 0700, an existing OUT that its group or others "
        "can open is left as it is, with a warning (not with --quiet). Existing key files are "
        "never replaced without --force.",
    )
    keygen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    keygen.add_argument("--cluster", default="edgenode", help="cluster name in the certificates")
    keygen.add_argument(
        "--ca",
        metavar="CA.PEM",
        help="issue from this CA (the ca.pem of an earlier keygen, valid now), not a new one",
    )
    keygen.add_argument("--member", default="member", help="member name in its certificate")
    keygen.add_argument(
        "--days",
        type=int,
        default=DEFAULT_CREDENTIAL_DAYS,
        metavar="N",
        help="validity of the credential in days, at least 1",
    )
    keygen.add_argument(
        "--force",
        action="store_true",
        help="replace an existing OUT/cluster.pem (and OUT/ca.pem without --ca: the old CA "
        "is lost, so it can issue no more credentials)",
    )
    keygen.set_defaults(func=cmd_keygen)

    demo = sub.add_parser(
        "demo",
        help="start a local cluster, classify sample photos through it, stop it",
        description="Cut the model, start N nodes on 127.0.0.1, wait until they agree and "
        "have loaded their parts, send the sample photos (a cat, an espresso, a rocket) "
        "through the cluster, print each one's top classes, compare every answer with the "
        "whole model run locally (logits), time both, and stop the nodes.",
    )
    demo.add_argument("--nodes", type=positive_int, default=3, help="how many nodes")
    demo.add_argument(
        "--model",
        default="EfficientNetLite0",
        help="EfficientNetLite0 (ImageNet-trained, installed with edgenode[keras]) "
        "or a keras.applications name",
    )
    demo.add_argument(
        "--weights",
        metavar="none|imagenet|PATH",
        help="none (random, seeded), imagenet or a weights file (default: imagenet for "
        "EfficientNetLite0, whose weights come with edgenode[keras]; none for other models)",
    )
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for random weights")
    demo.add_argument("--parts", type=positive_int, default=8, help="parts to cut it into")
    demo.add_argument(
        "--image",
        action="append",
        metavar="FILE",
        help="an image; repeat for more (default: the three photos shipped with edgenode)",
    )
    demo.add_argument("--top", type=positive_int, default=3, help="classes shown per image")
    demo.add_argument("--requests", type=positive_int, default=20, help="timed requests per image")
    demo.set_defaults(needs_tensorflow=True, func=cmd_demo)
    return parser


def _add_security_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key",
        metavar="FILE",
        help=f"cluster credential (default: $EDGENODE_KEY, else {DEFAULT_KEY} if present)",
    )
    p.add_argument("--insecure", action="store_true", help="talk to an insecure cluster")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgenode`` console script."""
    # gRPC's C core logs every failed TLS handshake at info level; our own log says it once.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    code = _command(args)
    if getattr(args, "end_process", False):
        # `run`: the node has closed what it opened; the interpreter's teardown would hold
        # the process for seconds after its last log line (see end_process).
        end_process(code)
    return code


def _command(args: argparse.Namespace) -> int:
    """Run the command; an error is one line on stderr and an exit code."""
    try:
        if check := getattr(args, "check", None):
            check(args)  # what can be checked before TensorFlow's seconds of importing
        if getattr(args, "needs_tensorflow", False):
            setup_tensorflow(args)
        result: int = args.func(args)
    except (ConfigError, UsageError) as exc:
        sys.stderr.write(f"edgenode: error: {exc}\n")
        return EXIT_USAGE
    except EdgenodeError as exc:
        sys.stderr.write(f"edgenode: error: {exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write("edgenode: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if args.verbose >= 2:
            raise
        sys.stderr.write(
            f"edgenode: internal error: {type(exc).__name__}: {exc} (-vv shows the traceback)\n"
        )
        return EXIT_FAILURE
    return result


if __name__ == "__main__":
    sys.exit(main())
