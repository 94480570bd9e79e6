"""The edge lab's report: tables, targets and the plot (benchmarks/edgelab.py)."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.report import machine_lines, met, plot_footer, table

FORMATS = ("float32", "float16", "int8")
PROFILES = ("ethernet", "fast-wifi", "wifi", "poor-wifi")
RATE_TOLERANCE = 0.15  # a profile's measured rate within 15 % of its nominal one
INT8_GAIN = 3.5  # the target on wifi: int8 / float32 pipelined throughput
AGREEMENT = 0.99
PREDICTION_TOLERANCE = 0.20  # predicted within 20 % of measured
CLIENT_LINK_BYTES_PER_S = 1e9 / 8  # the client's input reaches the first stage over gigabit
CORES = os.cpu_count() or 1


def _median(r: dict[str, Any]) -> float:
    return float(statistics.median(r["latencies_s"]))


def _pred_latency(r: dict[str, Any]) -> float:
    """The planner's latency for a request at the client's origin (``serving``, or the
    plan's own ``latency_s`` for runs recorded before it) plus what the planner does not
    see: the client's input to, and the answer from, the origin, over the client's gigabit
    path (CLIENT_LINK_BYTES_PER_S)."""
    plan_s = r["serving"]["latency_s"] if "serving" in r else r["predicted_latency_s"]
    edges = r["hop_bytes"][0] + r["hop_bytes"][-1]
    return float(plan_s) + edges / CLIENT_LINK_BYTES_PER_S


# CPU per request the lab spends besides the nodes, on the same cores: the client (1.0-1.2 ms
# measured outside the lab, one node on its own core, 2 requests in flight) and the kernel's
# veth, bridge and tbf path (0.2-0.8 ms of softirq in the lab's 2-node runs).
LAB_CLIENT_CPU_S = 1.5e-3


def machine_rps(r: dict[str, Any]) -> float:
    """What this machine's cores can serve (the lab's nodes are separate hosts on the
    network, not on the CPU): the cores over the CPU a request costs the nodes (the planner's
    ``serving.cpu_s``) plus the client and the kernel (LAB_CLIENT_CPU_S); for runs recorded
    before, one one-thread local run per core."""
    cpu = r.get("serving", {}).get("cpu_s")
    if cpu:
        return float(CORES / (cpu + LAB_CLIENT_CPU_S))
    return float(CORES * r["local"]["throughput_rps"])


def _pred_tput(r: dict[str, Any]) -> float:
    """The planner's throughput (``serving``: the origin's link feeds the other replicas;
    before it, pipelines / bottleneck), capped by what this machine's cores can compute."""
    if "serving" in r:
        devices = float(r["serving"]["throughput_rps"])
    else:
        b = r["predicted_bottleneck_s"]
        devices = r["replicas"] / b if b > 0 else 0.0
    return min(devices, machine_rps(r))


def _ratio(a: float, b: float) -> str:
    if not (a > 0 and b > 0):
        return "-"
    x = a / b
    return f"{x:.2f}" if 0.01 <= x < 100 else f"{x:.1e}"


def _kb(r: dict[str, Any]) -> str:
    return " → ".join(f"{b / 1e3:.0f}" for b in r["hop_bytes"])


def _cells(r: dict[str, Any]) -> list[object]:
    local = r["local"]
    lat, tput = _median(r), r["throughput_rps"]
    return [
        r["plan"],
        _kb(r),
        f"{lat * 1e3:.1f}",
        f"{lat / local['latency_s']:.2f}",
        f"{tput:.2f}",
        f"{tput / local['throughput_rps']:.2f}",
        f"{r['agree']}/{r['photos']}",
        f"{_pred_latency(r) * 1e3:.3g}",
        _ratio(_pred_latency(r), lat),
        f"{_pred_tput(r):.3g}",
        _ratio(_pred_tput(r), tput),
        _stability(r),
    ]


def _stability(r: dict[str, Any]) -> str:
    """'-' when the plan held; else how often a peer was marked dead and which plans the
    nodes served after the measurement."""
    held = r.get("plan_after") == [r.get("digest")]
    dead = r.get("marked_dead", 0)
    if held and not dead:
        return "-"
    after = "held" if held else "changed: " + " / ".join(r.get("plan_after", []))
    return f"{dead} peer(s) marked dead; plan {after}"


CELL_HEADERS = ("plan (parts per stage)|kB per request: input → hops → answer|latency ms|"
                "latency / local|throughput req/s|throughput / local|top-1 = local|"
                "predicted latency ms|predicted / measured|predicted req/s|"
                "predicted / measured|dropped peers (node logs)")  # fmt: skip


def _order(r: dict[str, Any]) -> tuple[int, int, int]:
    return PROFILES.index(r["profile"]), FORMATS.index(r["format"]), r["nodes"]


def _find(runs: Sequence[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    return next((r for r in runs if all(r.get(k) == v for k, v in want.items())), None)


def _clean(r: dict[str, Any]) -> bool:
    """No node dropped a peer, and the plan after the measurement is the one before it."""
    return not r.get("marked_dead") and r.get("plan_after") == [r.get("digest")]


def _within(ratio: float) -> bool:
    return abs(ratio - 1) <= PREDICTION_TOLERANCE


def targets(done: Sequence[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    table_runs = [r for r in done if r["kind"] == "table"]
    for count in sorted({r["nodes"] for r in table_runs}):
        f32 = _find(table_runs, profile="wifi", format="float32", nodes=count)
        i8 = _find(table_runs, profile="wifi", format="int8", nodes=count)
        if f32 and i8:
            gain = i8["throughput_rps"] / f32["throughput_rps"]
            agree = i8["agree"] / i8["photos"]
            clean = _clean(i8) and _clean(f32)
            rows.append([
                f"wifi, {count} nodes ({i8['plan']}): int8 throughput >= {INT8_GAIN}x float32, "
                f"top-1 >= {AGREEMENT:.0%}",
                f"{gain:.2f}x ({i8['throughput_rps']:.2f} / {f32['throughput_rps']:.2f} req/s); "
                f"top-1 {i8['agree']}/{i8['photos']}"
                + ("" if clean else "; peers dropped during the run"),
                met(gain >= INT8_GAIN and agree >= AGREEMENT and clean),
            ])  # fmt: skip
    for r in done:
        if r["kind"] != "planner" or r["link_mbps"]:
            continue
        lat = _pred_latency(r) / _median(r)
        tput = _pred_tput(r) / r["throughput_rps"]
        rows.append([
            f"{r['profile']}, {r['format']}, {_nodes_label(r)}, real speeds, link measured "
            f"({r['plan']}): "
            "planner's latency and "
            "throughput within 20 % of measured",
            f"predicted latency {lat:.2f}x, throughput {tput:.2f}x the measured"
            + ("" if _clean(r) else f"; {r['marked_dead']} peer drops under load"),
            met(_within(lat) and _within(tput)),
        ])  # fmt: skip
    priced = [r for r in table_runs if "serving" in r]
    if priced:
        ratios = {r["tag"]: (_pred_latency(r) / _median(r), _pred_tput(r) / r["throughput_rps"])
                  for r in priced}  # fmt: skip
        worst = max(ratios, key=lambda t: max(abs(math.log(x)) for x in ratios[t]))
        missed = [t for t, (lat, tput) in ratios.items() if not (_within(lat) and _within(tput))]
        lats = [lat for lat, _ in ratios.values()]
        tputs = [tput for _, tput in ratios.values()]
        rows.append([
            f"also: the table's {len(priced)} clusters, plans the planner would not choose "
            "(forced by pinned speeds) priced with the nodes' real speed: latency and "
            "throughput within 20 % of measured",
            f"latency {min(lats):.2f}-{max(lats):.2f}x, throughput "
            f"{min(tputs):.2f}-{max(tputs):.2f}x the measured; worst {worst}"
            + (f"; outside 20 %: {', '.join(missed)}" if missed else ""),
            met(not missed),
        ])  # fmt: skip
    for fmt in FORMATS:
        for count, pinned in sorted(_planner_kinds(done)):
            rows += _ab(done, fmt, count, pinned)
    return rows


def _planner_kinds(done: Sequence[dict[str, Any]]) -> set[tuple[int, bool]]:
    return {(r["nodes"], bool(r.get("pinned"))) for r in done if r["kind"] == "planner"}


def _nodes_label(r: dict[str, Any]) -> str:
    return f"{r['nodes']} nodes" + (", one core each" if r.get("pinned") else "")


def _ab(done: Sequence[dict[str, Any]], fmt: str, count: int, pinned: bool) -> list[list[object]]:
    """The poor-wifi A/B in ``fmt``: the plan for the measured link against the gigabit one."""
    rows: list[list[object]] = []
    runs = [r for r in done if r["nodes"] == count and bool(r.get("pinned")) == pinned]
    measured = _find(runs, kind="planner", profile="poor-wifi", format=fmt, link_mbps=0.0)
    told = _find(runs, kind="planner", profile="poor-wifi", format=fmt, link_mbps=1000.0)
    if measured and told:
        narrower = (len(measured["stages"]), measured["hop_bytes"][1:-1]) != (
            len(told["stages"]), told["hop_bytes"][1:-1])  # fmt: skip
        fewer = len(measured["stages"]) < len(told["stages"]) or sum(
            measured["hop_bytes"][1:-1]) < sum(told["hop_bytes"][1:-1])  # fmt: skip
        faster = measured["throughput_rps"] > told["throughput_rps"]
        rows.append([
            f"poor-wifi, {_nodes_label(measured)}, real speeds, {fmt}: the plan for the "
            "measured link is narrower or has "
            "fewer stages than the gigabit plan, and measures faster",
            f"measured link: {measured['plan']}, {len(measured['stages'])} stage(s) x "
            f"{measured['replicas']} pipeline(s), {sum(measured['hop_bytes'][1:-1]) / 1e3:.0f} kB "
            f"between stages, {measured['throughput_rps']:.2f} req/s, "
            f"{_median(measured) * 1e3:.0f} ms; told gigabit: {told['plan']}, "
            f"{len(told['stages'])} stage(s) x {told['replicas']}, "
            f"{sum(told['hop_bytes'][1:-1]) / 1e3:.0f} kB, {told['throughput_rps']:.2f} req/s, "
            f"{_median(told) * 1e3:.0f} ms",
            met(narrower and fewer and faster and _clean(measured) and _clean(told))
            + ("" if _clean(measured) and _clean(told) else
               f" (peers dropped under load, {measured['marked_dead']} and "
               f"{told['marked_dead']} times: the figures are not of these plans alone)"),
        ])  # fmt: skip
    return rows


def _local_line(done: Sequence[dict[str, Any]]) -> str:
    lat = [r["local"]["latency_s"] * 1e3 for r in done]
    tput = [r["local"]["throughput_rps"] for r in done]
    if not lat:
        return "no cluster measured yet"
    return (f"the whole model here (LiteRT, one thread), timed right before each cluster: "
            f"median latency {min(lat):.1f}-{max(lat):.1f} ms, throughput "
            f"{min(tput):.1f}-{max(tput):.1f} req/s over the run")  # fmt: skip


def report(args: Any, rate_rows: Sequence[dict[str, Any]], done: Sequence[dict[str, Any]],
           failed: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]],
           seconds: float) -> str:  # fmt: skip
    finished = {r["tag"] for r in done} | {r["tag"] for r in failed}
    missing = [r["tag"] for r in runs if r["tag"] not in finished]
    table_runs = [r for r in done if r["kind"] == "table"]
    planner_runs = [r for r in done if r["kind"] == "planner"]
    lines = [
        "# The edge lab: wire formats, link profiles and the planner on separate hosts",
        "",
        *machine_lines(),
        f"- command: `{'`, then `'.join(args.commands)}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f", {seconds:.0f} s (the last run)" if seconds else "")
        + (
            f"; **partial: {len(missing)} cluster(s) not run yet or cut by the time budget: "
            f"{', '.join(missing)}**"
            if missing
            else ""
        ),
        "- every host a network namespace on a private bridge, its link shaped with tbf "
        "(benchmarks/harness/lab.py); nothing shares the machine's network",
        "- model: the trained EfficientNet-Lite0 (ImageNet weights), 8 LiteRT parts, one split "
        "per wire format with the same cuts; nodes run their parts with one thread",
        f"- local: {_local_line(done)}",
        f"- top-1 = local: each of the {len(args.photo_paths)} sample photos "
        f"({', '.join(Path(p).name for p in args.photo_paths)}) answered by the cluster "
        "against the float32 whole model here; benchmarks/results/wire_formats.md has the "
        "same check over 213 inputs, offline",
        "",
        "## Link rates",
        "",
        f"One TCP transfer between two hosts of a profile, about {args.rate_s:g} s at its rate.",
        "",
        *table(
            "profile|profile Mbit/s|measured Mbit/s|measured / profile|within 15 %",
            [
                [
                    r["profile"],
                    f"{r['nominal'] / 1e6:g}",
                    f"{r['measured'] / 1e6:.1f}",
                    f"{r['measured'] / r['nominal']:.2f}",
                    met(abs(r["measured"] / r["nominal"] - 1) <= RATE_TOLERANCE),
                ]
                for r in rate_rows
            ],
        ),
        "",
        "## Targets",
        "",
        *table("target|measured|", targets(done)),
        "",
        "## Profiles x wire formats x nodes",
        "",
        f"One node per host; **node speeds pinned to {args.pinned_gflops:g} GFLOP/s** so that "
        "every node gets a stage (a multi-stage cut, bound by the link on the slow profiles; "
        "with real speeds the planner would not cut the model over wifi at all, see the "
        "planner section). Nodes measure their link (Probe RPC). The client sits on a host "
        "of its own, wired (ethernet profile); once the plan is agreed, the first node's "
        "download is unshaped, so the client's float32 input reaches the first stage at "
        "gigabit and every hop between nodes crosses the sender's shaped upload and the "
        "receiver's shaped download. Latency: median of up to "
        f"{args.requests} requests one at a time (at least 3, for about {args.window_s:g} s); "
        f"throughput: {args.window_s:g} s with 2 requests per node in flight, completions "
        "after the first over the time they took. kB per request: the client's input, each "
        "hop between stages (the manifest's boundary tensors in the wire format: float16 "
        "half, int8 a quarter plus an 8-byte header; exact, not frames), the answer. "
        "Predicted: the planner's model of the agreed plan, priced with the nodes' real "
        "speed (the model's FLOPs over its local latency), for requests entering at the "
        "client's origin (`edgenode.planning.serving`: the origin's own pipeline, and the "
        "others fed over the origin's link) plus the client's input and the answer over "
        "gigabit, which no plan sees; throughput capped at what this machine's "
        f"{CORES} cores serve (the lab's hosts share them): the cores over the CPU the "
        "planner says a request costs the nodes, plus "
        f"{LAB_CLIENT_CPU_S * 1e3:g} ms for the client and the kernel's network path. "
        "Ratios to local: the whole model in this process right before the cluster.",
        "",
        *table(
            "profile|nodes|format|" + CELL_HEADERS,
            [
                [r["profile"], r["nodes"], r["format"], *_cells(r)]
                for r in sorted(table_runs, key=_order)
            ],
        ),
        "",
        "## The planner with real node speeds",
        "",
        'Nodes per cluster as the table says ("one core each": `--pin`, node i on core i '
        "of this machine's, the other processes anywhere), "
        + (
            "each node's speed set to the model's FLOPs over "
            "its median latency here (LiteRT, one thread), i.e. what a node really does; "
            "the nodes' own self-benchmark is not used (see the notes)"
            if args.planner_speed == "calibrated"
            else "each node's speed from its own self-benchmark (`speed_gflops = 0`)"
        )
        + ", same hosts and client as above, wire format "
        + "/".join(sorted({r["format"] for r in planner_runs}))
        + ". `link measured`: `link_mbps = 0`, each node measures its link and the planner "
        "knows it; `told 1000`: `link_mbps = 1000`, the planner believes "
        "gigabit. Predicted: as in the table above.",
        "",
        *table(
            "profile|format|nodes|link|node speeds GFLOP/s|links Mbit/s as planned|" + CELL_HEADERS,
            [
                [
                    r["profile"],
                    r["format"],
                    _nodes_label(r),
                    "told 1000" if r["link_mbps"] else "measured",
                    " ".join(f"{v:.2g}" for _, v in sorted(r["speeds_gflops"].items())),
                    " ".join(f"{v:.3g}" for _, v in sorted(r["links_mbps"].items())),
                    *_cells(r),
                ]
                for r in planner_runs
            ],
        ),
        "",
    ]
    if failed:
        lines += ["## Clusters that failed", ""]
        lines += [f"- {r['tag']}: ```{r['error'][-800:]}```" for r in failed]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(args: Any, done: Sequence[dict[str, Any]], path: Path) -> None:
    """Throughput / local per profile and format, one panel per node count."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table_runs = [r for r in done if r["kind"] == "table"]
    counts = sorted({r["nodes"] for r in table_runs})
    if not counts:
        return
    profiles = [p for p in PROFILES if any(r["profile"] == p for r in table_runs)]
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4.2), squeeze=False)
    for ax, count in zip(axes[0], counts, strict=True):
        width = 0.8 / len(FORMATS)
        for j, fmt in enumerate(FORMATS):
            values, dropped = [], []
            for p in profiles:
                r = _find(table_runs, profile=p, format=fmt, nodes=count)
                values.append(r["throughput_rps"] / r["local"]["throughput_rps"] if r else 0)
                dropped.append(bool(r) and not _clean(r))
            x = np.arange(len(profiles)) + (j - 1) * width
            bars = ax.bar(x, values, width, label=fmt)
            for bar, hatched in zip(bars, dropped, strict=True):
                if hatched:  # a peer dropped under load: not the plan's own figure
                    bar.set_hatch("//")
                    bar.set_edgecolor("black")
        ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(profiles)), profiles)
        ax.set_ylabel("pipelined throughput / local (log)")
        ax.set_title(f"{count} nodes, EfficientNet-Lite0, 8 LiteRT parts\n"
                     "(hatched: nodes dropped a peer during the run)", fontsize=10)  # fmt: skip
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    footer = plot_footer(args.command, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    fig.text(0.01, 0.01, footer, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# what the report needs of a run's options, kept with its results for --report-only
META = ("photo_paths", "rate_s", "requests", "window_s", "planner_nodes", "planner_speed",
        "pinned_gflops", "local_gflops")  # fmt: skip


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["kind"], r["profile"], r["format"], r["nodes"], r["link_mbps"],
            r.get("pinned", False))  # fmt: skip


def merged(
    args: Any, done: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """This run's clusters over the earlier run's (``--merge``): a cluster run again replaces
    its earlier result; an earlier failure stays only while nothing replaced it."""
    earlier_done, earlier_failed = args.earlier
    now = {_key(r) for r in done} | {_key(r) for r in failed}
    all_done = [r for r in earlier_done if _key(r) not in now] + list(done)
    ok = {_key(r) for r in all_done}
    all_failed = [r for r in [*earlier_failed, *failed] if _key(r) not in ok]
    return all_done, all_failed


def write_results(args: Any, rate_rows: Sequence[dict[str, Any]],
                  done: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]],
                  runs: Sequence[dict[str, Any]], seconds: float) -> str:  # fmt: skip
    """edgelab.md and edgelab.png in ``args.out_dir``, the raw runs in ``args.work``; the
    markdown."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    done, failed = merged(args, done, failed)
    text = report(args, rate_rows, done, failed, runs, seconds)
    (args.out_dir / "edgelab.md").write_text(text)
    meta = {k: getattr(args, k) for k in META}
    raw = {"rates": list(rate_rows), "runs": list(done), "failed": list(failed),
           "commands": args.commands, "meta": meta}  # fmt: skip
    (args.work / "edgelab.json").write_text(json.dumps(raw, indent=1))
    plot(args, done, args.out_dir / "edgelab.png")
    return text
