"""End-to-end inference benchmark: real `edgenode run` processes on 127.0.0.1 (issue 7).

    .venv/bin/python benchmarks/inference.py [--quick] [--sections 1,2,3,4,5,6]

Every node is a separate `edgenode run` process (mDNS on loopback, insecure, unique node
and cluster names); the client (this process) sends requests over gRPC to the node that
owns part 0, which is the request's origin. All nodes of a cluster advertise one pinned
`speed_gflops` (self-benchmarks on a shared machine are noisy). Sections:

1. Prototype table: MobileNetV3Large, one request at a time, the whole model locally (the
   same part runner a node uses, in this process) against 5 nodes with one part each, Keras
   and LiteRT parts, and 5 nodes with one operation per part (Keras); local and cluster runs
   interleaved in rounds. Target: 5-node mean / local mean <= 1.5.
2. Hops: the model cut into 8 parts; nodes join one by one up to 8, then leave one by one;
   single-request latency at each size; added latency per hop = least-squares slope of the
   median latency against stages - 1. Target: <= 250 us.
3. Pipelining: requests/s with several requests in flight, for 1 node on core 0, 2 nodes on
   cores 0 and 1 (a 2-part pipeline; cut balanced on FLOPs, and cut balanced on an
   `edgenode profile` measured on core 0 first), and two independent 1-node clusters on
   cores 0 and 1 (the ceiling); all started under `taskset`, measured in interleaved rounds.
   Target: the pipeline reaches >= 90 % of the ceiling.
4. Backends: Keras against LiteRT per part (in this process and as measured by the nodes)
   and end to end.
5. Planner: predicted against measured compute time per stage; the balanced split against
   an equal-operations split (bottleneck stage).
6. A second model (DenseNet121: its parts have several inputs): section 1's table.

Before each measurement the benchmark waits (polling CPU use, at most 15 s) until every
node process is idle. Writes benchmarks/results/inference.md, inference.json and
inference-*.png. The full run takes about 10-15 minutes on 2 cores (splits included);
--quick (few runs, about 5 minutes) is for trying the script out; --workdir DIR keeps the
splits and node logs for the next run; --out-dir DIR writes the results elsewhere. A check in
under a minute that runs no node: ``--quick --sections 4,5 --model tiny.keras --out-dir /tmp/x``
(any small functional ``.keras`` file).

This file is the dispatcher; each section is a module of ``benchmarks/_inference/`` (1
prototype, 2 hops, 3 pipelining, 4 backends, 5 planner, 6 second_model; 1 and 6 share
latency), over the shared harness in ``benchmarks/harness/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from _inference import backends, hops, latency, pipelining, planner, prototype, second_model
from _inference.context import Context, Section, Settings
from harness import RESULTS
from harness.cluster import Client
from harness.models import Splits
from harness.plots import save_figures
from harness.report import machine_lines, plot_footer, say

ALL_SECTIONS = (1, 2, 3, 4, 5, 6)


def make_plots(sections: Mapping[int, Section], footer: str, out_dir: Path) -> list[str]:
    """Write the PNGs of the sections that ran, each with ``footer`` (machine, command)
    under it; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {n: sec.data for n, sec in sections.items() if sec.data and not sec.error}
    figures = {}
    models = [data[n] for n in (1, 6) if n in data]
    if models:
        figures["inference-latency.png"] = latency.plot(plt, models)
    if 2 in data:
        figures["inference-hops.png"] = hops.plot(plt, data[2])
    if 3 in data:
        figures["inference-pipelining.png"] = pipelining.plot(plt, data[3])
    if 4 in data:
        figures["inference-backends.png"] = backends.plot(plt, data[4])
    if 5 in data:
        figures["inference-planner.png"] = planner.plot(plt, data[5], data.get(1))
    return save_figures(plt, figures, footer, out_dir)


# -- main --------------------------------------------------------------------------------------

SECTIONS: dict[int, tuple[str, Callable[[Context, Section], Any]]] = {
    1: ("Prototype table: local whole model against 5 nodes", prototype.section_prototype),
    2: ("Hops: latency against the number of nodes", hops.section_hops),
    3: ("Pipelining: requests/s under concurrent load", pipelining.section_pipelining),
    4: ("Backends: Keras against LiteRT", backends.section_backends),
    5: ("Planner: predicted against measured", planner.section_planner),
    6: ("A second model: multi-input parts", second_model.section_second_model),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs, to try the script out")
    parser.add_argument(
        "--sections",
        default=",".join(map(str, ALL_SECTIONS)),
        help="comma-separated section numbers (default: all)",
    )
    parser.add_argument("--model", default="MobileNetV3Large")
    parser.add_argument("--second-model", default="DenseNet121")
    parser.add_argument("--runs", type=int, help="single requests per latency setup (100)")
    parser.add_argument("--hop-runs", type=int, help="single requests per cluster size (100)")
    parser.add_argument("--load-seconds", type=float, help="window per throughput point (15)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument(
        "--hop-backend",
        choices=("litert", "keras"),
        default="litert",
        help="parts of the hop measurement (default litert: see the notes)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS,
        help="where inference.md, inference.json and the plots go (default: benchmarks/results)",
    )
    parser.add_argument(
        "--workdir", help="keep splits and node logs here and reuse its splits (default: temp)"
    )
    args = parser.parse_args(argv)
    try:
        args.section_list = sorted({int(x) for x in args.sections.split(",") if x.strip()})
    except ValueError:
        parser.error("--sections: expected numbers like 1,2,3")
    if not set(args.section_list) <= set(ALL_SECTIONS):
        parser.error(f"--sections: choose from {ALL_SECTIONS}")
    return args


async def run_sections(ctx: Context) -> dict[int, Section]:
    done: dict[int, Section] = {}
    try:
        for number in ctx.args.section_list:
            title, fn = SECTIONS[number]
            sec = Section(number=number, title=title)
            say(f"section {number}: {title}")
            started = time.monotonic()
            try:
                await fn(ctx, sec)
            except Exception as exc:  # report and go on: one failure must not lose the others
                sec.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            sec.seconds = time.monotonic() - started
            done[number] = sec
            print(f"\n## {number}. {title}\n")
            print("\n".join(sec.lines) if not sec.error else f"FAILED: {sec.error}")
    finally:
        await ctx.client.aclose()
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "benchmarks/inference.py", *sys.argv[1:]])
    from edgenode.model.tfsetup import configure

    configure()  # the same TensorFlow set-up as a node (default threads)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices: every part is its own tf.function
    from edgenode.runtime.selfbench import measure_speed
    from edgenode.transport import run, tune_malloc

    tune_malloc()
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="edgenode-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    selfbench = measure_speed() / 1e9
    started = time.monotonic()
    ctx = Context(
        settings=Settings.make(args),
        args=args,
        work=work,
        run_id=f"inf{uuid.uuid4().hex[:4]}",
        splits=Splits(work / "splits"),
        client=Client(),
    )
    failed = True
    try:
        sections = run(run_sections(ctx))
        failed = any(sec.error for sec in sections.values())
    finally:
        if failed and not keep:
            say(f"kept {work} (node logs) for a look at what failed")
        elif not keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(sections, plot_footer(command, time.strftime("%Y-%m-%d %H:%M")), out)
    s = ctx.settings
    speeds = ", ".join(f"{k} {v} GFLOP/s" for k, v in ctx.calibrated.items())
    lines = [
        "# Inference benchmark",
        "",
        f"- command: `{command}`",
        *machine_lines(),
        f"- run: {time.strftime('%Y-%m-%d %H:%M')}, {elapsed / 60:.1f} min; load average "
        f"(1 min) {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
        + (" (--quick: few runs, noisy)" if args.quick else ""),
        "- every node is an `edgenode run` process on 127.0.0.1 (mDNS on loopback, insecure); "
        "the client is this process; figures are medians with p10-p90 over repeated runs (or "
        "mean and std where the prototype's table used them)",
        f"- speeds: the node self-benchmark (`measure_speed`) gave {selfbench:.2f} GFLOP/s in "
        "this process; the benchmark pins one `speed_gflops` for all nodes of a cluster instead "
        f"(measured on the whole model: {speeds}), lowered where needed so that the planner "
        "uses every node (see each section)",
    ]
    if ctx.splits.seconds:
        made = ", ".join(f"{k} {v:.0f} s" for k, v in ctx.splits.seconds.items())
        lines.append(f"- splits made for this run: {made}")
    if ctx.targets:
        lines += ["", "Targets (issue 7):", "", *(f"- {t}" for t in ctx.targets)]
    for number, sec in sections.items():
        lines += ["", f"## {number}. {sec.title}", ""]
        if sec.error:
            lines.append(f"**Failed** after {sec.seconds:.0f} s: `{sec.error}`")
        else:
            lines += sec.lines
        lines += ["", f"_section time: {sec.seconds:.0f} s_"]
    lines += ["", "## Notes", "", *NOTES]
    text = "\n".join(lines) + "\n"
    (out / "inference.md").write_text(text)
    raw = {
        "command": command,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": args.quick,
        "settings": dataclasses.asdict(s),
        "elapsed_s": elapsed,
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "selfbench_gflops": selfbench,
        "calibration": ctx.calibration,
        "split_seconds": ctx.splits.seconds,
        "sections": {
            str(n): {
                "title": sec.title,
                "error": sec.error,
                "seconds": sec.seconds,
                "data": sec.data,
            }
            for n, sec in sections.items()
        },
        "plots": plots,
        "targets": ctx.targets,
    }
    (out / "inference.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    say(f"wrote {out / 'inference.md'}, inference.json and {', '.join(plots)}")
    return 1 if any(sec.error for sec in sections.values()) else 0


NOTES = [
    "- The machine has 2 cores and every process shares them: up to 8 node processes, and the "
    "client (this process, which also runs the local baselines). One request at a time keeps "
    "one node busy at a time; under load (section 3) the unpinned client takes its share "
    "(column 'client CPU %') from the same two cores as the pinned nodes, in every setup.",
    "- The planner plans for gigabit Ethernet (125 MB/s, 0.5 ms per hop) even on loopback; at "
    "the speed the model really reaches here, sends cost as much as compute, so it merges "
    "parts and puts the spare nodes in replicas (requests then alternate between pipelines). "
    "To measure N stages on N nodes the benchmark pins a lower `speed_gflops` (planning only: "
    "it does not change how fast a node runs); each section says which.",
    "- Measured stage times come from the nodes (`GetStatus` stages: count and mean run time "
    "per owned part, differenced before and after the timed requests); a node times a part "
    "on the thread that runs it (its event loop or a worker), from its inputs to its "
    "outputs: no queueing or "
    "hand-off is in the figure. These columns have no spread: nodes also report the median "
    "and p90 of their last 256 runs, but only counts and means can be differenced between "
    "two snapshots.",
    "- LiteRT nodes do not import TensorFlow: they start and agree in ~2 s, Keras nodes in "
    "10-30 s on this machine.",
    "- The hop measurement uses LiteRT parts by default: its nodes start in a second or two, "
    "so a size whose cluster does not agree can be started again cheaply. With 7-8 nodes on "
    "2 cores, agreement can fail: while confirming a plan every node asks every other one "
    "for its digest every 20 ms, which keeps the cores busy, a peer that does not answer "
    "within 0.5 s twice is marked dead, and nodes whose members then disagree keep "
    "confirming without ever probing the dead peer again. The 8 parts run at every size, so "
    "the slope (the cost of a hop) does not depend on the backend's speed.",
]


if __name__ == "__main__":
    sys.exit(main())
