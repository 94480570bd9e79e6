"""The edge lab: wire formats, link profiles and the planner, on nodes on separate hosts.

    .venv/bin/python benchmarks/edgelab.py [--smoke] [--profiles wifi,ethernet]
        [--formats float32,int8] [--nodes 2,4] [--planner-profiles poor-wifi] [--budget-s 3000]

Needs root (network namespaces; exits 2 with one line where they cannot be made). Builds a lab
(benchmarks/harness/lab.py): hosts in network namespaces on a private bridge, never connected
to this machine's network, each link shaped with tbf to a profile. Then:

1. for each profile, one timed TCP transfer between two hosts: the measured rate against the
   profile's;
2. the table: the trained EfficientNet-Lite0 cut into 8 LiteRT parts, one split per wire
   format (same cuts); for each profile x format x node count, one node per host
   (`edgenode run`, mDNS on the lab's interfaces, node speeds pinned low so that every node
   gets a stage: a multi-stage cut bound by the link). A client on a host of its own waits
   for the agreed plan, sends every sample photo once (top-1 against the whole model run
   here), then times requests one at a time (latency) and with 2 per node in flight for a
   while (throughput). Right before each cluster, the whole model (a 1-part LiteRT split, one
   thread) is timed in this process: the table's ratios are to that local run;
3. the planner with real node speeds (each node measures its own): for each of
   ``--planner-profiles``, nodes that measure their link, and on poor-wifi also nodes told
   `link_mbps = 1000` (they plan as if on gigabit): both plans, measured and predicted.

The client's input reaches the first stage over gigabit (the first node's download is
unshaped once the plan is agreed; every upload and every other download keeps the profile):
with it shaped, every format would be bound by the same 602 kB float32 input and no cut
could be link-bound. Results go to benchmarks/results/edgelab.md (rewritten after every
cluster, so a stopped run keeps what it measured) and edgelab.png. ``--smoke``: wifi, float32
and int8, 2 nodes, short windows (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _edgelab.client import AGREE_DEADLINE_S, client_main, photo_inputs
from harness import RESULTS, ROOT  # puts the repository root on sys.path
from harness.lab import PROFILES, Host, Lab, LabError, measure_rate, unavailable
from harness.labtable import CORES, write_results
from harness.report import say

MODEL = "EfficientNetLite0"
PARTS = 8
FORMATS = ("float32", "float16", "int8")
COUNTS = (2, 4)
# wifi first: the int8 target; then the planner's A/B; then the rest
PROFILE_ORDER = ("wifi", "poor-wifi", "ethernet", "fast-wifi")
# Pinned so slow that compute outweighs every hop: the plan gives every node a stage.
PINNED_GFLOPS = 0.000001
TOLD_GIGABIT_MBPS = 1000.0
REQUEST_TIMEOUT_S = 60.0
WORKER_TIMEOUT_S = 900.0
LOCAL_RUNS = 30
STABLE_S = 3.0  # the agreed plan unchanged this long before measuring


def _config(path: Path, cluster: str, speed_gflops: float, link_mbps: float) -> Path:
    path.write_text(
        f"[node]\nspeed_gflops = {speed_gflops}\nlink_mbps = {link_mbps}\n"
        f'[cluster]\nname = "{cluster}"\n'
        '[model]\nbackend = "litert"\nthreads = 1\n'
        f"[limits]\nrequest_deadline_s = {REQUEST_TIMEOUT_S}\n"
        "[security]\ninsecure = true\n"
    )
    return path


# -- models and the local baseline --------------------------------------------------------------


def splits(work: Path, formats: list[str]) -> tuple[Path, dict[str, Path]]:
    """The whole model (1 LiteRT part) and one 8-part LiteRT split per wire format (the same
    cuts: the cut is chosen on FLOPs, not on the format), made once per work directory."""
    from edgenode.model.loading import load_model
    from edgenode.model.split import split_model

    model = None

    def get(parts: int, wire: str) -> Path:
        nonlocal model
        out = work / f"{MODEL.lower()}-{parts}-litert-{wire}"
        if not (out / "manifest.json").is_file():
            say(f"splitting {MODEL}: {parts} LiteRT parts, wire format {wire}")
            model = model or load_model(MODEL, weights="imagenet")
            split_model(model, out, parts=parts, fmt="litert", wire_format=wire)
        return out

    return get(1, "float32"), {f: get(PARTS, f) for f in formats}


class Local:
    """The whole model in this process: LiteRT, one thread, as a node runs a part."""

    def __init__(self, directory: Path, photos: list[np.ndarray]) -> None:
        from harness.models import manifest_of

        from edgenode.backends import load_runner

        manifest = manifest_of(directory)
        [part] = manifest.parts
        self.runner = load_runner(part, directory, threads=1)
        [self.input_name] = [t.name for t in part.inputs]
        self.photos = photos
        self.logits = [self._one(x) for x in photos]

    def _one(self, x: np.ndarray) -> np.ndarray:
        [value] = self.runner({self.input_name: x}).values()
        return np.asarray(value).reshape(-1)

    def time(self, runs: int = LOCAL_RUNS) -> dict[str, float]:
        """Median latency and throughput (runs / their total time) of one-at-a-time runs."""
        for _ in range(3):
            self._one(self.photos[0])
        times = []
        for k in range(runs):
            start = time.perf_counter()
            self._one(self.photos[k % len(self.photos)])
            times.append(time.perf_counter() - start)
        return {"latency_s": statistics.median(times), "throughput_rps": runs / sum(times)}


def calibrated_gflops(directory: Path, local: Local) -> float:
    """The model's FLOPs over its median local latency: the speed a node really has (one
    thread, this backend), to two significant digits as the planner rounds speeds."""
    from harness.models import manifest_of
    from harness.report import two_digits

    flops = sum(p.flops for p in manifest_of(directory).parts)
    return two_digits(flops / local.time()["latency_s"] / 1e9)


def predicted_serving(model_dir: Path, result: dict[str, Any]) -> dict[str, float]:
    """The planner's model of what the agreed plan serves to requests entering at the
    client's origin (edgenode.planning.serving: the origin's link feeds other replicas).
    A table run's plan was made with speeds pinned low (to force a stage per node); it is
    priced with the speed the nodes really have: the model's FLOPs over its local latency."""
    from harness.models import manifest_of
    from harness.report import two_digits

    from edgenode.planning import Assignment, ClusterPlan, NodeSpec
    from edgenode.planning.serving import serving
    from edgenode.runtime.negotiation import link_of

    manifest = manifest_of(model_dir)
    plan = ClusterPlan(
        manifest_digest="", members=tuple(result["members"]), idle=(),
        assignments=tuple(Assignment(node_id=n, start=a, stop=b, replica=r)
                          for n, a, b, r in result["assignments"]),
        bottleneck_s=result["predicted_bottleneck_s"], latency_s=result["predicted_latency_s"],
    )  # fmt: skip
    speeds = dict(result["speeds_gflops"])
    if result.get("kind") == "table":
        real = sum(p.flops for p in manifest.parts) / result["local"]["latency_s"] / 1e9
        speeds = dict.fromkeys(speeds, two_digits(real))
    members = [
        NodeSpec(node_id=n, speed=speeds[n] * 1e9, memory_bytes=1 << 40,
                 link_bytes_per_s=result["links_mbps"][n] * 1e6 / 8)
        for n in result["members"]
    ]  # fmt: skip
    got = serving(plan, manifest.cost_graph(), members, link_of(manifest), origin=result["origin"])
    return {"latency_s": got.latency_s, "throughput_rps": got.throughput_rps,
            "forward_rps": got.forward_rps, "cpu_s": got.cpu_s}  # fmt: skip


def hop_bytes(model_dir: Path, stages: list[list[Any]]) -> list[int]:
    """Per request: the client's input, each stage-to-stage hop (boundary tensors in the
    manifest's wire format), the answer."""
    from harness.models import manifest_of

    from edgenode.model.manifest import wire_nbytes

    m = manifest_of(model_dir)
    producer = {o.name: p.index for p in m.parts for o in p.outputs}

    def exact(specs: Any) -> int:
        return sum(wire_nbytes(t, "float32") for t in specs)

    out = [exact(m.model.inputs)]
    for _, start, stop in stages[1:]:
        crossing = {
            t.name: t
            for p in m.parts[start:stop]
            for t in p.inputs
            if 0 <= producer.get(t.name, -1) < start
        }
        out.append(sum(wire_nbytes(t, m.wire_format) for t in crossing.values()))
    return [*out, exact([o for p in m.parts for o in p.outputs if o.final])]


# -- the lab ------------------------------------------------------------------------------------


def rates(lab: Lab, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, profile in PROFILES.items():
        a, b = lab.add_host(f"rate-a-{name}", profile), lab.add_host(f"rate-b-{name}", profile)
        measured = measure_rate(a, b, seconds)
        say(f"{name}: {measured / 1e6:.1f} Mbit/s (profile {profile.rate_mbit:g})")
        rows.append({"profile": name, "nominal": profile.rate_bits_s, "measured": measured})
        a.kill()
        b.kill()
    return rows


def unshape_download(host: Host) -> None:
    """Gigabit into ``host``, its upload unchanged."""
    host.shape(host.profile, down="ethernet")


def cluster_run(lab: Lab, client: Host, run: dict[str, Any], model_dir: Path,
                local: Local, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """``run['nodes']`` nodes on hosts of ``run['profile']``, timed from ``client``."""
    from tests.lab import LabNode

    profile, count, tag = run["profile"], run["nodes"], run["tag"]
    run["local"] = local.time()  # before the nodes start: the same machine, no cluster load
    work = Path(tempfile.mkdtemp(prefix=f"edgelab-{tag}-", dir=args.work))
    config = _config(work / "node.toml", f"edgelab-{uuid.uuid4().hex[:8]}",
                     run["speed_gflops"], run["link_mbps"])  # fmt: skip
    hosts = [lab.add_host(f"{tag}-{i}", profile) for i in range(count)]
    nodes = [
        LabNode(
            h,
            f"n{i}",
            work,
            "--config",
            str(config),
            "--model",
            str(model_dir),
            cpu=i % CORES if run.get("pinned") else None,
        )
        for i, h in enumerate(hosts)
    ]
    started = time.monotonic()
    try:
        for node in nodes:
            node.wait_serving(AGREE_DEADLINE_S)
        spec = {
            "nodes": {n.name: n.address for n in nodes},
            "pids": {n.name: n.process.pid for n in nodes},
            "input_names": [local.input_name],
            "photos": args.photo_paths,
            "requests": args.requests,
            "window_s": args.window_s,
            "in_flight": 2 * count,
            "min_completions": 4 * count,
            "wait_link": run["link_mbps"] == 0 and PROFILES[profile].rate_mbit < 1000,
            "stable_s": STABLE_S,
        }
        spec_path = work / "client.json"
        spec_path.write_text(json.dumps(spec))
        proc = client.popen(
            [sys.executable, str(Path(__file__).resolve()), "--client", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(work / "client.log").open("w"),
            text=True,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        assert proc.stdin is not None and proc.stdout is not None
        line = proc.stdout.readline()
        if line:
            origin = json.loads(line)["origin"]
            run["agreed_s"] = time.monotonic() - started
            unshape_download(hosts[[n.name for n in nodes].index(origin)])
            proc.stdin.write("go\n")
            proc.stdin.flush()
        try:
            out, _ = proc.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        if proc.returncode != 0 or not out.strip():
            tail = (work / "client.log").read_text(errors="replace")[-3000:]
            raise LabError(f"client failed (node logs in {work}):\n{tail}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    finally:
        for node in nodes:
            node.stop()
        for h in hosts:
            h.kill()
        # a peer that stops answering under load is dropped from the plan, then rejoins
        run["marked_dead"] = sum(n.log().count("marked dead") for n in nodes)
        run["plans_agreed"] = sum(n.log().count(" agreed: ") for n in nodes)
    run.update(result)
    run["hop_bytes"] = hop_bytes(model_dir, result["stages"])
    run["serving"] = predicted_serving(model_dir, run)
    got = np.asarray(result["logits"])
    ref = np.asarray(local.logits)
    run["agree"] = int(np.sum(got.argmax(-1) == ref.argmax(-1)))
    run["photos"] = len(ref)
    run["max_rel_err"] = float((np.abs(got - ref).max(-1) / np.abs(ref).max(-1)).max())
    del run["logits"]
    say(
        f"{tag} ({result['plan']}): median "
        f"{statistics.median(result['latencies_s']) * 1e3:.1f} ms "
        f"(local {run['local']['latency_s'] * 1e3:.1f}), "
        f"{result['throughput_rps']:.2f} requests/s, top-1 {run['agree']}/{run['photos']}"
    )
    return run


def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cluster to run, in order: wifi first (the int8 target), the planner's A/B on
    poor-wifi right after it, then the rest."""
    runs = []

    def main_runs(profile: str) -> None:
        for fmt in args.formats:
            for count in args.nodes:
                runs.append({"kind": "table", "profile": profile, "format": fmt, "nodes": count,
                             "speed_gflops": PINNED_GFLOPS, "link_mbps": 0.0})  # fmt: skip

    def planner_runs(profile: str) -> None:
        fmt = args.formats[0]
        for link in (0.0, TOLD_GIGABIT_MBPS) if profile == "poor-wifi" else (0.0,):
            runs.append({"kind": "planner", "profile": profile, "format": fmt,
                         "nodes": args.planner_nodes, "speed_gflops": args.real_gflops,
                         "link_mbps": link, "pinned": args.pin})  # fmt: skip

    ordered = [p for p in PROFILE_ORDER if p in args.profiles or p in args.planner_profiles]
    for profile in ordered:
        if profile in args.profiles:
            main_runs(profile)
        if profile in args.planner_profiles:
            planner_runs(profile)
    for k, run in enumerate(runs):
        link = f"-link{run['link_mbps']:g}" if run["link_mbps"] else ""
        pin = "-pinned" if run.get("pinned") else ""
        run["tag"] = (f"{k}-{run['kind']}-{run['profile']}-{run['format']}-{run['nodes']}"
                      f"{link}{pin}")  # fmt: skip
    return runs


def _csv(kind: type, allowed: tuple[Any, ...]) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(v) for v in text.split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return values

    return parse


def report_only(args: argparse.Namespace) -> None:
    """The results rewritten from ``args.work/edgelab.json`` (no lab, nothing run)."""
    if args.work is None:
        sys.exit("edgelab: --report-only needs --work (where the last run wrote edgelab.json)")
    raw = json.loads((args.work / "edgelab.json").read_text())
    vars(args).update(raw["meta"], commands=raw["commands"], earlier=([], []))
    args.command = raw["commands"][-1]
    print(write_results(args, raw["rates"], repriced(args.work, raw["runs"]), raw["failed"],
                        [], 0.0))  # fmt: skip


def repriced(work: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded runs with the planner's predictions made again by the current cost model
    (from what each run recorded: plan, origin, speeds, links; runs recorded before those
    fields keep their predictions)."""
    for r in runs:
        model_dir = work / f"{MODEL.lower()}-8-litert-{r['format']}"
        recorded = {"assignments", "members", "origin", "speeds_gflops", "links_mbps"} <= set(r)
        if recorded and (model_dir / "manifest.json").is_file():
            r["serving"] = predicted_serving(model_dir, r)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="wifi, float32 and int8, 2 nodes, short windows")  # fmt: skip
    parser.add_argument("--profiles", type=_csv(str, PROFILE_ORDER), default=None)
    parser.add_argument("--formats", type=_csv(str, FORMATS), default=None)
    parser.add_argument("--nodes", type=_csv(int, COUNTS), default=None)
    parser.add_argument("--planner-profiles", type=_csv(str, PROFILE_ORDER), default=None,
                        help="real node speeds, link measured (poor-wifi: also told "
                        "gigabit); default: every profile of --profiles")  # fmt: skip
    parser.add_argument("--planner-nodes", type=int, default=4)
    parser.add_argument("--pin", action="store_true",
                        help="planner runs: node i on core i mod the machine's cores (with "
                        "no more nodes than cores, each node a device of its own)")  # fmt: skip
    parser.add_argument("--planner-speed", choices=("calibrated", "selfbench"),
                        default="calibrated", help="the planner runs' node speeds: the model's "
                        "FLOPs / its local latency here (default), or each node's own "
                        "self-benchmark (speed_gflops = 0)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=None,
                        help="most single requests timed per cluster (default 20)")  # fmt: skip
    parser.add_argument("--window-s", type=float, default=None,
                        help="seconds of latency runs and of throughput (default 10)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no cluster after this many seconds")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the results from --work's edgelab.json")  # fmt: skip
    parser.add_argument("--merge", action="store_true",
                        help="keep the clusters of the last run in --work, replacing those "
                        "run again (to fill in what failed or was not run)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: tmp)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the client, on its lab host
    args = parser.parse_args()
    if args.client:
        client_main(args.client)
        return
    if args.report_only:
        report_only(args)
        return
    if reason := unavailable():
        print(reason, file=sys.stderr)
        sys.exit(2)
    if args.profiles is None:  # --profiles "": the planner's runs only
        args.profiles = ["wifi"] if args.smoke else list(PROFILE_ORDER)
    args.formats = args.formats or (["float32", "int8"] if args.smoke else list(FORMATS))
    args.nodes = args.nodes or ([2] if args.smoke else list(COUNTS))
    if args.planner_profiles is None:
        args.planner_profiles = [] if args.smoke else list(args.profiles)
    args.requests = args.requests or (6 if args.smoke else 20)
    args.window_s = args.window_s or (4.0 if args.smoke else 10.0)
    args.rate_s = 0.5 if args.smoke else 2.0
    args.work = args.work or Path(tempfile.mkdtemp(prefix="edgenode-edgelab-"))
    args.work.mkdir(parents=True, exist_ok=True)
    args.pinned_gflops = PINNED_GFLOPS
    args.command = ".venv/bin/python benchmarks/edgelab.py " + " ".join(sys.argv[1:])
    args.commands, args.earlier = [args.command], ([], [])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.monotonic()

    from wire_formats import photos

    args.photo_paths = [str(p) for p in photos()]
    whole, model_dirs = splits(args.work, sorted(set(args.formats)))
    local = Local(whole, photo_inputs(args.photo_paths))
    args.local_gflops = calibrated_gflops(whole, local)
    args.real_gflops = args.local_gflops if args.planner_speed == "calibrated" else 0.0
    say(f"the whole model here runs at {args.local_gflops:g} GFLOP/s (one thread)")
    runs = plan_runs(args)
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    earlier_path = args.work / "edgelab.json"
    if args.merge and earlier_path.is_file():
        earlier = json.loads(earlier_path.read_text())
        args.earlier = (repriced(args.work, earlier["runs"]), earlier["failed"])
        args.commands = [*earlier.get("commands", []), args.command]
    with Lab() as lab:
        rate_rows = rates(lab, args.rate_s)
        client = lab.add_host("client", "ethernet")
        for k, run in enumerate(runs):
            if args.budget_s and time.monotonic() - started > args.budget_s:
                say(f"budget spent: {len(runs) - k} cluster(s) not run")
                break
            say(f"[{k + 1}/{len(runs)}] {run['tag']}")
            try:
                done.append(cluster_run(lab, client, run, model_dirs[run["format"]], local, args))
            except (LabError, AssertionError, subprocess.TimeoutExpired) as exc:
                run["error"] = str(exc)[-1500:]
                failed.append(run)
                say(f"{run['tag']} failed: {str(exc)[-600:]}")
            write_results(args, rate_rows, done, failed, runs, time.monotonic() - started)
    text = write_results(args, rate_rows, done, failed, runs, time.monotonic() - started)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as e:
        sys.exit(f"edgelab: timed out: {e}")
    except KeyboardInterrupt:  # the lab is gone already: its context closed on the way out
        sys.exit(130)
