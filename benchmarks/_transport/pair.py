"""One setup measured: its driver and peer started as children of transport.py; the
driver's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from harness import ROOT

from _transport.setups import CHILD_TIMEOUT_S, Plan, Setup

# -- orchestration -------------------------------------------------------------------------


ENTRY = ROOT / "benchmarks" / "transport.py"  # the children are its --role driver / peer


def run_setup(
    setup: Setup, plan: Plan, *, sizes: Sequence[int] | None, hop: bool
) -> dict[str, Any]:
    """Start the driver and the peer for one setup; the driver's measurements."""
    env = {**os.environ, **setup.env, "PYTHONPATH": str(ROOT)}
    common = [sys.executable, str(ENTRY), *setup.child_args()]
    plan_json = json.dumps(plan.__dict__)
    driver_args = [*common, "--role", "driver", "--plan", plan_json]
    if sizes is not None:
        driver_args += ["--sizes", ",".join(str(s) for s in sizes)]
    if hop:
        driver_args.append("--hop")
    driver = subprocess.Popen(
        driver_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    peer = subprocess.Popen(
        [*common, "--role", "peer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert driver.stdin and driver.stdout and peer.stdin and peer.stdout
    try:
        driver_address = driver.stdout.readline().strip()
        peer_address = peer.stdout.readline().strip()
        peer.stdin.write(driver_address + "\n")
        peer.stdin.flush()
        driver.stdin.write(peer_address + "\n")
        driver.stdin.flush()
        for line in driver.stdout:
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                break
        else:
            raise RuntimeError(f"{setup.label}: driver ended without a result")
        driver.wait(CHILD_TIMEOUT_S)
        peer.wait(CHILD_TIMEOUT_S)
        return result
    finally:
        for child in (driver, peer):
            if child.poll() is None:
                child.kill()
                child.wait()
