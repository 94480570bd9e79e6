"""The ``edgenode`` command line: the only place that parses argv and configures logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgenode import __version__
from edgenode._table import format_bytes, format_table
from edgenode.errors import ConfigError, EdgenodeError, UsageError

logger = logging.getLogger("edgenode")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
}


# -- argument types ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None


def _shape(text: str) -> tuple[int, ...]:
    values = _int_list(text.replace("x", ","))
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected a shape such as 224,224,3, got {text!r}")
    return tuple(values)


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MiB or 2GB, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _nodes(text: str) -> list[float]:
    """'5' -> five equal nodes; '1,1,2' -> three nodes with those relative speeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return [1.0] * count
        speeds = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a node count (5) or relative speeds (1,1,2), got {text!r}"
        ) from None
    if any(s <= 0 for s in speeds):
        raise argparse.ArgumentTypeError("node speeds must be positive")
    return speeds


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
        help="weights for a keras.applications model: none (random, seeded; default), "
        "imagenet (needs internet) or a local weights file",
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        metavar="H,W,C",
        help="input shape without the batch dimension (default: the model's native size)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")


def _load(args: argparse.Namespace) -> Any:
    from edgenode.model.loading import load_model

    _say(args, f"loading {args.model}")
    return load_model(
        args.model, weights=args.weights, input_shape=args.input_shape, seed=args.seed
    )


def _say(args: argparse.Namespace, message: str) -> None:
    """Progress for long work, on stderr so stdout stays machine-readable."""
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"edgenode: {message}\n")
        sys.stderr.flush()


def _setup_tensorflow(args: argparse.Namespace) -> None:
    from edgenode.model.tfsetup import configure

    configure(threads=getattr(args, "threads", None), quiet=args.verbose < 2)


# -- commands -----------------------------------------------------------------------


def _cmd_split(args: argparse.Namespace) -> int:
    from edgenode.model.split import split_model, verify_chain

    model = _load(args)
    method = "per-op" if args.per_op else args.cut
    started = time.perf_counter()
    result = split_model(
        model,
        Path(args.out),
        cuts=args.at,
        parts=args.parts,
        method=method,
        fmt=args.format,
        progress=lambda m: _say(args, m),
    )
    elapsed = time.perf_counter() - started
    manifest = result.manifest
    rows = [
        [
            p.index,
            p.file,
            f"{p.start}..{p.stop - 1}",
            p.stop - p.start,
            f"{p.flops / 1e6:.1f}",
            f"{p.param_bytes / 1e6:.2f}",
            ", ".join(t.name for t in p.inputs),
            ", ".join(t.name + (" (final)" if t.final else "") for t in p.outputs),
        ]
        for p in manifest.parts
    ]
    print(
        format_table(
            ["part", "file", "ops", "count", "MFLOPs", "params MB", "inputs", "outputs"], rows
        )
    )
    print(f"\nwrote {len(manifest.parts)} parts and manifest.json to {args.out} in {elapsed:.1f} s")
    print(f"model {manifest.model.name} sha256 {manifest.model.sha256}")
    if args.verify and args.format == "keras":
        diff = verify_chain(result)
        print(f"chained parts vs whole model: max abs diff {diff:.3g}")
        if diff > args.tolerance:
            raise EdgenodeError(
                f"chained parts differ from the whole model by {diff:.3g} (> {args.tolerance})"
            )
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    from edgenode.model.cost import graph_stats
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import model_sha256
    from edgenode.model.profile import load_profile
    from edgenode.model.split import cost_graph
    from edgenode.planning import Link, NodeSpec, plan_pipeline

    model = _load(args)
    graph = build_graph(model)
    stats = graph_stats(graph)
    if args.profile:
        profile = load_profile(Path(args.profile))
        if profile.model_sha256 != model_sha256(graph):
            raise EdgenodeError(f"{args.profile} was measured on another model")
        costs = cost_graph(graph, stats, profile.op_seconds)
        base_speed, unit = 1.0, "measured"
    else:
        costs = cost_graph(graph, stats)
        if args.gflops:
            base_speed = args.gflops * 1e9
        else:
            _say(args, "measuring this machine's speed on the whole model")
            base_speed = _calibrate(graph, sum(s.flops for s in stats))
        unit = f"{base_speed / 1e9:.1f} GFLOP/s per unit speed"
    nodes = [
        NodeSpec(node_id=f"node-{i}", speed=base_speed * s, memory_bytes=args.node_memory)
        for i, s in enumerate(args.nodes)
    ]
    link = Link(bandwidth_bytes_per_s=args.bandwidth, latency_s=args.hop_latency_ms / 1e3)
    plan = plan_pipeline(costs, nodes, link, max_parts=args.max_parts)
    if args.json:
        print(json.dumps(_plan_json(plan, graph, args), indent=2))
        return EXIT_OK
    rows = []
    for i, st in enumerate(plan.stages):
        _, outs = graph.boundary(st.start, st.stop)
        rows.append(
            [
                i,
                st.node_id,
                f"{st.start}..{st.stop - 1}",
                st.stop - st.start,
                f"{sum(s.flops for s in stats[st.start : st.stop]) / 1e6:.1f}",
                f"{st.param_bytes / 1e6:.2f}",
                f"{len(outs)}: {', '.join(outs)}" if len(outs) <= 3 else f"{len(outs)} tensors",
                format_bytes(st.send_bytes),
                f"{st.compute_s * 1e3:.2f}",
                f"{st.time_s * 1e3:.2f}",
            ]
        )
    headers = [
        "part",
        "node",
        "ops",
        "count",
        "MFLOPs",
        "params MB",
        "sends",
        "bytes",
        "compute ms",
        "stage ms",
    ]
    print(format_table(headers, rows))
    print(
        f"\nmodel {graph.name}: {len(graph.ops)} ops, {sum(s.macs for s in stats) / 1e6:.1f} M "
        f"multiply-adds; speed basis: {unit}; link {args.bandwidth / 1e6:.0f} MB/s, "
        f"{args.hop_latency_ms} ms per hop"
    )
    print(
        f"predicted: bottleneck stage {plan.bottleneck_s * 1e3:.2f} ms "
        f"({1 / plan.bottleneck_s:.1f} requests/s pipelined), latency "
        f"{plan.latency_s * 1e3:.2f} ms; one node alone: {plan.single_node_s * 1e3:.2f} ms"
    )
    if plan.slower_than_single_node:
        print(
            f"note: one request at a time, this plan is slower than running the whole model "
            f"on {plan.single_node_id} ({plan.latency_s / plan.single_node_s:.2f}x); "
            f"pipelined throughput is {plan.speedup:.2f}x"
        )
    return EXIT_OK


def _plan_json(plan: Any, graph: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": graph.name,
        "bottleneck_s": plan.bottleneck_s,
        "latency_s": plan.latency_s,
        "single_node_id": plan.single_node_id,
        "single_node_s": plan.single_node_s,
        "slower_than_single_node": plan.slower_than_single_node,
        "stages": [
            {
                "node": st.node_id,
                "start": st.start,
                "stop": st.stop,
                "outputs": list(graph.boundary(st.start, st.stop)[1]),
                "compute_s": st.compute_s,
                "send_bytes": st.send_bytes,
                "send_s": st.send_s,
                "time_s": st.time_s,
                "param_bytes": st.param_bytes,
            }
            for st in plan.stages
        ],
    }


def _calibrate(graph: Any, flops: int) -> float:
    """FLOP/s of this machine on this model (whole model, tf.function, batch 1)."""
    from edgenode.model.profile import time_whole_model

    return flops / time_whole_model(graph)


def _cmd_profile(args: argparse.Namespace) -> int:
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import model_sha256
    from edgenode.model.profile import profile_graph

    model = _load(args)
    graph = build_graph(model)
    step = max(1, len(graph.ops) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            _say(args, f"timed {done}/{total} ops")

    profile = profile_graph(graph, model_sha256(graph), runs=args.runs, progress=progress)
    out = Path(args.out)
    profile.save(out)
    raw_total = sum(profile.raw_seconds.values())
    slowest = sorted(profile.op_seconds.items(), key=lambda kv: -kv[1])[:10]
    rows = [[k, f"{v * 1e3:.3f}", f"{profile.raw_seconds[k] * 1e3:.3f}"] for k, v in slowest]
    print(format_table(["op (10 slowest)", "ms in model", "ms alone"], rows))
    print(
        f"\n{len(profile.op_seconds)} ops timed alone: sum {raw_total * 1e3:.2f} ms, of which "
        f"{profile.call_overhead_s * 1e3:.3f} ms per call is overhead; whole model "
        f"{profile.whole_model_s * 1e3:.2f} ms; wrote {out}"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from edgenode.config import Config, load_config
    from edgenode.node import Node
    from edgenode.transport import run, tune_malloc

    config = load_config(Path(args.config)) if args.config else Config()
    config = config.override("node", name=args.name, listen=args.listen)
    config = config.override("model", source=args.model, backend=args.backend)
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
    if config.model.backend == "keras" or not Path(config.model.source).is_dir():
        _setup_tensorflow(args)
    tune_malloc()
    state_dir = Path(args.state_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Node(config, state_dir=state_dir).run(stop)

    run(main())
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    statuses = run(_collect_status(args))
    if args.json:
        print(json.dumps(statuses, indent=2))
        return EXIT_OK
    rows = []
    for st in statuses:
        node = st["node"]
        plan = st["plan"]
        parts = st["parts"]
        stages = ", ".join(f"{s['part']}: {s['mean_s'] * 1e3:.2f} ms" for s in st["stages"])
        agreed = plan["agreed_digest"]
        rows.append(
            [
                node["node_id"],
                st["address"],
                f"{min(parts)}-{max(parts)}" if parts else "idle",
                (agreed or plan["computed_digest"])[:12] or "-",
                "yes" if agreed and agreed == plan["computed_digest"] else "no",
                st["requests_served"],
                stages or "-",
            ]
        )
    headers = ["node", "address", "parts", "plan", "agreed", "requests", "stage latency"]
    print(format_table(headers, rows))
    return EXIT_OK


async def _collect_status(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgenode.errors import PeerUnavailable
    from edgenode.mesh import Endpoint
    from edgenode.mesh.browse import browse
    from edgenode.transport._control import ControlClient, status_to_dict

    if args.peer:
        seeds = [str(Endpoint.parse(p)) for p in args.peer]
    else:
        interfaces = args.interfaces.split(",") if args.interfaces else "all"
        seeds = [str(e) for e in await browse(interfaces=interfaces, timeout_s=args.wait)]
        if not seeds:
            raise EdgenodeError("no edgenode found on the network (try --peer HOST:PORT)")
    client = ControlClient(protocol=1)
    statuses: dict[str, dict[str, Any]] = {}
    try:
        queue = list(seeds)
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


def _cmd_infer(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    return run(_infer(args))


async def _find_node(args: argparse.Namespace) -> str:
    from edgenode.mesh import Endpoint
    from edgenode.mesh.browse import browse

    if args.peer:
        return str(Endpoint.parse(args.peer))
    interfaces = args.interfaces.split(",") if args.interfaces else "all"
    found = await browse(interfaces=interfaces, timeout_s=args.wait)
    if not found:
        raise EdgenodeError("no edgenode cluster found on the network (try --peer HOST:PORT)")
    return str(found[0])


async def _infer(args: argparse.Namespace) -> int:
    import asyncio
    import statistics

    import numpy as np

    from edgenode.client import collect_files, family_of, is_class_vector, load_inputs, summarize
    from edgenode.client import top_k as top_classes
    from edgenode.model.manifest import Manifest
    from edgenode.transport._control import ControlClient

    files = collect_files([Path(p) for p in args.inputs])
    address = await _find_node(args)
    client = ControlClient(protocol=1)
    try:
        status = await client.status(address)
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
                outputs = await client.infer(address, inputs, timeout_s=args.timeout)
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
        for value in entry["outputs"].values():
            if isinstance(value, list):
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


def _cmd_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from edgenode.model.loading import load_model
    from edgenode.model.split import split_model
    from edgenode.transport import run

    image = (
        Path(args.image) if args.image else Path(__file__).parent / "data" / "images" / "cat.jpg"
    )
    workdir = Path(tempfile.mkdtemp(prefix="edgenode-demo-"))
    try:
        _say(args, f"building {args.model} (random weights, seed 0) and cutting it into "
                   f"{args.parts} parts")  # fmt: skip
        model = load_model(args.model)
        split_model(model, workdir / "parts", parts=args.parts)
        return run(_demo(args, model, workdir, image))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _demo(args: argparse.Namespace, model: Any, workdir: Path, image: Path) -> int:
    import asyncio
    import statistics

    import numpy as np

    from edgenode.client import family_of, is_class_vector, load_inputs, top_k
    from edgenode.demo import local_cluster, time_local, wait_agreed
    from edgenode.model.manifest import load_manifest
    from edgenode.transport._control import ControlClient

    manifest = load_manifest(workdir / "parts")
    inputs = await asyncio.to_thread(
        load_inputs, image, manifest.model.inputs, preprocess=family_of(manifest.model.name)
    )

    def say(message: str) -> None:
        _say(args, message)

    say(f"starting {args.nodes} nodes on 127.0.0.1")
    async with local_cluster(workdir / "parts", workdir, args.nodes, say=say) as nodes:
        client = ControlClient(protocol=1)
        try:
            statuses = await wait_agreed(client, nodes)
            say("the nodes agreed on a plan; sending the image")
            origin = nodes[0].address
            outputs = await client.infer(origin, inputs, timeout_s=60)
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                await client.infer(origin, inputs, timeout_s=60)
                times.append(time.perf_counter() - t0)
            statuses = await wait_agreed(client, nodes)
        finally:
            await client.aclose()
    local_out, local_ms = await asyncio.to_thread(time_local, model, inputs, args.requests)
    name = manifest.model.outputs[0]
    diff = float(np.max(np.abs(np.asarray(outputs[name], np.float64) - local_out)))
    distributed_ms = statistics.median(times) * 1e3
    print(f"{image.name} through {len(nodes)} nodes:")
    value = outputs[name]
    if is_class_vector(value):
        for rank, (index, label, p) in enumerate(top_k(value, 5), 1):
            print(f"  {rank}. {label.replace('_', ' '):<28} {p:.4f}  (class {index})")
    print("\nplan:")
    rows = []
    for st in statuses:
        parts = st["parts"]
        rows.append([st["node"]["node_id"], st["address"],
                     f"{min(parts)}-{max(parts)}" if parts else "idle",
                     st["plan"]["agreed_digest"][:12]])  # fmt: skip
    print(format_table(["node", "address", "parts", "plan"], rows))
    print(
        f"\nlocal whole model {local_ms:.1f} ms, distributed {distributed_ms:.1f} ms "
        f"({distributed_ms / local_ms:.2f}x, median of {args.requests}); max abs diff "
        f"vs local {diff:.3g}"
    )
    if diff > 1e-5:
        raise EdgenodeError(f"the distributed answer differs from the local one by {diff:.3g}")
    return EXIT_OK


# -- parser and entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="edgenode",
        description="Run one neural network across several small devices as a peer-to-peer "
        "cluster.",
    )
    parser.add_argument("--version", action="version", version=f"edgenode {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    split = sub.add_parser(
        "split",
        help="cut a model into parts and write them with manifest.json",
        description="Cut a model into parts (Keras sub-models with named inputs and "
        "outputs) and write part files plus manifest.json into a directory.",
    )
    _add_model_arguments(split)
    split.add_argument("--parts", type=_positive_int, help="number of parts")
    split.add_argument("--out", required=True, metavar="DIR", help="output directory")
    split.add_argument(
        "--format", choices=("keras", "litert"), default="keras", help="part file format"
    )
    split.add_argument(
        "--cut",
        choices=("balanced", "narrow", "even"),
        default="balanced",
        help="where to cut: balanced work with narrow cuts (default), the narrowest "
        "points within +-50%% of equal work, or equal operation counts",
    )
    split.add_argument(
        "--at", type=_int_list, metavar="K,K,...", help="cut before these op positions"
    )
    split.add_argument("--per-op", action="store_true", help="one operation per part")
    split.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip checking that the chained parts reproduce the whole model",
    )
    split.add_argument("--tolerance", type=float, default=1e-6, help=argparse.SUPPRESS)
    split.add_argument("--threads", type=_positive_int, help="TensorFlow threads")
    split.set_defaults(needs_tensorflow=True, func=_cmd_split)

    plan = sub.add_parser(
        "plan",
        help="show how a model would be balanced over nodes",
        description="Balance a model over nodes: contiguous parts minimising the slowest "
        "stage (compute + sending its outputs), and print the plan as a table.",
    )
    _add_model_arguments(plan)
    plan.add_argument(
        "--nodes",
        type=_nodes,
        required=True,
        metavar="N|S,S,...",
        help="number of equal nodes, or their relative speeds (1,1,2)",
    )
    plan.add_argument(
        "--gflops", type=float, help="speed of a unit node in GFLOP/s (default: measure here)"
    )
    plan.add_argument("--profile", metavar="FILE", help="per-op latencies from `edgenode profile`")
    plan.add_argument(
        "--node-memory",
        type=_size,
        default=_size("4GiB"),
        metavar="SIZE",
        help="memory each node gives a part (default 4GiB)",
    )
    plan.add_argument(
        "--bandwidth",
        type=_size,
        default=_size("125MB"),
        metavar="BYTES_PER_S",
        help="link bandwidth per second (default 125MB: gigabit Ethernet)",
    )
    plan.add_argument(
        "--hop-latency-ms", type=float, default=0.5, help="fixed cost of a hop (default 0.5)"
    )
    plan.add_argument("--max-parts", type=_positive_int, help="at most this many parts")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--threads", type=_positive_int, default=1, help="TensorFlow threads")
    plan.set_defaults(needs_tensorflow=True, func=_cmd_plan)

    prof = sub.add_parser(
        "profile",
        help="measure every operation's latency on this device",
        description="Time every operation of a model alone on this device and save the "
        "latencies as JSON for `edgenode plan --profile`.",
    )
    _add_model_arguments(prof)
    prof.add_argument("--out", default="profile.json", metavar="FILE", help="output file")
    prof.add_argument("--runs", type=_positive_int, default=20, help="timed runs per op")
    prof.add_argument("--threads", type=_positive_int, default=1, help="TensorFlow threads")
    prof.set_defaults(needs_tensorflow=True, func=_cmd_profile)

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
    run.add_argument(
        "--state-dir",
        default=os.path.join(os.path.expanduser("~"), ".local", "share", "edgenode"),
        metavar="DIR",
        help="where a node keeps the parts it cuts or fetches",
    )
    run.add_argument("--threads", type=_positive_int, help=argparse.SUPPRESS)
    run.set_defaults(func=_cmd_run, log_level=logging.INFO)

    status = sub.add_parser(
        "status",
        help="show the cluster as a table",
        description="Ask a node (found by mDNS, or --peer) and every peer it knows for their "
        "status: parts owned, plan digest and agreement, requests served, stage latency.",
    )
    status.add_argument("--peer", action="append", metavar="HOST:PORT", help="a node to ask")
    status.add_argument("--interfaces", metavar="LIST", help="where to browse (default all)")
    status.add_argument("--wait", type=float, default=1.5, help="seconds to browse for nodes")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    infer = sub.add_parser(
        "infer",
        help="run the cluster's model on images or .npy/.npz inputs",
        description="Send inputs to a node of the cluster (found by mDNS, or --peer) and "
        "print the answer: top classes for classifiers, a summary of every other output.",
    )
    infer.add_argument("inputs", nargs="+", metavar="FILE", help="images, .npy/.npz, folders")
    infer.add_argument("--peer", metavar="HOST:PORT", help="a node to send the requests to")
    infer.add_argument("--interfaces", metavar="LIST", help="where to browse (default all)")
    infer.add_argument("--wait", type=float, default=1.5, help="seconds to browse for nodes")
    infer.add_argument("--top", type=_positive_int, default=5, help="classes to show")
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    infer.add_argument("--concurrency", type=_positive_int, default=4, help="in flight")
    infer.add_argument("--save-outputs", metavar="FILE.npz", help="write every final output")
    infer.add_argument("--json", action="store_true", help="machine-readable output")
    infer.set_defaults(func=_cmd_infer)

    demo = sub.add_parser(
        "demo",
        help="start a local cluster, classify an image through it, stop it",
        description="Start N nodes on 127.0.0.1, wait until they agree, run one image "
        "through the cluster, compare with the whole model run locally, and stop.",
    )
    demo.add_argument("--nodes", type=_positive_int, default=3, help="how many (default 3)")
    demo.add_argument("--model", default="MobileNetV3Large", help="keras.applications name")
    demo.add_argument("--parts", type=_positive_int, default=8, help="parts to cut it into")
    demo.add_argument("--image", help="an image (default: a cat shipped with edgenode)")
    demo.add_argument("--requests", type=_positive_int, default=20, help="timed requests")
    demo.set_defaults(needs_tensorflow=True, func=_cmd_demo)
    return parser


def _configure_logging(verbose: int, base: int = logging.WARNING) -> None:
    level = base if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's C++ logging is read from the environment when it is first imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if verbose < 2 else "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgenode`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, getattr(args, "log_level", logging.WARNING))
    try:
        if getattr(args, "needs_tensorflow", False):
            _setup_tensorflow(args)
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
