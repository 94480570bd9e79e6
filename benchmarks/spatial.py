"""Spatial (tile) partitioning against one device: does one answer come sooner?

    .venv/bin/python benchmarks/spatial.py [--runs 40] [--models a,b,...] [--work DIR]

For each model (seeded random weights: latency does not depend on them, and each answer
is checked against the whole model on two inputs whose answers differ), all LiteRT parts
on one interpreter thread, as a Raspberry Pi node runs them:

- local: the whole model in this process, pinned to core 0 (the baseline);
- 1 node: `edgenode run` serving the whole model (1 part), pinned to core 0;
- 2 nodes, layer-wise: `split --parts 2` (balanced), each node pinned to its own core;
- 2 nodes, spatial: `split --spatial 2` (the region's depth chosen by the cost model for
  two nodes of the speed measured here), each node pinned to its own core.

Single requests, one after another, from a client in this process (unpinned: it shares
the two cores with the nodes, as a client on a node does); median latency over ``--runs``
after a warm-up, as a ratio to the local median of the same run; beside it the planner's
prediction (``plan_cluster`` on the manifest, with the speed measured here). Writes
benchmarks/results/spatial.md and spatial.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from harness import RESULTS
from harness.cluster import Client, running, stage_counters
from harness.models import PartRunners
from harness.nodes import NodeProc, write_config
from harness.report import machine_lines, plot_footer, say, table, timed

WARMUP = 5
ANSWER_INPUTS = 2  # each answer checked against the whole model, on inputs that differ
LOOPBACK_MBPS = 10_000.0
TARGET = 0.75  # issue 20: 2 nodes at most 0.75x local, for the model whose early layers dominate


def efficientnet_lite0_224() -> Any:
    from edgenode.model.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0((224, 224, 3))


def backbone_512() -> Any:
    """EfficientNet-Lite0's stride-8 features at 512 px: a detection backbone's early part."""
    import keras

    from edgenode.model.efficientnet_lite import build_efficientnet_lite0

    whole = build_efficientnet_lite0((512, 512, 3))
    return keras.Model(whole.input, whole.get_layer("block4_add").output, name="lite0_s8_512")


def tiny_yolo_448() -> Any:
    """Tiny-YOLOv2's convolutional stack (3x3 conv, BN, leaky ReLU, 2x2 max-pool) at 448 px
    (14 output rows: two equal stripes; at 416, 13 rows split 7/6)."""
    import keras

    layers = keras.layers
    x = inputs = keras.Input((448, 448, 3), name="image")
    for i, filters in enumerate([16, 32, 64, 128, 256, 512]):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.LeakyReLU(0.1, name=f"leaky{i}")(layers.BatchNormalization(name=f"bn{i}")(x))
        x = layers.MaxPooling2D(2, strides=2 if i < 5 else 1, padding="same", name=f"pool{i}")(x)
    for i in (6, 7):
        x = layers.Conv2D(1024, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.LeakyReLU(0.1, name=f"leaky{i}")(layers.BatchNormalization(name=f"bn{i}")(x))
    head = layers.Conv2D(125, 1, padding="same", name="head")(x)
    return keras.Model(inputs, head, name="tiny_yolov2_448")


MODELS: dict[str, tuple[str, Callable[[], Any]]] = {
    "lite0-224": ("EfficientNet-Lite0 classifier, 224 px", efficientnet_lite0_224),
    "lite0-s8-512": ("EfficientNet-Lite0 to stride 8 (block4_add), 512 px", backbone_512),
    "tiny-yolo-448": ("Tiny-YOLOv2 backbone and head, 448 px", tiny_yolo_448),
}


def pinned(core: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with this process on ``core`` only."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, cores)


def split(model: Any, out: Path, **kwargs: Any) -> Any:
    from edgenode.model.split import split_model

    if not (out / "manifest.json").is_file():
        split_model(model, out, fmt="litert", **kwargs)
    from edgenode.model.manifest import load_manifest

    return load_manifest(out)


def predicted_on(manifest: Any, nodes: int, speed: float, link: Any) -> float:
    """The planner's latency for ``manifest`` as if it planned for ``link`` (a LinkSpec)."""
    import dataclasses

    return predicted(dataclasses.replace(manifest, link=link), nodes, speed)[0]


def predicted(manifest: Any, nodes: int, speed: float) -> tuple[float, str]:
    """The planner's latency for ``nodes`` equal nodes, and what the plan runs where."""
    from edgenode.model.manifest import planning_link
    from edgenode.planning import NodeSpec, plan_cluster

    members = [NodeSpec(node_id=f"n{i}", speed=speed, memory_bytes=2**34) for i in range(nodes)]
    plan = plan_cluster(
        manifest.cost_graph(), members, planning_link(manifest.link), manifest_digest="x"
    )
    ranges = [f"{a.start}-{a.stop - 1}" for a in plan.assignments if a.replica == 0]
    return plan.latency_s, f"{plan.replicas} x [{', '.join(ranges)}]"


def photo_inputs(name: str, shape: tuple[int, ...], count: int) -> list[dict[str, np.ndarray]]:
    """Sample photos resized to the model's input: pixels 0..255 as float32, as a client
    sends them (EfficientNet-Lite normalizes inside the model)."""
    from edgenode.client.inputs import decode_image

    folder = Path(__file__).resolve().parents[1] / "edgenode" / "data" / "images"
    paths = sorted(folder.glob("*.jpg"))[:count]
    return [
        {name: decode_image(p, height=shape[1], width=shape[2], center_crop=True)
         .astype(np.float32)[None]}
        for p in paths
    ]  # fmt: skip


async def clusters_run(
    runs: list[tuple[Path, int]],
    work: Path,
    speed: float,
    args: argparse.Namespace,
    feeds: list[Any],
    local: Callable[[], Any],
) -> tuple[list[list[float]], list[list[float]], list[list[dict[str, Any]]], list[str]]:
    """Every cluster of ``runs`` (split directory, node count) started at once (idle ones
    cost ~2 % of a core), then rounds of single requests to each in turn and of the local
    model, so that drift on this shared machine hits them all alike: the local times,
    each cluster's latencies, its answers to ``feeds`` and its plan."""
    client = Client()
    try:
        async with contextlib.AsyncExitStack() as stack:
            clusters = []
            for index, (directory, nodes) in enumerate(runs):
                tag = f"spatial-{uuid.uuid4().hex[:8]}"
                config = write_config(work / f"{tag}.toml", tag, speed / 1e9, "litert")
                make = lambda d=directory, n=nodes, c=config, i=index: [  # noqa: E731
                    NodeProc(f"c{i}n{k}", work, c, d, core=k) for k in range(n)
                ]
                clusters.append(await stack.enter_async_context(running(client, make)))
            answers = [[await client.infer(c.origin, f) for f in feeds] for c in clusters]
            for c in clusters:
                await client.latencies(c.origin, feeds[0], WARMUP)
            times: list[list[float]] = [[] for _ in clusters]
            local_times: list[float] = []
            per_round = max(1, args.runs // args.rounds)
            for _ in range(args.rounds):
                local_times += pinned(0, lambda: timed(local, per_round, warmup=1))
                for c, out in zip(clusters, times, strict=True):
                    out += await client.latencies(c.origin, feeds[0], per_round)
            plans = []
            for c in clusters:
                runs_of = await stage_counters(client, c)
                part_ms = {p: total / count * 1e3 for p, (count, total) in runs_of.items()}
                plans.append(
                    ", ".join(
                        f"{n.split('n', 1)[1] if 'n' in n else n}: "
                        + " ".join(f"{p} ({part_ms.get(p, 0):.1f})" for p in range(a, b))
                        for n, a, b in c.stages
                    )
                )
            return [local_times], times, answers, plans
    finally:
        await client.aclose()


# -- the edge lab: the same splits on hosts of their own, over shaped gigabit Ethernet --------


async def _lab_client(spec: dict[str, Any]) -> dict[str, Any]:
    """On the client's lab host: wait for a settled plan, answer the feeds (saved for the
    parent to check), then time single requests; each part's mean time."""
    from edgelab import _Remote, settled
    from harness.cluster import Cluster

    client = Client()
    try:
        cluster = Cluster(nodes=[_Remote(n, a) for n, a in spec["nodes"].items()])
        await settled(client, cluster, {"wait_link": False, "stable_s": 2.0})
        feeds = dict(np.load(spec["feeds"]))
        inputs = [{spec["input"]: feeds[k]} for k in sorted(feeds)]
        answers = [await client.infer(cluster.origin, x) for x in inputs]
        np.savez(spec["answers"], *[np.asarray(next(iter(a.values()))) for a in answers])
        await client.latencies(cluster.origin, inputs[0], WARMUP)
        times = await client.latencies(cluster.origin, inputs[0], spec["runs"])
        runs_of = await stage_counters(client, cluster)
        part_ms = {p: total / count * 1e3 for p, (count, total) in runs_of.items()}
        plan = ", ".join(
            f"{n[1:]}: " + " ".join(f"{p} ({part_ms.get(p, 0):.1f})" for p in range(a, b))
            for n, a, b in cluster.stages
        )
        return {"times": times, "plan": plan}
    finally:
        await client.aclose()


def lab_runs(
    configs: list[tuple[str, Path, int]], work: Path, speed: float, feeds: list[Any],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each (label, split, nodes) on hosts of their own on the lab's ``ethernet`` profile
    (1 Gbit/s, shaped), each node pinned to its own core, the client on a host of its own."""
    from harness import ROOT
    from harness.lab import PROFILES, lab, unavailable

    from tests.lab import LabNode

    reason = unavailable()
    if reason:
        say(f"no edge lab here: {reason}")
        return []
    feeds_path = work / "feeds.npz"
    name = next(iter(feeds[0]))
    np.savez(feeds_path, **{f"x{i}": f[name] for i, f in enumerate(feeds)})
    out = []
    with lab() as lab_:
        client_host = lab_.add_host("client", PROFILES["ethernet"])
        for index, (label, directory, count) in enumerate(configs):
            tag = f"lab{index}-{uuid.uuid4().hex[:6]}"
            config = write_config(work / f"{tag}.toml", tag, speed / 1e9, "litert")
            hosts = [lab_.add_host(f"{tag}-{i}", PROFILES["ethernet"]) for i in range(count)]
            nodes = [LabNode(h, f"n{i}", work, "--config", str(config), "--model",
                             str(directory), cpu=i) for i, h in enumerate(hosts)]  # fmt: skip
            try:
                for node in nodes:
                    node.wait_serving(180.0)
                spec = {"nodes": {n.name: n.address for n in nodes}, "feeds": str(feeds_path),
                        "input": name, "answers": str(work / f"{tag}-answers.npz"),
                        "runs": args.runs}  # fmt: skip
                spec_path = work / f"{tag}.json"
                spec_path.write_text(json.dumps(spec))
                say(f"lab: {label}")
                done = client_host.run(
                    [sys.executable, str(Path(__file__).resolve()), "--client", str(spec_path)],
                    capture_output=True, text=True, cwd=ROOT, timeout=900,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                )  # fmt: skip
                if done.returncode != 0:
                    raise RuntimeError(f"lab client failed: {done.stderr[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                answers = np.load(spec["answers"])
                result["answers"] = [{"out": answers[k]} for k in sorted(answers)]
            finally:
                for node in nodes:
                    node.stop()
                for host in hosts:
                    host.kill()
            out.append({"label": f"lab ethernet: {label}", **result})
    return out


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def measure(key: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import keras

    from edgenode.model.graph import build_graph
    from edgenode.model.manifest import link_spec
    from edgenode.model.split import SpatialOptions

    title, build = MODELS[key]
    keras.utils.set_random_seed(0)
    model = build()
    base = work / key
    whole_dir = base / "whole"
    whole = split(model, whole_dir, parts=1)
    runners = PartRunners(whole_dir)
    spec = whole.model.inputs[0]
    feeds = photo_inputs(spec.name, spec.shape, ANSWER_INPUTS)
    local = pinned(0, lambda: timed(runners.whole(), 20, warmup=WARMUP))
    local_s = statistics.median(local)
    speed = whole.model.flops / local_s
    say(f"{key}: local {local_s * 1e3:.1f} ms, {speed / 1e9:.1f} GFLOP/s")
    link = link_spec(args.link_mbps, None)
    cut = {"link": link, "wire_format": args.wire_format}
    layer = split(model, base / "layer2", parts=2, **cut)
    options = SpatialOptions(stripes=2, speed=speed)
    tiled = split(model, base / "spatial2", spatial=options, **cut)
    refs = [runners.runners[0](f) for f in feeds]
    (out_name,) = refs[0]
    graph = build_graph(model)
    assert tiled.tiles is not None
    region_stop = tiled.parts[tiled.tiles.stripes[0]].stop
    rows: dict[str, Any] = {
        "key": key,
        "title": title,
        "gflops": whole.model.flops / 1e9,
        "local": local,
        "speed": speed,
        "region": f"ops 0-{region_stop - 1} ({graph.ops[region_stop - 1].name}) "
        f"of {len(graph.ops)}",
        "slices": [list(s.rows) for s in tiled.tiles.slices],
        "refs_differ": relative(refs[0][out_name], refs[1][out_name]),
        "configs": [],
    }
    configs = (
        ("1 node", whole_dir, whole, 1),
        ("2 nodes, layer-wise", base / "layer2", layer, 2),
        ("2 nodes, spatial", base / "spatial2", tiled, 2),
    )
    say(f"{key}: {', '.join(c[0] for c in configs)}, in {args.rounds} interleaved rounds")
    (local,), times, answers, plans = asyncio.run(
        clusters_run([(d, n) for _, d, _, n in configs], work, speed, args, feeds,
                     runners.whole())
    )  # fmt: skip
    rows["local"] = local
    for (label, _, manifest, nodes), took, got, plan in zip(
        configs, times, answers, plans, strict=True
    ):
        error = max(
            relative(np.asarray(a[name]), r[out_name])
            for a, r in zip(got, refs, strict=True)
            for name in a
        )
        pred_s, _ = predicted(manifest, nodes, speed)
        rows["configs"].append(
            {"label": label, "times": took, "plan": plan, "predicted_s": pred_s, "error": error}
        )
    if args.lab:  # the link the splits plan for is loopback's: the lab's prediction is gigabit
        lab_configs = [(label, d, n) for label, d, _, n in configs if n > 1]
        for run in lab_runs(lab_configs, work, speed, feeds, args):
            manifest = next(m for label, _, m, _ in configs if run["label"].endswith(label))
            run["predicted_s"] = predicted_on(manifest, 2, speed, link_spec(1000.0, None))
            run["error"] = max(
                relative(np.asarray(a["out"]), r[out_name])
                for a, r in zip(run.pop("answers"), refs, strict=True)
            )
            rows["configs"].append(run)
    return rows


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Spatial partitioning: one answer sooner than one device?",
        "",
        f"`{' '.join(['benchmarks/spatial.py', *sys.argv[1:]])}`, {when}. "
        f"LiteRT parts, one interpreter thread per node, each node pinned to its own core; "
        f"splits planned for a {args.link_mbps:g} Mbit/s link, tensors between parts in "
        f"{args.wire_format} (a row slice of the pixels too: exact for integers to 2048); "
        "single requests one after another from an unpinned client in the benchmark "
        "process. Ratios are to the local median of the same run.",
        "",
        *machine_lines(),
        "",
    ]
    rows = []
    for r in results:
        local_s = statistics.median(r["local"])
        rows.append([r["title"], "local (whole model, this process)", f"{local_s * 1e3:.1f}",
                     "1.00", "-", "-", "-", "-"])  # fmt: skip
        for c in r["configs"]:
            median = statistics.median(c["times"])
            rows.append(
                [
                    "",
                    c["label"],
                    f"{median * 1e3:.1f}",
                    f"{median / local_s:.2f}",
                    f"{c['predicted_s'] * 1e3:.1f}",
                    f"{c['predicted_s'] / median:.2f}",
                    c["plan"],
                    f"{c['error']:.1e}",
                ]
            )
    lines += table(
        "model|run|median ms|x local|predicted ms|predicted / measured|"
        "node: part (its mean ms)|answer error",
        rows,
    )
    lines += ["", "Answer error: largest |difference| relative to the largest |value| of the "
              "whole model's answer (LiteRT, this process), over two photos whose answers "
              "differ by the amount below.", ""]  # fmt: skip
    for r in results:
        spatial = next(c for c in r["configs"] if c["label"] == "2 nodes, spatial")
        layer = next(c for c in r["configs"] if c["label"] == "2 nodes, layer-wise")
        ratio = statistics.median(spatial["times"]) / statistics.median(r["local"])
        ratio_layer = statistics.median(layer["times"]) / statistics.median(r["local"])
        lines.append(
            f"- **{r['title']}** ({r['gflops']:.2f} GFLOP, {r['speed'] / 1e9:.1f} GFLOP/s "
            f"measured): striped region {r['region']}, stripe input rows {r['slices']}; "
            f"2 nodes spatial {ratio:.2f}x local, layer-wise {ratio_layer:.2f}x "
            f"(target <= {TARGET}: {'met' if ratio <= TARGET else 'not met'}); the two "
            f"references differ by {r['refs_differ']:.2f} (relative)."
        )
    plot_path = args.out_dir / "spatial.png"
    plot(results, plot_path, plot_footer("benchmarks/spatial.py", when))
    lines += ["", f"![latency per model and run]({plot_path.name})", ""]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, footer: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from harness.plots import grouped_bars, save_figures

    labels = ["local", *(c["label"] for c in results[0]["configs"])]
    series = [
        (label, [r["local"] if i == 0 else r["configs"][i - 1]["times"] for r in results])
        for i, label in enumerate(labels)
    ]
    fig, ax = plt.subplots(figsize=(10, 5))
    grouped_bars(ax, series, [r["key"] for r in results])
    ax.set_ylabel("single-request latency, ms")
    ax.set_title("spatial partitioning on 2 nodes (one core each) against one device")
    save_figures(plt, {path.name: fig}, footer, path.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="timed requests per run")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys")
    parser.add_argument(
        "--link-mbps",
        type=float,
        default=LOOPBACK_MBPS,
        help="the link the splits plan for (default: loopback, the nodes share this machine)",
    )
    parser.add_argument(
        "--wire-format",
        default="float32",
        help="between parts (float16 halves the bytes, exact for pixel rows; on this VM its "
        "casts cost more than the bytes on loopback)",
    )
    parser.add_argument(
        "--no-lab", dest="lab", action="store_false", help="skip the edge lab's Ethernet runs"
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the lab client, on its host
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where spatial.md goes")
    args = parser.parse_args()
    if args.client:
        spec = json.loads(Path(args.client).read_text())
        print(json.dumps(asyncio.run(_lab_client(spec))), flush=True)
        return
    from edgenode.model import tfsetup

    tfsetup.configure(threads=1)
    keys = [k for k in args.models.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="edgenode-spatial-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [measure(k, args, work) for k in keys]
    text = report(results, args)
    (args.out_dir / "spatial.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
