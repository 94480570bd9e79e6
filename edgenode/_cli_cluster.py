"""Commands on a cluster: run, status, infer (argv is parsed in edgenode.cli)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenode._cli_common import EXIT_OK, setup_tensorflow
from edgenode._table import format_table

if TYPE_CHECKING:
    from edgenode.mesh import PeerInfo
    from edgenode.runtime.parts import RunnerFactory
    from edgenode.transport import Security
    from edgenode.transport._control import ControlClient
from edgenode.errors import EdgenodeError, UsageError

__all__ = ["DEFAULT_KEY", "cmd_infer", "cmd_run", "cmd_status", "parts_label"]


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from edgenode._systemd import notify
    from edgenode.config import Config, load_config
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
    node_security(config)  # a missing or bad key is a one-line error before anything starts
    if config.model.backend == "keras" or not Path(config.model.source).is_dir():
        setup_tensorflow(args, threads=config.model.threads)
    tune_malloc()
    state_dir = Path(args.state_dir)
    runners = _test_mutation(config.model.threads)

    def on_agreed(plan: ClusterPlan) -> None:
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
        await Node(config, state_dir=state_dir, runner_factory=runners).run(
            stop, on_agreed=on_agreed
        )

    run(main())
    return EXIT_OK


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


def parts_label(status: Mapping[str, Any]) -> str:
    """Parts as "2-4", "r1:2-4" (replica 1) when the plan has several pipelines, or "idle"."""
    parts = status["parts"]
    if not parts:
        return "idle"
    label = f"{min(parts)}-{max(parts)}"
    replicas = {a.get("replica", 0) for a in status["plan"]["assignments"]}
    if len(replicas) > 1:
        mine = [
            a.get("replica", 0)
            for a in status["plan"]["assignments"]
            if a["node_id"] == status["node"]["node_id"]
        ]
        label = f"r{mine[0] if mine else '?'}:{label}"
    return label


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


def cmd_status(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    statuses = run(_collect_status(args))
    if args.json:
        print(json.dumps(statuses, indent=2))
        return EXIT_OK
    rows = []
    for st in statuses:
        node = st["node"]
        plan = st["plan"]
        stages = ", ".join(
            f"{s['part']}: {s['p50_s'] * 1e3:.2f} ms (p90 {s['p90_s'] * 1e3:.2f})"
            for s in st["stages"]
        )
        agreed = plan["agreed_digest"]
        rows.append(
            [
                node["node_id"],
                st["address"],
                parts_label(st),
                (agreed or plan["computed_digest"])[:12] or "-",
                "yes" if agreed and agreed == plan["computed_digest"] else "no",
                st["requests_served"],
                stages or "-",
            ]
        )
    headers = ["node", "address", "parts", "plan", "agreed", "requests", "part run time (median)"]
    print(format_table(headers, rows))
    return EXIT_OK


async def _collect_status(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgenode.errors import PeerUnavailable
    from edgenode.mesh import Endpoint
    from edgenode.transport._control import ControlClient, status_to_dict

    client = ControlClient(protocol=1, security=client_security(args))
    statuses: dict[str, dict[str, Any]] = {}
    try:
        queue = list(await _find_nodes(args, client))
        errors = []
        while queue:
            address = queue.pop(0)
            if any(s["address"] == address for s in statuses.values()):
                continue
            try:
                status = dict(status_to_dict(await client.status(address)))
            except PeerUnavailable as exc:
                errors.append(str(exc))
                continue
            statuses[status["node"]["node_id"]] = status
            for peer in status["peers"]:
                if peer["node_id"] not in statuses:
                    queue.append(str(Endpoint(host=peer["addresses"][0], port=peer["port"])))
        if not statuses:
            raise EdgenodeError(f"no node answered: {errors[0]}")
    finally:
        await client.aclose()
    return [statuses[k] for k in sorted(statuses)]


def cmd_infer(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    return run(_infer(args))


async def _find_nodes(
    args: argparse.Namespace, client: ControlClient
) -> dict[str, PeerInfo | None]:
    """Nodes to ask, by address: every --peer (None: not asked who it is), else every node
    mDNS finds (of --cluster if given) that answers Hello as its record says, as it answered."""
    from edgenode.errors import PeerUnavailable
    from edgenode.mesh import Endpoint
    from edgenode.mesh.browse import find_members

    if args.peer:
        return dict.fromkeys(str(Endpoint.parse(p)) for p in args.peer)

    # gRPC's reasons, as a reader of the one-line error needs them.
    reasons = (
        ("WRONG_VERSION_NUMBER", "TLS handshake failed: it does not speak TLS (try --insecure)"),
        ("handshake", "TLS handshake failed"),
        ("Connection refused", "connection refused"),
        ("Socket closed", "connection closed (a node with TLS? pass --key)"),
        ("timed out", "no answer"),
    )

    async def hello(endpoint: Endpoint) -> PeerInfo:
        try:
            return await client.hello(endpoint)
        except PeerUnavailable as exc:
            text = str(exc)
            short = next((r for needle, r in reasons if needle.lower() in text.lower()), None)
            raise PeerUnavailable(f"{endpoint}: {short}" if short else text) from None

    interfaces = args.interfaces.split(",") if args.interfaces else "all"
    found = await find_members(
        hello, cluster=args.cluster, interfaces=interfaces, browse_s=args.wait
    )
    return {str(m.endpoint): m for m in found}


async def _first_status(client: ControlClient, seeds: list[str]) -> tuple[str, Any]:
    """The first of ``seeds`` that answers a status call, and its status."""
    from edgenode.errors import PeerUnavailable

    errors = []
    for address in seeds:
        try:
            return address, await client.status(address)
        except PeerUnavailable as exc:
            errors.append(str(exc))
    raise PeerUnavailable("; ".join(errors))


async def _infer(args: argparse.Namespace) -> int:
    import asyncio
    import statistics

    import numpy as np

    from edgenode.client import collect_files, family_of, is_class_vector, load_inputs, summarize
    from edgenode.client import top_k as top_classes
    from edgenode.model.manifest import Manifest
    from edgenode.transport._control import ControlClient, view_of

    files = collect_files([Path(p) for p in args.inputs])
    security = client_security(args)
    client = ControlClient(protocol=1, security=security)
    try:
        nodes = await _find_nodes(args, client)
        address, status = await _first_status(client, list(nodes))
        # Requests go to that node first, and to the other members its status lists when
        # it goes away; of the nodes mDNS found, to those that answered Hello as nodes of
        # its cluster and model (others may belong to other clusters).
        same = (status.node.cluster, status.node.model_sha256)
        seeds = [a for a, n in nodes.items() if n is None or (n.cluster, n.model_sha256) == same]
        cluster = client.cluster([address, *seeds])
        cluster.learn(address, view_of(status, address))
        if not status.plan.agreed_digest:
            raise EdgenodeError(f"the cluster at {address} has not agreed on a plan yet")
        raw = await client.fetch_bytes(address, status.node.model_sha256, -1)
        manifest = Manifest.from_json(json.loads(raw))
        family = family_of(manifest.model.name)
        semaphore = asyncio.Semaphore(args.concurrency)
        results: list[dict[str, Any]] = []
        latencies: list[float] = []
        started = time.perf_counter()

        async def one(path: Path) -> None:
            inputs = await asyncio.to_thread(
                load_inputs, path, manifest.model.inputs, preprocess=family
            )
            async with semaphore:
                t0 = time.perf_counter()
                outputs = await cluster.infer(inputs, timeout_s=args.timeout)
                latencies.append(time.perf_counter() - t0)
            results.append({"file": str(path), "outputs": outputs, "seconds": latencies[-1]})
            if len(files) > 1 and not args.quiet:
                sys.stderr.write(f"\redgenode: {len(results)}/{len(files)} done")
                sys.stderr.flush()

        await asyncio.gather(*(one(f) for f in files))
        elapsed = time.perf_counter() - started
        if len(files) > 1 and not args.quiet:
            sys.stderr.write("\n")
    finally:
        await client.aclose()
    results.sort(key=lambda r: files.index(Path(r["file"])))
    if args.save_outputs:
        arrays = {
            (f"{Path(r['file']).name}/{k}" if len(files) > 1 else k): v
            for r in results
            for k, v in r["outputs"].items()
        }
        np.savez(args.save_outputs, **arrays)
    report = []
    for r in results:
        entry: dict[str, Any] = {"file": r["file"], "seconds": r["seconds"], "outputs": {}}
        for name, value in r["outputs"].items():
            if is_class_vector(value):
                entry["outputs"][name] = [
                    {"class": i, "label": label, "probability": p}
                    for i, label, p in top_classes(value, args.top)
                ]
            else:
                entry["outputs"][name] = value.tolist() if args.json else summarize(name, value)
        report.append(entry)
    summary: dict[str, Any] = {
        "images": len(results),
        "seconds": elapsed,
        "per_second": len(results) / elapsed if elapsed else 0.0,
        "p50_s": statistics.median(latencies),
        "p95_s": sorted(latencies)[max(0, int(len(latencies) * 0.95) - 1)],
        "node": address,
        "model": manifest.model.name,
    }
    if args.json:
        print(json.dumps({"results": report, "summary": summary}, indent=2))
        return EXIT_OK
    for entry in report:
        print(f"{entry['file']}  ({entry['seconds'] * 1e3:.1f} ms)")
        for name, value in entry["outputs"].items():
            if isinstance(value, list):
                if len(entry["outputs"]) > 1:  # the summaries name their output themselves
                    print(f"  {name}:")
                for rank, c in enumerate(value, 1):
                    label = c["label"].replace("_", " ")
                    print(f"  {rank}. {label:<28} {c['probability']:.4f}  (class {c['class']})")
            else:
                print(f"  {value}")
    if len(report) > 1:
        print(
            f"\n{summary['images']} inputs in {elapsed:.2f} s: {summary['per_second']:.1f}/s, "
            f"p50 {summary['p50_s'] * 1e3:.1f} ms, p95 {summary['p95_s'] * 1e3:.1f} ms"
        )
    return EXIT_OK
