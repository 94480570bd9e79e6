"""Commands on a model: split, plan, profile (argv is parsed in edgenode.cli)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgenode._cli_common import EXIT_OK, check_model_arg, load_model_arg, say
from edgenode._table import format_bytes, format_table
from edgenode.errors import EdgenodeError, ModelError, UsageError

__all__ = ["check_plan", "check_profile", "check_split", "cmd_plan", "cmd_profile", "cmd_split"]


def check_split(args: argparse.Namespace) -> None:
    """What `split` can check before TensorFlow is imported: the model, --out, --profile."""
    from edgenode.model.manifest import MANIFEST_NAME

    check_model_arg(args)
    _check_profile_file(args.profile)
    if args.spatial is not None and (args.parts or args.at or args.per_op or args.profile):
        raise UsageError("--spatial chooses its own parts: drop --parts, --at, --per-op, --profile")
    if args.spatial is not None and args.spatial < 2:
        raise UsageError(f"--spatial {args.spatial}: at least 2 stripes")
    if args.spatial is None and (args.spatial_last_op or args.gflops):
        raise UsageError("--spatial-last-op and --gflops go with --spatial N")
    out = Path(args.out)
    # The rule edgenode.model.split applies again (that module imports TensorFlow).
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ModelError(f"{out} is not empty and holds no earlier split; choose another --out")


def check_profile(args: argparse.Namespace) -> None:
    """What `profile` can check before TensorFlow is imported: the model, --out's folder."""
    check_model_arg(args)
    folder = Path(args.out).parent
    if not folder.is_dir():
        raise UsageError(f"--out {args.out}: no folder {folder}")


DEFAULT_NODE_MEMORY = "4GiB"  # the memory budget `plan` assumes for each node


def add_plan_command(
    sub: Any, add_model_arguments: Callable[[argparse.ArgumentParser], None]
) -> None:
    """The `plan` subcommand's parser (``sub``: the command line's subparsers)."""
    from edgenode._cli_args import node_speeds, non_negative_float, positive_int, size
    from edgenode.defaults import HOP_LATENCY_MS, LINK_MBPS
    from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, WIRE_FORMATS

    plan = sub.add_parser(
        "plan",
        help="show how a model would be balanced over nodes",
        description="Balance a model over nodes: contiguous parts minimising the slowest "
        "stage (compute + sending its outputs), and print the plan as a table.",
    )
    add_model_arguments(plan)
    plan.add_argument(
        "--nodes",
        type=node_speeds,
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
        type=size,
        default=DEFAULT_NODE_MEMORY,  # a string default goes through type= like an argument
        metavar="SIZE",
        help="each node's memory budget (node.memory_budget); a node gets parts that fit it "
        "less the backend's baseline",
    )
    plan.add_argument(
        "--backend",
        choices=("keras", "litert"),
        default="keras",
        help="what the nodes run parts on: its memory model prices each stage",
    )
    plan.add_argument(
        "--bandwidth",
        type=size,
        default=f"{LINK_MBPS / 8:g}MB",  # gigabit Ethernet
        metavar="BYTES_PER_S",
        help="link bandwidth per second; the default is gigabit Ethernet",
    )
    plan.add_argument(
        "--hop-latency-ms",
        type=non_negative_float,
        default=HOP_LATENCY_MS,
        metavar="MS",
        help="fixed cost of a hop",
    )
    plan.add_argument(
        "--wire-format",
        choices=WIRE_FORMATS,
        default=DEFAULT_WIRE_FORMAT,
        help="how tensors travel between parts (as `split --wire-format`): the bytes per hop",
    )
    plan.add_argument("--max-parts", type=positive_int, help="at most this many parts")
    plan.add_argument(
        "--spatial",
        type=positive_int,
        metavar="N",
        help="also price a spatial plan of N stripes (`split --spatial N`) on these nodes "
        "and say which answers one request sooner",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--threads", type=positive_int, default=1, help="TensorFlow threads")
    plan.set_defaults(needs_tensorflow=True, check=check_plan, func=cmd_plan)


def check_plan(args: argparse.Namespace) -> None:
    """What `plan` can check before TensorFlow is imported: the model, --profile."""
    check_model_arg(args)
    _check_profile_file(args.profile)
    if args.spatial is not None and args.profile:
        raise UsageError("--spatial prices stripes by FLOPs: drop --profile (or give --gflops)")
    if args.spatial is not None and args.spatial < 2:
        raise UsageError(f"--spatial {args.spatial}: at least 2 stripes")
    if args.spatial is not None and args.json:
        raise UsageError("--spatial is a table only: drop --json")


def _check_profile_file(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"--profile {path}: no such file")


def cmd_split(args: argparse.Namespace) -> int:
    from edgenode.model.graph import build_graph
    from edgenode.model.manifest import link_spec
    from edgenode.model.split import SpatialOptions, split_model, verify_chain

    model = load_model_arg(args)
    method = "per-op" if args.per_op else args.cut
    op_seconds = _profile_seconds(args.profile, build_graph(model)) if args.profile else None
    link = link_spec(args.link_mbps, args.hop_latency_ms)
    spatial = None
    if args.spatial is not None:
        spatial = SpatialOptions(
            stripes=args.spatial,
            speed=_speed(args, build_graph(model)),
            last_op=args.spatial_last_op,
        )
    started = time.perf_counter()
    result = split_model(
        model,
        Path(args.out),
        cuts=args.at,
        parts=args.parts,
        method=method,
        fmt=args.format,
        op_seconds=op_seconds,
        link=link,
        wire_format=args.wire_format,
        spatial=spatial,
        progress=lambda m: say(args, m),
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
    if manifest.tiles is not None:
        stripes = manifest.tiles.stripes
        print(
            f"stripes: parts {stripes[0]}..{stripes[-1]} run at once on different nodes, "
            f"part {manifest.tiles.gather} gathers them"
        )
    if manifest.link is not None:
        print(
            f"the cluster plans for a {manifest.link.bandwidth_bytes_per_s * 8 / 1e6:g} Mbit/s "
            f"link, {manifest.link.latency_s * 1e3:g} ms per hop"
        )
    if args.verify:
        runners = None
        tolerance = args.tolerance
        if args.format == "litert":  # the files as exported: the converter can be wrong
            from edgenode.backends import load_runner

            out = Path(args.out)
            runners = [load_runner(spec, out) for spec in manifest.parts]
        check = verify_chain(result, tolerance=tolerance, runners=runners)
        if runners is not None:  # another runtime's float arithmetic, relative to the answer
            tolerance = max(tolerance, LITERT_TOLERANCE * max(1.0, check.scale))
        what = "chained LiteRT part files" if runners is not None else "chained parts"
        print(
            f"{what} vs whole model: max abs diff {check.diff:.3g} on 2 random inputs "
            f"(whose outputs differ by {check.spread:.3g})"
        )
        if not check.moves:
            say(args, "warning: the model's outputs barely move with its input (random "
                      "weights?), so this check would also pass for a wrong chain")  # fmt: skip
        if check.diff > tolerance:
            raise EdgenodeError(
                f"{what} differ from the whole model by {check.diff:.3g} (> {tolerance:.3g})"
            )
    return EXIT_OK


# LiteRT part files against the Keras model: relative to the outputs' magnitude (measured:
# 2e-6 on ConvNeXt, 1e-5 on MobileNetV3; a miscompiled part is off by percents).
LITERT_TOLERANCE = 1e-4


def _profile_seconds(path: str, graph: Any) -> dict[str, float]:
    """Per-op seconds from an `edgenode profile` file measured on this very model."""
    from edgenode.model.loading import model_sha256
    from edgenode.model.profile import load_profile

    profile = load_profile(Path(path))
    if profile.model_sha256 != model_sha256(graph):
        raise EdgenodeError(f"{path} was measured on another model")
    return profile.op_seconds


def cmd_plan(args: argparse.Namespace) -> int:
    from edgenode.model.cost import graph_stats
    from edgenode.model.graph import build_graph
    from edgenode.model.split import layer_cost_graph
    from edgenode.planning import (
        BASELINE_BYTES,
        MEMORY_MODELS,
        NodeSpec,
        node_link,
        plan_pipeline,
        room_bytes,
        stage_memory_bytes,
    )

    model = load_model_arg(args)
    graph = build_graph(model)
    stats = graph_stats(graph)
    wire = args.wire_format
    if args.profile:
        seconds = _profile_seconds(args.profile, graph)
        costs = layer_cost_graph(graph, stats, seconds, wire_format=wire)
        base_speed, unit = 1.0, "measured"
    else:
        costs = layer_cost_graph(graph, stats, wire_format=wire)
        if args.gflops:
            base_speed = args.gflops * 1e9
        else:
            say(args, "measuring this machine's speed on the whole model")
            base_speed = _calibrate(graph, sum(s.flops for s in stats))
        unit = f"{base_speed / 1e9:.1f} GFLOP/s per unit speed"
    costs = dataclasses.replace(costs, memory=MEMORY_MODELS[args.backend])
    baseline = BASELINE_BYTES[args.backend]
    room = room_bytes(args.node_memory, baseline)
    nodes = [
        NodeSpec(node_id=f"node-{i}", speed=base_speed * s, memory_bytes=room)
        for i, s in enumerate(args.nodes)
    ]
    link = node_link(args.bandwidth, args.hop_latency_ms / 1e3)
    plan = plan_pipeline(costs, nodes, link, max_parts=args.max_parts)
    if args.json:
        print(json.dumps(_plan_json(plan, graph, costs, args), indent=2))
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
                f"{(baseline + stage_memory_bytes(costs, st.start, st.stop)) / 2**20:.0f}",
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
        "MiB predicted",
    ]
    print(format_table(headers, rows))
    print(
        f"\nmodel {graph.name}: {len(graph.ops)} ops, {sum(s.macs for s in stats) / 1e6:.1f} M "
        f"multiply-adds; speed basis: {unit}; link {args.bandwidth / 1e6:.0f} MB/s, "
        f"{args.hop_latency_ms} ms per hop; tensors between parts as {wire}"
    )
    print(
        f"memory: each node's budget {format_bytes(args.node_memory)}, of which the "
        f"{args.backend} baseline takes {format_bytes(baseline)} (predicted: baseline plus "
        "the stage's weights, activations and buffers as the backend holds them)"
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
    if args.spatial is not None:
        _print_spatial(
            args, graph, stats, nodes, link, base_speed, plan.latency_s, plan.single_node_s
        )
    return EXIT_OK


def _print_spatial(
    args: argparse.Namespace,
    graph: Any,
    stats: Any,
    nodes: Any,
    link: Any,
    speed: float,
    layer_s: float,
    single_s: float,
) -> None:
    """`plan --spatial N`: the striped region for N nodes of the unit speed, the spatial
    plan on these nodes, and which of the two answers one request sooner."""
    from edgenode.model.manifest import ModelSpec, TensorSpec
    from edgenode.model.spatial_split import choose_region
    from edgenode.planning import plan_tiles

    inputs = tuple(
        TensorSpec(name=n, shape=graph.tensors[n].shape, dtype=graph.tensors[n].dtype)
        for n in graph.inputs
    )
    spec = ModelSpec(name=graph.name, sha256="", inputs=inputs, outputs=graph.outputs, ops=0,
                     macs=0, flops=0, param_bytes=0)  # fmt: skip
    choice = choose_region(graph, stats, args.spatial, model=spec, speed=speed, link=link,
                           wire_format=args.wire_format)  # fmt: skip
    manifest = choice.manifest
    tiles = manifest.tiles
    assert tiles is not None  # choose_region made stripes
    tiled = plan_tiles(manifest.cost_graph(), nodes, link)
    region = choice.region
    print(
        f"\nspatial, {args.spatial} stripes of ops {region.start}..{region.stop - 1} "
        f"({graph.ops[region.stop - 1].name}; {region.input_height} rows in, "
        f"{region.output_height} out), then a gather part:"
    )
    rows = [
        [st.node_id, f"{st.start}..{st.stop - 1}",
         ", ".join(tiles.role(i) for i in range(st.start, st.stop)),
         f"{st.compute_s * 1e3:.2f}", format_bytes(st.send_bytes)]
        for st in tiled.stages
    ]  # fmt: skip
    print(format_table(["node", "parts", "runs", "compute ms", "sends"], rows))
    spatial_s = tiled.latency_s
    if len(tiled.stages) == 1:
        print(
            f"predicted: stripes do not pay on these nodes (their hops cost more than the "
            f"halves save): the plan keeps them on one node, {spatial_s * 1e3:.2f} ms; "
            f"layer-wise {layer_s * 1e3:.2f} ms; one node alone {single_s * 1e3:.2f} ms"
        )
        return
    best = min(
        [("spatial", spatial_s), ("layer-wise", layer_s), ("one node alone", single_s)],
        key=lambda pair: pair[1],
    )[0]
    print(
        f"predicted latency: spatial {spatial_s * 1e3:.2f} ms on {len(tiled.stages)} nodes, "
        f"layer-wise {layer_s * 1e3:.2f} ms, one node alone {single_s * 1e3:.2f} ms: "
        f"{best} answers one request soonest"
    )


def _plan_json(plan: Any, graph: Any, costs: Any, args: argparse.Namespace) -> dict[str, Any]:
    from edgenode.planning import BASELINE_BYTES, stage_memory_bytes

    baseline = BASELINE_BYTES[args.backend]
    return {
        "model": graph.name,
        "link_bytes_per_s": args.bandwidth,
        "hop_latency_s": args.hop_latency_ms / 1e3,
        "wire_format": args.wire_format,
        "backend": args.backend,
        "memory_budget_bytes": args.node_memory,
        "baseline_bytes": baseline,
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
                "predicted_memory_bytes": baseline + stage_memory_bytes(costs, st.start, st.stop),
            }
            for st in plan.stages
        ],
    }


def _speed(args: argparse.Namespace, graph: Any) -> float:
    """FLOP/s of the nodes: --gflops, else measured here on the whole model."""
    if args.gflops:
        return float(args.gflops) * 1e9
    from edgenode.model.cost import graph_stats

    say(args, "measuring this machine's speed on the whole model (--gflops skips it)")
    return _calibrate(graph, sum(s.flops for s in graph_stats(graph)))


def _calibrate(graph: Any, flops: int) -> float:
    """FLOP/s of this machine on this model (whole model, tf.function, batch 1)."""
    from edgenode.model.profile import time_whole_model

    return flops / time_whole_model(graph)


def cmd_profile(args: argparse.Namespace) -> int:
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import model_sha256
    from edgenode.model.profile import profile_graph

    model = load_model_arg(args)
    graph = build_graph(model)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5.0 or done == total:
            last[0] = now
            say(args, f"built {done}/{total} parts to time (each op alone, then segments)")

    profile = profile_graph(
        graph, model_sha256(graph), runs=args.runs, segments=args.segments, progress=progress
    )
    out = Path(args.out)
    profile.save(out)
    raw_total = sum(profile.raw_seconds.values())
    segment_total = sum(g.seconds for g in profile.segments)
    slowest = sorted(profile.op_seconds.items(), key=lambda kv: -kv[1])[:10]
    rows = [[k, f"{v * 1e3:.3f}", f"{profile.raw_seconds[k] * 1e3:.3f}"] for k, v in slowest]
    print(format_table(["op (10 slowest)", "ms in model", "ms alone"], rows))
    print(
        f"\n{len(profile.op_seconds)} ops timed alone: sum {raw_total * 1e3:.2f} ms "
        f"({profile.call_overhead_s * 1e3:.3f} ms per call is overhead); "
        f"{len(profile.segments)} segments timed as parts: sum {segment_total * 1e3:.2f} ms; "
        f"whole model {profile.whole_model_s * 1e3:.2f} ms; wrote {out}"
    )
    return EXIT_OK
