"""What the inference questions share: settings, splits, runners, earlier results."""

from __future__ import annotations

import argparse
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cluster import Client
from harness.models import PartRunners, Splits
from harness.nodes import write_config
from harness.report import say, timed, two_digits


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How much to measure."""

    runs: int  # single requests per latency configuration (section 1 and 6)
    rounds: int  # local and cluster runs interleaved in this many rounds
    warmup: int  # requests before timing
    hop_runs: int  # single requests per cluster size (section 2)
    load_seconds: float  # measured window per throughput point (section 3)
    load_rounds: int
    concurrency: int  # requests in flight (section 3)
    part_runs: int  # in-process runs per part (sections 4 and 5)

    @staticmethod
    def make(args: argparse.Namespace) -> Settings:
        quick = args.quick
        return Settings(
            runs=args.runs or (20 if quick else 100),
            rounds=2 if quick else 5,
            warmup=5 if quick else 15,
            hop_runs=args.hop_runs or (16 if quick else 100),
            load_seconds=args.load_seconds or (3.0 if quick else 15.0),
            load_rounds=2 if quick else 5,
            concurrency=args.concurrency,
            part_runs=10 if quick else 50,
        )


@dataclass
class Context:
    """What sections share: settings, splits, local runners, results of earlier sections."""

    settings: Settings
    args: argparse.Namespace
    work: Path
    run_id: str
    splits: Splits
    client: Client
    runners: dict[Path, PartRunners] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # one line per target: met or not
    counter: int = 0

    def runner(self, directory: Path) -> PartRunners:
        if directory not in self.runners:
            self.runners[directory] = PartRunners(directory)
        return self.runners[directory]

    def names(self, label: str, count: int) -> list[str]:
        """Node names unique on this machine's mDNS (other clusters may be running)."""
        self.counter += 1
        names = [f"{self.run_id}-{label}{self.counter}-{i}" for i in range(count)]
        assert all(re.fullmatch(r"[a-z0-9-]{1,48}", n) for n in names), names
        return names

    def config(self, label: str, speed: float, backend: str = "keras") -> Path:
        self.counter += 1
        cluster = f"{self.run_id}-{label}{self.counter}"
        return write_config(self.work / f"{cluster}.toml", cluster, speed, backend)

    def speed(self, model: str) -> float:
        """GFLOP/s of the whole model run locally with Keras (the planner's unit)."""
        if model not in self.calibrated:
            whole = self.runner(self.splits.get(model, 1))
            times = timed(whole.whole(), max(20, self.settings.part_runs), warmup=5)
            flops = whole.manifest.model.flops
            self.calibrated[model] = two_digits(flops / statistics.median(times) / 1e9)
            self.calibration[model] = {
                "whole_model_median_s": statistics.median(times),
                "flops": flops,
                "speed_gflops": self.calibrated[model],
            }
            say(f"{model}: {self.calibrated[model]} GFLOP/s measured on the whole model")
        return self.calibrated[model]


@dataclass
class Section:
    """One section's markdown lines and raw data."""

    number: int
    title: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
