"""Clients fail over, with real node processes: the origin is killed under requests.

Each test starts 3 nodes on the multi_io model cut into 4 parts (slow pinned speeds: the
plan spreads the parts over the nodes), sends requests that enter at one node (the origin)
and kills that node with SIGKILL while requests are in flight there. Every answer is checked
against the whole model run locally on *its own* input (ReferenceSet: the references of
the distinct inputs differ by far more than the tolerance).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.nodes import NodeProcess, running_cluster, wait_until

pytestmark = [pytest.mark.tf, pytest.mark.slow]

TOLERANCE = 1e-5
DISTINCT = 24  # distinct inputs (their references differ by > 1e-3 for these seeds)
IN_FLIGHT = 8  # requests held at the origin when it is killed
POLL_S = 0.02


@pytest.fixture(scope="module")
def multi_io(tmp_path_factory: pytest.TempPathFactory):
    from edgenode.model.graph import build_graph
    from edgenode.model.slicing import run_model
    from edgenode.model.split import split_model
    from edgenode.verify import ReferenceSet
    from tests.model import models

    directory = tmp_path_factory.mktemp("split")
    model = models.build("multi_io")
    manifest = split_model(model, directory, cuts=[2, 4, 6]).manifest
    graph = build_graph(model)
    inputs = [models.sample_inputs(model, seed=1000 + s, batch=1) for s in range(DISTINCT)]
    # answers carry the model's own output names
    references = [manifest.model.name_outputs(run_model(graph, b)) for b in inputs]
    return directory, inputs, ReferenceSet(references, tolerance=TOLERANCE)


@pytest.fixture
def nodes(multi_io, tmp_path: Path):
    with running_cluster(multi_io[0], tmp_path) as (started, found):
        yield started, found


def _roles(started: list[NodeProcess], found: dict[str, dict[str, Any]]):
    """(origin, others): a node of a pipeline of several stages, and every other node
    (frozen, so that requests wait at the origin whichever replica it picks)."""
    assignments = next(iter(found.values()))["plan"]["assignments"]
    stages: dict[int, list[str]] = {}
    for a in assignments:
        stages.setdefault(int(a.get("replica", 0)), []).append(a["node_id"])
    chained = [nodes for nodes in stages.values() if len(nodes) > 1]
    assert chained, f"no pipeline of several stages: {assignments}"
    origin = next(n for n in started if n.name == chained[0][0])
    return origin, [n for n in started if n is not origin]


def _kill(node: NodeProcess) -> None:
    node.signal(signal.SIGKILL)
    node.process.wait(30)


def test_the_python_client_fails_over_when_the_origin_is_killed(multi_io, nodes) -> None:
    from edgenode.errors import InferenceFailed, PeerUnavailable
    from edgenode.transport import ControlClient, run

    _, inputs, references = multi_io
    started, found = nodes
    origin, others = _roles(started, found)

    async def go() -> None:
        async with ControlClient(protocol=1) as client:
            # The client is given the origin only: it learns the others from its status.
            cluster = client.cluster(origin.address)
            first = await cluster.request(inputs[0], timeout_s=60, origin=origin.address)
            assert references.check(0, first.result()).ok
            end = time.monotonic() + 30
            while len(cluster.addresses) < 3:
                assert time.monotonic() < end, f"members never learned: {cluster.addresses}"
                await asyncio.sleep(POLL_S)  # polling, with a deadline

            # A request that is wrong (shape) is not sent anywhere else.
            bad = {k: np.concatenate([v, v], axis=-1) for k, v in inputs[1].items()}
            answer = await cluster.request(bad, timeout_s=60, origin=origin.address)
            assert isinstance(answer.error, InferenceFailed), answer
            assert [r.address for r in answer.refusals] == [origin.address]
            assert answer.refusals[0].code.name == "INVALID_ARGUMENT"

            # Requests held at the origin (the other nodes are frozen) when it is killed.
            for node in others:
                node.signal(signal.SIGSTOP)
            try:
                tasks = [
                    asyncio.create_task(
                        cluster.request(inputs[i], timeout_s=60, origin=origin.address)
                    )
                    for i in range(IN_FLIGHT)
                ]
                end = time.monotonic() + 10
                while client.in_flight(origin.address) < IN_FLIGHT:
                    assert time.monotonic() < end, "the requests never reached the origin"
                    await asyncio.sleep(POLL_S)  # polling, with a deadline
                assert not any(t.done() for t in tasks)
                _kill(origin)
            finally:
                for node in others:
                    node.signal(signal.SIGCONT)
            answers = await asyncio.gather(*tasks)
            for i, answer in enumerate(answers):
                assert answer.error is None, answer.error
                verdict = references.check(i, answer.result())
                assert verdict.ok, verdict.detail
                assert answer.address != origin.address
                assert [r.address for r in answer.refusals] == [origin.address]
                assert answer.refusals[0].lost and answer.refusals[0].sent  # mid-request

            # Every node gone: one error, long before the deadline, naming what was tried.
            for node in started:
                if node.process.poll() is None:
                    _kill(node)
            t0 = time.monotonic()
            answer = await cluster.request(inputs[2], timeout_s=60)
            assert time.monotonic() - t0 < 15
            assert isinstance(answer.error, PeerUnavailable) and not answer.timed_out
            message = str(answer.error)
            assert "\n" not in message
            assert message.startswith("no node of the cluster could answer: "), message
            for node in started:
                assert node.address in message, message

    run(go())


class _Stderr:
    """A subprocess's stderr read as it comes (progress lines end with a carriage return)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        assert process.stderr is not None
        self._pipe = process.stderr
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._pipe.read1(4096):
            with self._lock:
                self.text += chunk.decode(errors="replace")

    def done(self) -> int:
        with self._lock:
            counts = re.findall(r"(\d+)/\d+ done", self.text)
        return int(counts[-1]) if counts else 0

    def join(self) -> str:
        """Everything read, once the process closed its end; closes ours."""
        self._thread.join(30)
        self._pipe.close()
        return self.text


def test_edgenode_infer_fails_over_when_the_origin_is_killed(
    multi_io, nodes, tmp_path: Path
) -> None:
    _, inputs, references = multi_io
    started, found = nodes
    origin, _ = _roles(started, found)
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = 600
    for k in range(files):
        np.savez(folder / f"{k:04d}.npz", **inputs[k % DISTINCT])
    out = tmp_path / "outputs.npz"
    report = (tmp_path / "stdout.txt").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgenode.cli", "infer", str(folder), "--peer", origin.address,
         "--insecure", "--concurrency", "4", "--timeout", "60", "--save-outputs", str(out)],
        stdout=report, stderr=subprocess.PIPE,
    )  # fmt: skip
    stderr = _Stderr(process)
    try:
        wait_until(lambda: stderr.done() >= 20 or process.poll() is not None, 120, "answers")
        assert process.poll() is None, "the run ended before the origin was killed"
        _kill(origin)
        process.wait(300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        report.close()
        log = stderr.join()
    assert process.returncode == 0, log[-3000:]
    assert stderr.done() == files, log[-3000:]
    # the fail-over is logged once, not once per request
    went = re.findall(rf"{re.escape(origin.address)} went away", log)
    assert len(went) == 1, log[-3000:]
    assert "Traceback" not in log
    saved = np.load(out)
    for k in range(files):
        prefix = f"{k:04d}.npz/"
        answer = {n[len(prefix) :]: saved[n] for n in saved.files if n.startswith(prefix)}
        verdict = references.check(k % DISTINCT, answer)
        assert verdict.ok, f"{k:04d}.npz: {verdict.detail}"
    assert (tmp_path / "stdout.txt").read_text().count("0000.npz") == 1  # answered once
