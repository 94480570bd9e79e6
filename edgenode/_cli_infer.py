"""`edgenode infer`: inputs through the cluster, answers printed or saved (argv is parsed in
edgenode.cli)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenode._cli_cluster import client_security, find_nodes
from edgenode._cli_common import EXIT_OK
from edgenode.errors import EdgenodeError

if TYPE_CHECKING:
    from edgenode.transport._control import ControlClient

__all__ = ["cmd_infer"]


def cmd_infer(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    return run(_infer(args))


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
        nodes = await find_nodes(args, client)
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
