"""What a node costs on a small device: start-up time and memory, Keras vs LiteRT backend.

    .venv/bin/python benchmarks/footprint.py [--model MobileNetV3Large] [--parts 8] [--rounds 3]

Cuts the model once into Keras parts and once into LiteRT parts (the same cut), then for
each backend, alternating, starts a one-node cluster serving every part and measures:
the time from spawning `edgenode run` to its gRPC server serving (Python imports and
start-up) and to readiness (sd_notify READY=1: parts loaded and warmed up, plan agreed);
the process's resident memory once ready and after 50 requests (VmRSS, and the peak
VmHWM); whether TensorFlow was imported; and the latency of each part (the node's own
stage timings) and of a whole request. Writes benchmarks/results/footprint.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness import RESULTS
from harness.cluster import Client

REQUESTS = 50


def _status_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def _loaded_tensorflow(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtensorflow" in maps or "_pywrap_tensorflow" in maps


def _one_run(split: Path, backend: str, work: Path, inputs: Any) -> dict[str, Any]:
    from edgenode.transport import run

    tag = f"{backend}-{uuid.uuid4().hex[:6]}"
    config = work / f"{tag}.toml"
    config.write_text(
        f'[node]\nname = "{tag}"\nlisten = "127.0.0.1:0"\nspeed_gflops = 10.0\n'
        f'[cluster]\nname = "fp-{tag}"\ninterfaces = ["127.0.0.1"]\n'
        f'[model]\nsource = "{split}"\nbackend = "{backend}"\n'
        "[security]\ninsecure = true\n"
    )
    sock_path = work / f"{tag}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    log_path = work / f"{tag}.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgenode.cli", "run", "--config", str(config),
             "--state-dir", str(work / tag)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        serving_s = ready_s = None
        address = ""
        deadline = started + 300
        while ready_s is None and time.perf_counter() < deadline:
            if serving_s is None:
                match = re.search(r"serving on (\S+:\d+)", log_path.read_text())
                if match:
                    serving_s = time.perf_counter() - started
                    address = match.group(1)
            try:
                if b"READY=1" in sock.recv(4096).split(b"\n"):
                    ready_s = time.perf_counter() - started
            except TimeoutError:
                if process.poll() is not None:
                    raise RuntimeError(f"node exited: {log_path.read_text()[-2000:]}") from None
        if ready_s is None or serving_s is None:
            raise RuntimeError(f"{backend} node not ready within 300 s")
        rss_ready = _status_kib(process.pid, "VmRSS")

        async def requests() -> tuple[list[float], dict[str, Any]]:
            client = Client()
            try:
                times = await client.latencies(address, inputs, REQUESTS)
                status = await client.status(address)
                if status is None:
                    raise RuntimeError(f"{backend} node did not answer a status call")
                return times, status
            finally:
                await client.aclose()

        times, status = run(requests())
        return {
            "backend": backend,
            "serving_s": serving_s,
            "ready_s": ready_s,
            "rss_ready_mib": rss_ready / 1024,
            "rss_after_mib": _status_kib(process.pid, "VmRSS") / 1024,
            "peak_mib": _status_kib(process.pid, "VmHWM") / 1024,
            "tensorflow": _loaded_tensorflow(process.pid),
            "request_ms": statistics.median(times) * 1e3,
            "parts_ms": {s.part: s.mean_s * 1e3 for s in status.stages},
        }
    finally:
        process.terminate()
        process.wait(60)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MobileNetV3Large")
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="where footprint.md goes (benchmarks/results)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from edgenode.model.loading import load_model
    from edgenode.model.split import split_model

    work = Path(tempfile.mkdtemp(prefix="edgenode-footprint-"))
    model = load_model(args.model)
    splits = {
        "keras": split_model(model, work / "keras", parts=args.parts).manifest,
        "litert": split_model(model, work / "litert", parts=args.parts, fmt="litert").manifest,
    }
    assert splits["keras"].identity == splits["litert"].identity
    # Pixel-like values, batch 1, for every model input (MobileNetV3Large: one 224x224x3 image).
    rng = np.random.default_rng(0)
    inputs = {
        t.name: rng.uniform(0, 255, tuple(d or 1 for d in t.shape)).astype(t.dtype)
        for t in splits["keras"].model.inputs
    }
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for backend in ("keras", "litert") if r % 2 == 0 else ("litert", "keras"):
            print(f"round {r + 1}/{args.rounds}: {backend}", flush=True)
            runs.append(_one_run(work / backend, backend, work, inputs))

    def med(backend: str, key: str) -> float:
        return float(statistics.median(x[key] for x in runs if x["backend"] == backend))

    def spread(backend: str, key: str) -> str:
        values = [x[key] for x in runs if x["backend"] == backend]
        return f"{min(values):.2f}-{max(values):.2f}"

    rows = [
        ("start to serving gRPC (s)", "serving_s"),
        ("start to ready: parts loaded, plan agreed (s)", "ready_s"),
        ("RSS when ready (MiB)", "rss_ready_mib"),
        (f"RSS after {REQUESTS} requests (MiB)", "rss_after_mib"),
        ("peak RSS (MiB)", "peak_mib"),
        ("whole request, median (ms)", "request_ms"),
    ]
    lines = [
        f"# Node footprint: Keras vs LiteRT ({args.model}, {args.parts} parts on one node)",
        "",
        f"Command: `.venv/bin/python benchmarks/footprint.py --model {args.model} "
        f"--parts {args.parts} --rounds {args.rounds}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; median of {args.rounds} runs per backend (min-max).",
        "",
        "| measurement | keras | litert | litert / keras |",
        "| --- | --- | --- | --- |",
    ]
    for label, key in rows:
        k, lt = med("keras", key), med("litert", key)
        lines.append(
            f"| {label} | {k:.2f} ({spread('keras', key)}) | {lt:.2f} ({spread('litert', key)}) "
            f"| {lt / k:.2f} |"
        )
    tf_loaded = {b: any(x["tensorflow"] for x in runs if x["backend"] == b) for b in splits}
    lines.append(
        f"| TensorFlow in the process | {'yes' if tf_loaded['keras'] else 'no'} | "
        f"{'yes' if tf_loaded['litert'] else 'no'} | |"
    )
    lines += ["", "Per part (the node's own stage timings, mean over the requests, ms):", ""]
    lines += ["| part | MFLOPs | keras | litert | litert / keras |", "| --- " * 5 + "|"]
    for spec in splits["keras"].parts:
        k = statistics.median(x["parts_ms"][spec.index] for x in runs if x["backend"] == "keras")
        lt = statistics.median(x["parts_ms"][spec.index] for x in runs if x["backend"] == "litert")
        mflops = spec.flops / 1e6
        lines.append(f"| {spec.index} | {mflops:.0f} | {k:.2f} | {lt:.2f} | {lt / k:.2f} |")
    text = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "footprint.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
