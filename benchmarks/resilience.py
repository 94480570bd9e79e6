"""Requests under faults, and a load run with memory growth, on real node processes.

    .venv/bin/python benchmarks/resilience.py [--scenarios all] [--load-seconds 60] \\
        [--soak-minutes 10] [--model MobileNetV3Large|EfficientNetLite0|multi_io] \\
        [--weights none|imagenet|PATH] [--mutate KIND@PART]

Every scenario starts its own cluster of `edgenode run` processes on 127.0.0.1 (mDNS on
loopback, pinned speeds, `[limits] request_deadline_s = 10`), runs a load of clients, and
injects one fault. Requests draw their inputs round-robin from a pool of distinct
photo-like pictures (``calibration_batch``, seed 1; 4 per client of the largest load, so
requests in flight never share one: see tests/faults.py), and each answer is checked
against its own input's logits computed locally once (``ReferenceSet``, which refuses
references that do not move with their input and names the input a crossed answer belongs
to). Application models are built with logits (no softmax); random weights are the
calibrated ones every node builds. Faults: SIGKILL of
the first, a middle, the final stage, of an idle or replica node, of an origin; SIGSTOP for
3 s then SIGCONT of a stage; a restart under the same name; a node joining mid-load (the
harness is tests/faults.py). The clients are the product's: a request whose origin goes
away is re-sent to another node. Each request ends correct, wrong, failed with a status, or
lost (no status before the client's 25 s deadline). Target: failed 0 for the origin kill,
lost 0 and wrong 0 everywhere. ``--mutate KIND@PART`` gives every node
``EDGENODE_TEST_MUTATE`` (whichever node runs that part breaks it: edgenode/_mutate.py), to
show that the same check counts wrong answers as wrong.

Then the load run: 5 nodes, 16 concurrent clients round-robin over all nodes as origins,
`--load-seconds` (or `--soak-minutes`) after a warm-up: throughput, p50/p99 latency,
errors, and each node's RSS (VmRSS) after the warm-up and at the end. Target: growth < 5%.
Writes benchmarks/results/resilience.md (or --out).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from harness import RESULTS  # puts the repository root on sys.path

from tests.faults import (
    POOL_PER_CLIENT,
    SCENARIOS,
    Cluster,
    Counts,
    Layout,
    Load,
    Pool,
    ScenarioResult,
    format_result,
    make_pool,
    multi_io_layout,
    run_named,
    summarize,
)
from tests.nodes import wait_until
from tests.reference import APPLICATION_TOLERANCE, KERAS_TOLERANCE

RSS_GROWTH_TARGET = 5.0  # percent
NODE_DEADLINE_S = 10.0
MIB = 1 << 20
POOL_SEED = 1  # the pool's pictures; calibration uses seed 0 (edgenode.model.loading)


def prepare(args: argparse.Namespace, work: Path) -> tuple[Layout, Pool, str]:
    """The split model, its layout of nodes and the request pool; a one-line description."""
    from edgenode._mutate import ENV_VAR, Mutation
    from edgenode.model.calibrate import calibration_batch
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model

    env: dict[str, str] = {}
    if args.mutate:
        Mutation.parse(args.mutate)  # a malformed one fails here, not in every node's log
        env[ENV_VAR] = args.mutate
    split_dir = work / "split"
    if args.model == "multi_io":
        from tests.model import models

        model = models.build("multi_io")
        split_model(model, split_dir, cuts=[2, 4, 6])
        batches = [models.sample_inputs(model, seed=s, batch=1) for s in range(args.samples)]
        layout = replace(multi_io_layout(split_dir, deadline_s=NODE_DEADLINE_S), env=env)
        # Keras nodes answer this small model within 1e-6 (see tests/test_faults.py)
        tolerance = KERAS_TOLERANCE
        what = "multi_io (tests/model/models.py) cut at [2, 4, 6] into 4 parts"
    else:
        from edgenode.model.loading import load_model

        model = load_model(args.model, weights=args.weights, logits=True)
        split_model(model, split_dir, parts=args.parts)
        graph = build_graph(model)
        (name,) = graph.inputs
        shape = tuple(d or 1 for d in graph.tensors[name].shape[1:])
        pictures = calibration_batch(shape, POOL_SEED, count=args.samples)
        batches = [{name: pictures[i : i + 1]} for i in range(args.samples)]
        layout = Layout(
            model_dir=split_dir,
            speeds={f"n{i}": args.gflops for i in range(args.nodes)},
            extra=(f"n{args.nodes}", args.gflops),
            deadline_s=NODE_DEADLINE_S,
            env=env,
        )
        tolerance = APPLICATION_TOLERANCE
        weights = args.weights or "none"
        what = (
            f"{args.model} (logits, weights {weights}"
            f"{', BatchNorm-calibrated' if weights == 'none' else ''}) split into "
            f"{args.parts} parts"
        )
    pool = make_pool(build_graph(model), batches, tolerance=tolerance)
    what += (
        f"; a pool of {len(pool)} inputs whose references differ pairwise by at least "
        f"{pool.references.spread():.3g} (max abs), tolerance {tolerance:g}"
    )
    return layout, pool, what


@dataclass
class LoadRun:
    """What the load run measured."""

    nodes: list[str]
    plan: str
    roles: dict[str, str]
    clients: int
    seconds: float
    warmup_s: float
    counts: Counts
    throughput: float  # correct answers per second
    intervals: list[float]  # correct answers per second, per interval
    rss_start: dict[str, int]
    rss_end: dict[str, int]
    rss_max: dict[str, int]
    log_findings: list[str]


def load_run(
    layout: Layout,
    pool: Pool,
    work: Path,
    *,
    nodes: int,
    clients: int,
    seconds: float,
    warmup_s: float,
    interval_s: float,
) -> LoadRun:
    """``nodes`` nodes (the layout's, then its extra one), ``clients`` clients round-robin
    over every node for ``seconds`` after ``warmup_s``; RSS after warm-up and at the end."""
    speeds = dict(list({**layout.speeds, layout.extra[0]: layout.extra[1]}.items())[:nodes])
    cluster = Cluster(layout.model_dir, work, speeds, deadline_s=layout.deadline_s, env=layout.env)
    with cluster:
        roles = cluster.roles()
        names = cluster.names()
        load = Load(
            [cluster.address(n) for n in names],
            pool,
            clients=clients,
            deadline_s=2 * layout.deadline_s + 5.0,
        )
        with load:
            # answers of any outcome: a mutated cluster (--mutate) answers none correctly
            wait_until(lambda: len(load.records) >= clients, 120, "first answers")
            time.sleep(warmup_s)  # warm-up: a fixed length
            rss_start = {n: cluster.rss_bytes(n) for n in names}
            rss_max = dict(rss_start)
            began = time.monotonic()
            marks = [began]
            while (left := began + seconds - time.monotonic()) > 0:
                time.sleep(min(interval_s, left))  # the run's length, sampled every interval
                marks.append(time.monotonic())
                for n in names:
                    rss_max[n] = max(rss_max[n], cluster.rss_bytes(n))
                load.check()
                print(
                    f"  load: {marks[-1] - began:.0f}/{seconds:.0f} s, "
                    f"{load.correct_since(began)} correct",
                    flush=True,
                )
            ended = time.monotonic()
            rss_end = {n: cluster.rss_bytes(n) for n in names}
        records = load.stop()
        findings = cluster.log_findings()
    window = [r for r in records if began <= r.started_s < ended]
    counts = summarize(window)
    intervals = [
        sum(1 for r in window if r.outcome == "correct" and a <= r.started_s < b) / (b - a)
        for a, b in itertools.pairwise(marks)
        if b > a
    ]
    return LoadRun(
        nodes=names,
        plan=roles.summary(),
        roles={n: roles.describe(n) for n in names},
        clients=clients,
        seconds=ended - began,
        warmup_s=warmup_s,
        counts=counts,
        throughput=counts.correct / (ended - began),
        intervals=intervals,
        rss_start=rss_start,
        rss_end=rss_end,
        rss_max=rss_max,
        log_findings=findings,
    )


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def scenario_rows(results: list[ScenarioResult], errors: dict[str, str]) -> list[str]:
    lines = [
        "| scenario | victim (role) | requests | correct | failed with error | lost | wrong "
        "| fault s | re-agreed s after it | p99 ms |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.title} | skipped: {r.skipped} | | | | | | | | |")
            continue
        c = r.counts
        assert c is not None
        failed = str(c.failed_total) + (f" ({c.failed_text()})" if c.failed_total else "")
        agreed = "STUCK" if r.stuck else f"{r.agreed_after_s:.2f}"
        lines.append(
            f"| {r.title} | {r.victim} ({r.victim_role}) | {c.sent} | {c.correct} | {failed} "
            f"| {c.lost} | {c.wrong_text()} | {r.fault_s:.2f} | {agreed} | {_ms(c.p99_s)} |"
        )
    for key, error in errors.items():
        lines.append(f"| {SCENARIOS[key].title} | did not run: {error} | | | | | | | | |")
    return lines


def load_lines(run: LoadRun) -> list[str]:
    c = run.counts
    errors = c.failed_total + c.lost + c.wrong
    crossed = f"; {c.wrong_matched} equal another request's answer" if c.wrong else ""
    lines = [
        f"- {len(run.nodes)} nodes, plan `{run.plan}`; {run.clients} clients, one request "
        "at a time each, round-robin over every node as origin; "
        f"{run.seconds:.0f} s measured after a {run.warmup_s:.0f} s warm-up",
        "",
        "| throughput req/s | p50 ms | p99 ms | requests | correct "
        "| errors (failed / lost / wrong) | slowest 10 s interval req/s |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        f"| {run.throughput:.1f} | {_ms(c.p50_s)} | {_ms(c.p99_s)} | {c.sent} | {c.correct} "
        f"| {errors} ({c.failed_total} / {c.lost} / {c.wrong}{crossed}) "
        f"| {min(run.intervals, default=math.nan):.1f} |",
        "",
        f"Largest max abs diff of a correct answer from its reference: {c.max_diff:.3g}."
        if c.correct
        else "No correct answer.",
        "",
        f"| node | role | RSS after warm-up MiB | RSS at end MiB | max MiB | growth % "
        f"| < {RSS_GROWTH_TARGET:g}% |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for n in run.nodes:
        start, end = run.rss_start[n], run.rss_end[n]
        growth = 100.0 * (end - start) / start
        lines.append(
            f"| {n} | {run.roles[n]} | {start / MIB:.1f} | {end / MIB:.1f} "
            f"| {run.rss_max[n] / MIB:.1f} | {growth:+.2f} "
            f"| {'yes' if growth < RSS_GROWTH_TARGET else 'NO'} |"
        )
    if c.failure_examples:
        lines += ["", "Failures (one example per status):", ""]
        lines += [f"- {code}: {text[:300]}" for code, text in c.failure_examples.items()]
    if c.wrong_examples:
        lines += ["", "Wrong answers (the first few):", ""]
        lines += [f"- {text[:300]}" for text in c.wrong_examples]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--scenarios", default="all", help="all, none, or keys: " + ",".join(SCENARIOS)
    )
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0.0,
        help="run the load this long instead of --load-seconds (manual soak)",
    )
    parser.add_argument(
        "--model",
        default="MobileNetV3Large",
        help="multi_io (small test model), EfficientNetLite0 or a keras.applications name",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="none (calibrated random, the default), imagenet (EfficientNetLite0: the "
        "installed trained weights), or a weights file",
    )
    parser.add_argument(
        "--mutate",
        default="",
        metavar="KIND@PART",
        help="TEST ONLY: the node running PART answers wrong (edgenode/_mutate.py)",
    )
    parser.add_argument("--parts", type=int, default=8, help="parts of an application model")
    parser.add_argument("--nodes", type=int, default=5, help="nodes of the load run and scenarios")
    parser.add_argument(
        "--gflops", type=float, default=20.0, help="pinned speed of every node (application models)"
    )
    parser.add_argument("--clients", type=int, default=16, help="clients of the load run")
    parser.add_argument("--scenario-clients", type=int, default=8)
    parser.add_argument("--warmup-seconds", type=float, default=10.0)
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"distinct inputs in the pool (default and minimum {POOL_PER_CLIENT} per client "
        "of the larger load)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "resilience.md")
    args = parser.parse_args()
    least = POOL_PER_CLIENT * max(args.clients, args.scenario_clients)
    args.samples = least if args.samples is None else args.samples
    if args.samples < least:
        parser.error(f"--samples: at least {least} for these clients")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keys = (
        list(SCENARIOS)
        if args.scenarios == "all"
        else []
        if args.scenarios == "none"
        else [k.strip() for k in args.scenarios.split(",") if k.strip()]
    )
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    seconds = args.soak_minutes * 60 if args.soak_minutes else args.load_seconds
    command = shlex.join([".venv/bin/python", "benchmarks/resilience.py", *sys.argv[1:]])

    began = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="edgenode-resilience-"))
    layout, pool, what = prepare(args, work)
    print(f"{what}; work directory {work}", flush=True)
    results: list[ScenarioResult] = []
    errors: dict[str, str] = {}
    for key in keys:
        print(f"scenario {key} ...", flush=True)
        try:
            result = run_named(key, layout, pool, work / key, clients=args.scenario_clients)
        except AssertionError as exc:  # no start-up agreement, a node that did not start
            traceback.print_exc()
            errors[key] = str(exc).splitlines()[0][:300]
            continue
        results.append(result)
        print(format_result(result), flush=True)

    run: LoadRun | None = None
    if seconds > 0:
        print(f"load run: {args.clients} clients, {seconds:.0f} s ...", flush=True)
        run = load_run(
            layout,
            pool,
            work / "load",
            nodes=args.nodes,
            clients=args.clients,
            seconds=seconds,
            warmup_s=args.warmup_seconds,
            interval_s=10.0,
        )

    speeds = ", ".join(f"{n} {s:g}" for n, s in layout.speeds.items())
    lines = [
        "# Resilience: requests under faults, and a load run",
        "",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- command: `{command}` (started {started}, {time.monotonic() - began:.0f} s); "
        "load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(1 minute; this run's own nodes count, and so does anything else running)",
        f"- model: {what}; nodes on 127.0.0.1 (mDNS on loopback), pinned speed_gflops "
        f"{speeds}; extra node {layout.extra[0]} {layout.extra[1]:g}; "
        f"request_deadline_s = {layout.deadline_s:g}",
        *(
            [
                f"- scenarios: each on its own cluster, {args.scenario_clients} clients one "
                "request at a time, round-robin over the origins (every node but the victim; "
                "with the victim for the origin kill); load until answers come, 1 s more, "
                "the fault, until the cluster re-agrees, 3 s more"
            ]
            if results or errors
            else []
        ),
        "- clients: the product's (`ClusterClient`): a request whose origin goes away is "
        "re-sent to another node of the cluster before its deadline",
        "- inputs: round-robin over the pool, skipping inputs in flight (no two requests in "
        "flight share one); each answer checked against its own input's reference",
        f"- outcomes: correct = within {pool.references.tolerance:g} (max abs) of its own "
        "input's reference, from its origin or another node; failed with error = ended with "
        "a gRPC status (the node's, or the connection's when no node was left to try); lost "
        f"= no answer and no status within the client's {2 * layout.deadline_s + 5:g} s "
        'deadline; wrong = an answer that differs ("K equal another request\'s answer": '
        "within tolerance of another pool input's reference, a crossed answer). "
        "Target: lost 0, wrong 0",
        *(
            [f"- **TEST ONLY mutation**: `EDGENODE_TEST_MUTATE={args.mutate}`"]
            if args.mutate
            else []
        ),
        "",
    ]
    if results or errors:
        lines += scenario_rows(results, errors)
        details = [
            f"- {r.scenario}: plan `{r.plan_before}` -> `{r.plan_after}`"
            + (f"; correct answers within {r.counts.max_diff:.3g} of their references"
               if r.counts else "")
            + (f"; to the victim: {r.victim_counts.sent} sent, "
               f"{r.victim_counts.failed_over} answered by another node, "
               f"failed {r.victim_counts.failed_text()}" if r.victim_counts else "")
            + "".join(f"; {code}: {text[:160]}" for code, text in
                      (r.counts.failure_examples.items() if r.counts else ()))
            + (f"; **stuck**: {r.stuck}; signals: {'; '.join(r.events)}" if r.stuck else "")
            + "".join(f"; wrong: {text[:160]}" for text in
                      (r.counts.wrong_examples[:3] if r.counts else ()))
            for r in results
            if not r.skipped
        ]  # fmt: skip
        lines += ["", *details]
    if run is not None:
        title = f"soak ({seconds / 60:g} minutes)" if args.soak_minutes else "Load run"
        lines += ["", f"## {title}", "", *load_lines(run)]
    findings = [(r.scenario, f) for r in results for f in r.log_findings]
    if run is not None:
        findings += [("load", f) for f in run.log_findings]
    lines += ["", "## Node logs: tracebacks and errors", ""]
    lines += [f"- {where}: `{text.splitlines()[-1][:300]}`" for where, text in findings] or [
        "- none"
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
