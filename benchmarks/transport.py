"""Tensor transport benchmark: gRPC (asyncio / uvloop) against a raw-socket floor.

Two processes on 127.0.0.1 (a driver and a peer, started as subprocesses of this script):

* one-way throughput: the driver streams N tensors of one size, the peer consumes them and
  answers a final ack; bytes / time from the first send to the ack;
* round trip, back to back: the driver sends a tensor, the peer sends it back on its own stream
  to the driver (as a final stage returns outputs to the origin); median over many;
* one hop, idle between requests: ~400 KB, one request at a time, 10 ms idle between requests;
  a hop is half the round trip.

The raw-socket floor moves the same bytes over a plain asyncio TCP connection (16-byte header,
then the data received straight into a preallocated buffer, ``np.frombuffer``), in the same run.

Usage: ``.venv/bin/python benchmarks/transport.py [--quick] [--experiments]``; writes
benchmarks/results/transport.md and transport.png. ``--experiments`` also runs the tuning
experiments (poll strategies, channel options, chunk sizes, malloc) for the results table;
``--smoke`` (one round, few repetitions, about 30 s) checks the script, ``--out-dir DIR`` writes
elsewhere, ``--report-only`` rewrites the report from transport.json.

This file is the dispatcher (and, with ``--role``, each child process); the questions live in
``benchmarks/_transport/``: throughput.py (one way and round trips), hops.py (the idle hop),
codec.py (the codec in process), over links.py (both ends of each setup), children.py,
pair.py (start one setup's two children), setups.py and report.py; rounds are interleaved by
``benchmarks/harness/rounds.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _transport.children import child_main
from _transport.codec import codec_costs
from _transport.pair import run_setup
from _transport.report import write_plot, write_report
from _transport.setups import MAIN_SETUPS, MIB, Plan, Setup, experiment_setups
from harness import RESULTS
from harness.rounds import interleaved, median_result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one round, few repetitions: checks the script in under a minute (figures noisy)",
    )
    parser.add_argument("--experiments", action="store_true", help="also run tuning variants")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from transport.json"
    )
    # Child-process arguments.
    parser.add_argument("--role", choices=["driver", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["grpc", "raw", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-bytes", type=int, default=MIB, help=argparse.SUPPRESS)
    parser.add_argument("--malloc", default="tuned", help=argparse.SUPPRESS)
    parser.add_argument("--option", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--hop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        child_main(args)
        return 0

    command = " ".join(
        [".venv/bin/python", "benchmarks/transport.py", *map(shlex.quote, sys.argv[1:])]
    )
    raw_path = args.out_dir / "transport.json"
    if args.report_only:
        saved = json.loads(raw_path.read_text())
        report = write_report(
            saved["results"],
            saved["experiments"],
            saved["codec"],
            saved["command"],
            saved["quick"],
        )
        (args.out_dir / "transport.md").write_text(report)
        write_plot(saved["results"], args.out_dir / "transport.png")
        sys.stdout.write(report)
        return 0
    plan = Plan.make(args.quick, smoke=args.smoke)
    rounds = 1 if args.smoke else 2 if args.quick else 3
    # Each number reported is the median over the rounds.
    runs = interleaved(
        MAIN_SETUPS,
        rounds,
        lambda s: run_setup(s, plan, sizes=None, hop=True),
        label=lambda s: s.label,
    )
    results = {label: median_result(r) for label, r in runs.items()}
    experiments: dict[str, dict[str, Any]] = {}
    if args.experiments:
        variants = [Setup("baseline", "grpc", uvloop=True), *experiment_setups()]
        exp_plan = Plan(
            [64 * MIB], stream_bytes=plan.stream_bytes, rtt_count=4, hop_count=plan.hop_count
        )
        exp_runs = interleaved(
            variants,
            rounds,
            lambda s: run_setup(s, exp_plan, sizes=[64 * MIB], hop=True),
            label=lambda s: s.label,
            what="experiment round",
        )
        experiments = {label: median_result(r) for label, r in exp_runs.items()}
    codec = codec_costs()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(
        json.dumps(
            {
                "results": results,
                "experiments": experiments,
                "codec": codec,
                "command": command,
                "quick": args.quick,
                "runs": runs,
            },
            indent=1,
        )
    )
    report = write_report(results, experiments, codec, command, args.quick)
    (args.out_dir / "transport.md").write_text(report)
    write_plot(results, args.out_dir / "transport.png")
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
