"""`edgenode run`, and what the cluster commands share: the client credential and finding
nodes (status: edgenode/_cli_status.py, infer: edgenode/_cli_infer.py; argv is parsed in
edgenode.cli)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgenode._cli_common import EXIT_OK, setup_tensorflow

if TYPE_CHECKING:
    from edgenode.client.cluster import ClusterClient, Found
    from edgenode.config import Config
    from edgenode.runtime.parts import RunnerFactory
    from edgenode.transport import Security
from edgenode.errors import UsageError

__all__ = ["DEFAULT_KEY", "check_ready_file", "client_security", "cmd_run", "find_nodes"]


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from edgenode._systemd import notify
    from edgenode.config import Config, load_config
    from edgenode.logfields import bind_node
    from edgenode.node import Node, node_security
    from edgenode.planning import ClusterPlan
    from edgenode.transport import run, tune_malloc

    config = load_config(Path(args.config)) if args.config else Config()
    config = config.override("node", name=args.name, listen=args.listen)
    config = config.override("model", source=args.model, backend=args.backend, threads=args.threads)
    interfaces = args.interfaces.split(",") if args.interfaces else None
    if interfaces == ["all"]:
        interfaces = None
        config = config.override("cluster", interfaces="all")
    config = config.override(
        "cluster",
        interfaces=tuple(interfaces) if interfaces else None,
        peers=tuple(args.peer) if args.peer else None,
        multicast=False if args.no_multicast else None,
    )
    if args.insecure:
        config = config.override("security", key="", insecure=True)
    elif args.key:
        config = config.override("security", key=args.key, insecure=False)
    # NODE_ID (and, once it serves a plan, PLAN_DIGEST) of every line this node logs.
    tags = bind_node(config.node.node_id)
    ready_file = Path(args.ready_file) if args.ready_file else None
    _check_before_tensorflow(config, ready_file)
    security = node_security(config)  # a missing or bad key: one line before anything starts
    if _needs_tensorflow(config):
        setup_tensorflow(args, threads=config.model.threads)
    tune_malloc()
    state_dir = Path(args.state_dir)
    runners = _test_mutation(config.model.threads)

    def on_agreed(plan: ClusterPlan) -> None:
        tags.plan_changed(plan.digest)  # the plan served: its parts are loaded
        # systemd (Type=notify) counts the node as started once it serves a plan.
        parts = plan.parts_of(config.node.node_id)
        share = f"parts {parts.start}-{parts.stop - 1}" if parts else "idle"
        notify("READY=1", f"STATUS=serving plan {plan.digest[:12]} ({share})")

    async def main() -> None:
        stop = asyncio.Event()

        def on_stop() -> None:
            notify("STOPPING=1", "STATUS=leaving the cluster")
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        node = Node(
            config,
            state_dir=state_dir,
            runner_factory=runners,
            security=security,
            ready_file=ready_file,
        )
        await node.run(stop, on_agreed=on_agreed)

    run(main())
    return EXIT_OK


def _needs_tensorflow(config: Config) -> bool:
    """Whether this node imports TensorFlow (~480 MiB resident): to cut a model itself, or
    to run Keras parts. A split directory's parts decide, not ``model.backend``: a node
    serving LiteRT parts needs none (an unreadable manifest fails later, in one line)."""
    from edgenode.errors import ManifestError
    from edgenode.model.manifest import load_manifest

    source = Path(config.model.source)
    if not source.is_dir():
        return True
    try:
        return any(part.format == "keras" for part in load_manifest(source).parts)
    except ManifestError:
        return False


def _check_before_tensorflow(config: Config, ready_file: Path | None = None) -> None:
    """The listen addresses, the model and the ready file's directory, checked in a moment
    rather than after the seconds TensorFlow takes to import: the errors a mistyped command
    line meets first."""
    from edgenode.config import parse_address
    from edgenode.model.loading import check_model_source
    from edgenode.transport import check_listen_address

    if ready_file is not None:
        check_ready_file(ready_file)
    check_listen_address(*parse_address(config.node.listen, key="node.listen"))
    if config.node.metrics_listen:
        check_listen_address(*parse_address(config.node.metrics_listen, key="node.metrics_listen"))
    if not Path(config.model.source).is_dir():
        check_model_source(config.model.source, weights=config.model.weights)


def check_ready_file(path: Path) -> None:
    """UsageError unless ``path`` can be written later: its directory exists, and it is not
    a directory itself."""
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"--ready-file: directory {directory} does not exist")
    if path.is_dir():
        raise UsageError(f"--ready-file: {path} is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--ready-file: directory {directory} is not writable")


def _test_mutation(threads: int) -> RunnerFactory | None:
    """TEST ONLY: mutation tests set EDGENODE_TEST_MUTATE=KIND@PART so that a node's part
    answers wrong on purpose (edgenode/_mutate.py); None, the real runners, otherwise."""
    import os

    from edgenode._mutate import ENV_VAR, Mutation, mutating
    from edgenode.backends import load_runner

    text = os.environ.get(ENV_VAR)
    if not text:
        return None
    return mutating(lambda spec, d: load_runner(spec, d, threads=threads), Mutation.parse(text))


DEFAULT_KEY = "/etc/edgenode/cluster.pem"


def client_security(args: argparse.Namespace) -> Security:
    """How `status` and `infer` talk to the cluster: --insecure, or a member credential
    from --key, $EDGENODE_KEY or DEFAULT_KEY."""
    import os

    from edgenode.security import load_credentials
    from edgenode.transport import Security

    if args.insecure:
        return Security.insecure()
    key = args.key or os.environ.get("EDGENODE_KEY") or ""
    if not key and Path(DEFAULT_KEY).is_file():
        key = DEFAULT_KEY
    if not key:
        raise UsageError(
            f"no cluster key: pass --key FILE (cluster.pem from `edgenode keygen`), set "
            f"EDGENODE_KEY, or install {DEFAULT_KEY}; --insecure for an insecure cluster"
        )
    return Security(load_credentials(Path(key)))


async def find_nodes(args: argparse.Namespace, client: ClusterClient) -> Found:
    """Nodes to ask, by address: every --peer (None: not asked who it is), else every node
    mDNS finds (of --cluster if given) that answers Hello as its record says, as it answered."""
    return await client.find(
        peers=args.peer or (),
        cluster=args.cluster,
        interfaces=args.interfaces.split(",") if args.interfaces else "all",
        browse_s=args.wait,
    )
