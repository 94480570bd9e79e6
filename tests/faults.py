"""Fault harness: real node processes on 127.0.0.1, a load of checked requests, faults.

- ``Cluster``: N named `edgenode run` processes on one split model (pinned speeds, a unique
  cluster name, a request deadline), with ``kill``/``stop``/``freeze``/``thaw``/``restart``/
  ``add``, agreement checks with a diagnostic on timeout, roles read from the agreed plan,
  RSS per node and a scan of the node logs for tracebacks and errors.
- ``Load``: K client coroutines on their own event loop in a background thread, each sending
  one request at a time round-robin over a set of origin addresses. Each client is the
  product's (its own ``ControlClient`` and ``ClusterClient`` over the origins): a request
  whose origin goes away is re-sent to another node, and the status code of every node
  that did not answer it is kept.
- ``Pool``: the distinct inputs requests are drawn from, and a ``ReferenceSet`` of the whole
  model's answers to them, computed locally once. Each answer is checked against its own
  input's reference (``ReferenceSet.check``: the same code the other tests use, which refuses
  references that do not move with their input). Inputs are handed out round-robin and an
  input in flight is skipped, so two requests in flight never share an input; with a pool
  of at least ``POOL_PER_CLIENT`` (4) inputs per client an input comes back only after
  about three other requests per client have started, so a tensor a
  node mixes in from another request, even one held up by a fault for seconds, belongs to
  another input: it makes the answer wrong, and a whole answer of another request is named
  (``Record.matched``). Every request ends as exactly one of:

  * correct: ``ReferenceSet.check`` accepts it (its diff is kept), possibly from another
    node than its origin (``Record.failovers`` counts the nodes that did not answer it first);
  * wrong: an answer that differs (or that cannot be decoded); ``Record.matched`` names the
    pool input whose reference it equals, if any (a crossed answer);
  * failed: ended with a status (the node's error, or the connection's when no node was
    left to try), kept with the last node's code and the client's one-line error;
  * lost: no answer and no status before the client's own deadline (longer than the nodes'
    request deadline, so a node that gives up has time to say so).

- ``run_scenario``: load, wait for answers, fault, wait for re-agreement, load a few more
  seconds, stop; ``SCENARIOS`` names the faults the tests and benchmarks/resilience.py run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from edgenode.verify import ReferenceSet, Verdict
from tests.nodes import START_DEADLINE_S, NodeProcess, statuses, wait_until

__all__ = [
    "FLAP_ROUNDS",
    "POOL_PER_CLIENT",
    "SCENARIOS",
    "Cluster",
    "Counts",
    "Layout",
    "Load",
    "Pool",
    "Record",
    "Roles",
    "Scenario",
    "ScenarioResult",
    "format_result",
    "make_pool",
    "multi_io_layout",
    "run_named",
    "run_scenario",
    "summarize",
]

NODE_DEADLINE_S = 10.0  # [limits] request_deadline_s of the nodes
AGREE_DEADLINE_S = 30.0  # a cluster that has not re-agreed by then is stuck
# (nudge, freeze) rounds: another node is frozen for the nudge first (it then asks its peers
# out of step with the rest), then the victim for about the time its peers take to declare
# it dead (two unanswered asks): some may drop it while others still count it in, and the
# thawed victim finds its own asks timed out. Every round, the views must converge again.
FLAP_ROUNDS = ((0.5, 1.6), (0.5, 2.1), (0.5, 1.8), (0.5, 2.3))
POOL_PER_CLIENT = 4  # distinct inputs per client in a load's pool (see the module docstring)
_PROBLEM = re.compile(
    r"\b(ERROR|CRITICAL)\b|unanswered|Exception in callback|exception was never|"
    r"never awaited|\w+Warning:"
)
_WARNING = re.compile(r"\bWARNING\b")
_EXPECTED = "insecure: no TLS"  # the harness runs its clusters without TLS on purpose

Outcome = Literal["correct", "wrong", "failed", "lost"]


# -- expected answers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Distinct inputs for requests, and the whole model's answers to them computed locally."""

    inputs: tuple[Mapping[str, np.ndarray], ...]
    references: ReferenceSet

    def __len__(self) -> int:
        return len(self.inputs)

    def check(self, index: int, got: Mapping[str, Any]) -> Verdict:
        """Whether ``got`` is the answer for input ``index`` (and whose it is, if not)."""
        return self.references.check(index, {k: np.asarray(v) for k, v in got.items()})


def make_pool(graph: Any, batches: Sequence[Mapping[str, np.ndarray]], *, tolerance: float) -> Pool:
    """A pool of ``batches``, answers from ``edgenode.model.slicing.run_model(graph, ...)``
    keyed as a cluster answers: by the model's own output names. Raises VacuousReference
    when two answers are not ``DEFAULT_MARGIN`` tolerances apart."""
    from edgenode.model.slicing import run_model

    def answer(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: values[t] for t, n in zip(graph.outputs, graph.output_names, strict=True)}

    answers = [answer(run_model(graph, b)) for b in batches]
    return Pool(tuple(dict(b) for b in batches), ReferenceSet(answers, tolerance=tolerance))


# -- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """One assignment of the agreed plan."""

    node: str
    replica: int
    start: int
    stop: int  # exclusive


@dataclass(frozen=True)
class Roles:
    """Who does what in an agreed plan (node ids are the names given to ``Cluster``)."""

    parts: int
    stages: tuple[Assignment, ...]
    idle: tuple[str, ...]
    final_parts: frozenset[int]  # parts producing a model output
    digest: str

    def _pipeline(self, replica: int = 0) -> list[Assignment]:
        return sorted((s for s in self.stages if s.replica == replica), key=lambda s: s.start)

    @property
    def replicas(self) -> int:
        return 1 + max((s.replica for s in self.stages), default=0)

    def first(self) -> str | None:
        """The node running part 0 in the first multi-stage pipeline."""
        pipe = self._pipeline()
        return pipe[0].node if len(pipe) > 1 else None

    def final(self) -> str | None:
        """The node running the last part (it produces a final output) in that pipeline."""
        pipe = self._pipeline()
        return pipe[-1].node if len(pipe) > 1 else None

    def middle(self) -> str | None:
        """A stage neither first nor last; one producing no final output if there is one."""
        inner = self._pipeline()[1:-1]
        plain = [s for s in inner if not set(range(s.start, s.stop)) & self.final_parts]
        chosen = (plain or inner)[:1]
        return chosen[0].node if chosen else None

    def extra(self) -> str | None:
        """An idle node, else the node of a one-node replica, else any node of replica > 0."""
        if self.idle:
            return self.idle[0]
        for replica in range(1, self.replicas):
            pipe = self._pipeline(replica)
            if len(pipe) == 1:
                return pipe[0].node
        later = [s.node for s in self.stages if s.replica > 0]
        return later[0] if later else None

    def describe(self, node: str) -> str:
        """'parts 2-2 of replica 0 (middle)', '... (first, produces finals)', or 'idle'."""
        if node in self.idle:
            return "idle"
        for s in self.stages:
            if s.node == node:
                if len(self._pipeline(s.replica)) == 1:
                    what = ["whole model"]
                elif s.start == 0:
                    what = ["first"]
                elif s.stop == self.parts:
                    what = ["final"]
                else:
                    what = ["middle"]
                if set(range(s.start, s.stop)) & self.final_parts:
                    what.append("produces finals")
                return f"parts {s.start}-{s.stop - 1} of replica {s.replica} ({', '.join(what)})"
        return "not in the plan"

    def summary(self) -> str:
        """'n0:0-0 n1:1-1 | n4:0-3' (pipelines separated by |)."""
        pipes = [
            " ".join(f"{s.node}:{s.start}-{s.stop - 1}" for s in self._pipeline(r))
            for r in range(self.replicas)
        ]
        idle = f" idle {','.join(self.idle)}" if self.idle else ""
        return " | ".join(pipes) + idle


class Cluster:
    """Named `edgenode run` processes on one split model; a context manager.

    ``speeds`` maps each node name to its pinned ``speed_gflops`` (pinned: the plan then
    depends on the layout, not on benchmark noise). Every node start gets its own log file
    (``workdir/run<k>/<name>.log``), so a restarted node's earlier log is kept. ``env``:
    environment variables for every node process (e.g. ``EDGENODE_TEST_MUTATE``).
    """

    def __init__(
        self,
        model_dir: Path,
        workdir: Path,
        speeds: Mapping[str, float],
        *,
        deadline_s: float = NODE_DEADLINE_S,
        max_inflight: int | None = None,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self._env = dict(env or {})
        self.workdir = workdir
        self.deadline_s = deadline_s
        self.cluster_name = name or f"faults-{uuid.uuid4().hex[:12]}"
        self._max_inflight = max_inflight
        self._speeds = dict(speeds)
        self.nodes: dict[str, NodeProcess] = {}  # the current process of each live name
        self.history: list[NodeProcess] = []  # every process started, in order
        self._frozen: set[str] = set()
        self._runs = 0
        self.last_statuses: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []  # "HH:MM:SS.mmm what" of every signal and start
        from edgenode.model.manifest import load_manifest

        manifest = load_manifest(model_dir)
        self.parts = len(manifest.parts)
        self.final_parts = frozenset(
            p.index for p in manifest.parts if any(o.final for o in p.outputs)
        )

    # lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            for name in self._speeds:
                self._spawn(name)
            for node in list(self.nodes.values()):
                node.wait_serving()
            self.wait_agreed(START_DEADLINE_S)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """SIGCONT the frozen, SIGTERM every live process at once, then wait for each."""
        for name in list(self._frozen):
            self.thaw(name)
        running = [n for n in self.history if n.process.poll() is None]
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                node.signal(signal.SIGTERM)
        for node in self.history:
            node.stop()  # waits (SIGKILL after 30 s) and closes the log
        self.nodes.clear()

    def _config(self, name: str) -> Path:
        path = self.workdir / "config" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        limits = f"request_deadline_s = {float(self.deadline_s)}\n"
        if self._max_inflight is not None:
            limits += f"max_inflight_requests = {self._max_inflight}\n"
        path.write_text(
            f"[node]\nspeed_gflops = {float(self._speeds[name])!r}\n"
            f"[limits]\n{limits}"
            f'[cluster]\nname = "{self.cluster_name}"\n'
            "[security]\ninsecure = true\n"  # plain gRPC: the harness calls Infer directly
        )
        return path

    def _spawn(self, name: str) -> NodeProcess:
        self._runs += 1
        run_dir = self.workdir / f"run{self._runs}"
        run_dir.mkdir(parents=True, exist_ok=True)
        node = NodeProcess(
            name,
            run_dir,
            "--config",
            str(self._config(name)),
            "--listen",
            "127.0.0.1:0",
            "--model",
            str(self.model_dir),
            "--interfaces",
            "127.0.0.1",
            "--state-dir",
            str(self.workdir / "state" / name),
            env=self._env,
        )
        self.nodes[name] = node
        self.history.append(node)
        return node

    # faults ---------------------------------------------------------------------------------

    def _event(self, what: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        self.events.append(f"{stamp} {what}")

    def address(self, name: str) -> str:
        return self.nodes[name].address

    def names(self) -> list[str]:
        """Names of the live processes (frozen ones included)."""
        return sorted(self.nodes)

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no drain."""
        node = self.nodes.pop(name)
        self._frozen.discard(name)
        self._event(f"SIGKILL {name}")
        node.signal(signal.SIGKILL)
        node.process.wait(30)

    def stop(self, name: str) -> None:
        """SIGTERM and wait: the node drains its requests and says goodbye."""
        node = self.nodes.pop(name)
        if name in self._frozen:
            self.thaw(name)
        self._event(f"SIGTERM {name}")
        node.stop()

    def freeze(self, name: str) -> None:
        """SIGSTOP: the process holds its sockets and answers nothing."""
        self._event(f"SIGSTOP {name}")
        self.nodes[name].signal(signal.SIGSTOP)
        self._frozen.add(name)

    def thaw(self, name: str) -> None:
        """SIGCONT a frozen node."""
        node = self.nodes.get(name) or next(n for n in self.history if n.name == name)
        with contextlib.suppress(ProcessLookupError):
            node.signal(signal.SIGCONT)
        self._event(f"SIGCONT {name}")
        self._frozen.discard(name)

    def restart(self, name: str, *, sig: int = signal.SIGKILL) -> NodeProcess:
        """End ``name``'s process with ``sig`` and start a new one with the same name."""
        if sig == signal.SIGTERM:
            self.stop(name)
        else:
            self.kill(name)
        node = self._spawn(name)
        node.wait_serving()
        self._event(f"{name} serves again at {node.address}")
        return node

    def add(self, name: str, speed_gflops: float) -> NodeProcess:
        """Start a new node (it joins the running cluster)."""
        self._speeds[name] = speed_gflops
        self._event(f"start {name}")
        node = self._spawn(name)
        node.wait_serving()
        self._event(f"{name} serves at {node.address}")
        return node

    # observation ----------------------------------------------------------------------------

    def agreement(self) -> tuple[dict[str, dict[str, Any]] | None, str]:
        """(statuses, "") when every live node serves one agreed plan over exactly the live
        names with its parts loaded; (None, what is missing) otherwise."""
        names = set(self.nodes)
        found = statuses([n.address for n in self.nodes.values()])
        self.last_statuses = found
        if set(found) != names:
            return None, f"answering {sorted(found)} of {sorted(names)}"
        digests = set()
        for node_id, st in found.items():
            plan = st["plan"]
            if set(plan["members"]) != names:
                return None, f"{node_id} sees members {sorted(plan['members'])}"
            # the live view, not only the last plan's: a change may be waiting to be planned
            alive = {p["node_id"] for p in st["peers"]} | {node_id}
            if alive != names:
                return None, f"{node_id} counts {sorted(alive)} alive"
            if not plan["agreed_digest"] or plan["agreed_digest"] != plan["computed_digest"]:
                return None, (
                    f"{node_id} computed {plan['computed_digest'][:12]} "
                    f"serves {plan['agreed_digest'][:12] or '-'}"
                )
            digests.add(plan["agreed_digest"])
        if len(digests) != 1:
            return None, f"digests differ: {sorted(d[:12] for d in digests)}"
        for node_id, st in found.items():
            own = [
                list(range(a["start"], a["stop"]))
                for a in st["plan"]["assignments"]
                if a["node_id"] == node_id
            ]
            if sorted(st["parts"]) != (own[0] if own else []):
                return None, f"{node_id} has parts {st['parts']} loaded, owns {own}"
        return found, ""

    def wait_agreed(self, deadline_s: float = AGREE_DEADLINE_S) -> dict[str, dict[str, Any]]:
        """Statuses once the live nodes agree (see ``agreement``); AssertionError naming
        what was still missing at the deadline (a stuck agreement)."""
        end = time.monotonic() + deadline_s
        while True:
            found, missing = self.agreement()
            if found is not None:
                return found
            if time.monotonic() > end:
                self._event("agreement deadline passed")
                views = "; ".join(
                    f"{node_id}: members {','.join(st['plan']['members'])} computed "
                    f"{st['plan']['computed_digest'][:8] or '-'} agreed "
                    f"{st['plan']['agreed_digest'][:8] or '-'} parts {st['parts']} alive "
                    f"{','.join(sorted(p['node_id'] for p in st['peers']))}"
                    for node_id, st in sorted(self.last_statuses.items())
                )
                raise AssertionError(
                    f"no agreement among {self.names()} after {deadline_s} s: {missing} "
                    f"(views: {views})"
                )
            time.sleep(0.05)  # polling interval

    def roles(self) -> Roles:
        """Roles in the plan the live nodes agree on now."""
        found = self.wait_agreed()
        plan = next(iter(found.values()))["plan"]
        return Roles(
            parts=self.parts,
            stages=tuple(
                Assignment(a["node_id"], int(a.get("replica", 0)), a["start"], a["stop"])
                for a in plan["assignments"]
            ),
            idle=tuple(plan["idle"]),
            final_parts=self.final_parts,
            digest=plan["agreed_digest"],
        )

    def rss_bytes(self, name: str) -> int:
        """Resident set size of ``name``'s process (VmRSS)."""
        text = Path(f"/proc/{self.nodes[name].process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        if match is None:
            raise AssertionError(f"no VmRSS for {name}")
        return int(match.group(1)) * 1024

    def log_findings(self, *, warnings: bool = False, limit: int = 20) -> list[str]:
        """Tracebacks (whole), ERROR and CRITICAL lines of every node log ever written (and
        WARNING lines with ``warnings``), as '<run>/<name>: <text>'; repeats once."""
        seen: dict[str, None] = {}
        pattern = _WARNING if warnings else _PROBLEM
        for node in self.history:
            try:
                lines = node.log().splitlines()
            except OSError:
                continue
            i = 0
            while i < len(lines):
                line = lines[i]
                if line.startswith("Traceback") and not warnings:
                    block = [line]
                    i += 1
                    while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i]):
                        block.append(lines[i])
                        i += 1
                    if i < len(lines):
                        block.append(lines[i])  # the exception itself
                    text = "\n".join(block)
                elif pattern.search(line) and _EXPECTED not in line:
                    text = _without_time(line.strip())[:400]
                else:
                    i += 1
                    continue
                i += 1
                seen.setdefault(f"{node.log_path.parent.name}/{node.name}: {text}", None)
        return list(seen)[:limit]


def _without_time(line: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)


# -- the load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One request as the client saw it."""

    client: int
    target: str
    sample: int
    started_s: float  # time.monotonic()
    latency_s: float
    outcome: Outcome
    code: str = ""  # gRPC status code name for failed and lost
    details: str = ""
    answered_by: str = ""  # the node that answered (not the target when it failed over)
    failovers: int = 0  # nodes that did not answer it before one did (or before it failed)
    diff: float = math.nan  # max abs diff of an answer from its own input's reference
    matched: int | None = None  # a wrong answer equals this other pool input's reference


class Load:
    """``clients`` coroutines, one request each at a time, round-robin over ``targets``,
    inputs round-robin over ``pool`` skipping those in flight (see the module docstring).

    Runs on its own event loop in a background thread between ``start()`` and ``stop()``
    (or as a context manager). A client pauses ``failure_pause_s`` after a failure, so a
    dead origin does not turn into a busy loop of refusals.
    """

    def __init__(
        self,
        targets: Sequence[str],
        pool: Pool,
        *,
        clients: int = 8,
        deadline_s: float = 2 * NODE_DEADLINE_S + 5.0,
        failure_pause_s: float = 0.1,
    ) -> None:
        if not targets or clients < 1:
            raise ValueError("a load needs targets and at least one client")
        if len(pool) < POOL_PER_CLIENT * clients:
            raise ValueError(
                f"{clients} clients need a pool of at least {POOL_PER_CLIENT * clients} "
                f"inputs, got {len(pool)}"
            )
        self.targets = tuple(targets)
        self.pool = pool
        self.clients = clients
        self.deadline_s = deadline_s
        self.failure_pause_s = failure_pause_s
        self._records: list[Record] = []
        self._inflight = 0
        self._busy: set[int] = set()  # pool inputs of the requests in flight
        self._cursor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # control --------------------------------------------------------------------------------

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(raise_errors=kind is None)

    def start(self) -> Load:
        if self._thread is not None:
            raise RuntimeError("a Load runs once")
        self._thread = threading.Thread(target=self._thread_main, name="fault-load")
        self._thread.start()
        return self

    def stop(self, *, raise_errors: bool = True) -> list[Record]:
        """Stop sending, wait for the requests in flight (each ends by its deadline), and
        return every record."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.deadline_s + 30.0)
            if self._thread.is_alive():
                raise AssertionError("the load thread did not stop")
        if self._error is not None and raise_errors:
            raise AssertionError(f"the load client crashed: {self._error!r}") from self._error
        return list(self._records)

    @property
    def records(self) -> list[Record]:
        """The requests finished so far (a snapshot)."""
        self.check()
        return list(self._records)

    def correct_since(self, since_s: float = 0.0) -> int:
        """Correct answers to requests started at or after ``since_s`` (time.monotonic())."""
        self.check()
        return sum(
            1 for r in list(self._records) if r.outcome == "correct" and r.started_s >= since_s
        )

    def check(self) -> None:
        """Raise if the load thread crashed (a harness bug, not a cluster one)."""
        if self._error is not None:
            raise AssertionError(f"the load client crashed: {self._error!r}") from self._error

    @property
    def inflight(self) -> int:
        return self._inflight

    # the thread -----------------------------------------------------------------------------

    def _thread_main(self) -> None:
        from edgenode.transport import run

        try:
            run(self._main())
        except BaseException as exc:  # noqa: BLE001  raised again in the test's thread by check()/stop()
            self._error = exc

    async def _main(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self.clients):
                group.create_task(self._client(index))

    def _take(self) -> int:
        """The next pool input round-robin that no request in flight uses."""
        while True:  # ends: the pool holds more inputs than there are clients
            sample = self._cursor % len(self.pool)
            self._cursor += 1
            if sample not in self._busy:
                self._busy.add(sample)
                return sample

    async def _client(self, index: int) -> None:
        from edgenode.transport import ControlClient

        turn = index
        # a client of its own per coroutine (own connections): the clients are independent
        async with ControlClient() as client:
            cluster = client.cluster(self.targets)
            while not self._stop.is_set():
                target = self.targets[turn % len(self.targets)]
                turn += 1
                sample = self._take()  # one event loop: no other client runs meanwhile
                self._inflight += 1
                try:
                    record = await self._one(index, cluster, target, sample)
                finally:
                    self._inflight -= 1
                    self._busy.discard(sample)
                self._records.append(record)
                if record.outcome == "failed":
                    await asyncio.sleep(self.failure_pause_s)

    async def _one(self, client: int, cluster: Any, target: str, sample: int) -> Record:
        import grpc

        started = time.monotonic()

        def record(outcome: Outcome, code: str = "", details: str = "", **more: Any) -> Record:
            latency = time.monotonic() - started
            return Record(client, target, sample, started, latency, outcome, code, details, **more)

        try:
            # the client's own deadline, and a guard above it should the client not keep it
            async with asyncio.timeout(self.deadline_s + 5.0):
                answer = await cluster.request(
                    self.pool.inputs[sample], timeout_s=self.deadline_s, origin=target
                )
        except TimeoutError:
            return record("lost", "CLIENT_TIMEOUT", "the client did not keep its deadline")
        failovers = len(answer.refusals)
        if answer.outputs is not None:
            verdict = self.pool.check(sample, answer.outputs)
            return record(
                "correct" if verdict.ok else "wrong",
                "",
                verdict.detail,
                answered_by=answer.address,
                failovers=failovers,
                diff=verdict.diff,
                matched=verdict.matched,
            )
        last = answer.refusals[-1] if answer.refusals else None
        if answer.timed_out:
            return record("lost", "DEADLINE_EXCEEDED", str(answer.error), failovers=failovers)
        code = last.code.name if last is not None else "CANCELLED"
        if last is not None and last.code == grpc.StatusCode.DATA_LOSS:
            return record("wrong", code, f"undecodable answer: {answer.error}")
        return record("failed", code, str(answer.error), failovers=failovers)


# -- counting --------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values), q))


@dataclass(frozen=True)
class Counts:
    """Outcomes of a set of requests."""

    sent: int
    correct: int
    wrong: int
    failed: Mapping[str, int]  # by status code
    lost: int
    unclear: int  # failures with code UNKNOWN or without details
    p50_s: float  # latency of the correct answers
    p99_s: float
    failure_examples: Mapping[str, str]  # one details text per code
    wrong_examples: tuple[str, ...]
    failed_over: int = 0  # answered correctly by another node than the first one tried
    wrong_matched: int = 0  # wrong answers equal to another pool input's reference
    max_diff: float = math.nan  # largest diff of a correct answer from its reference

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def wrong_text(self) -> str:
        """'0', or 'N (K equal another request's answer)'."""
        if not self.wrong:
            return "0"
        return f"{self.wrong} ({self.wrong_matched} equal another request's answer)"

    def failed_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "-"


def summarize(records: Sequence[Record]) -> Counts:
    """Counts of ``records``."""
    failed = Counter(r.code for r in records if r.outcome == "failed")
    examples: dict[str, str] = {}
    for r in records:
        if r.outcome in ("failed", "lost") and r.code not in examples:
            examples[r.code] = f"{r.target}: {r.details}"
    latencies = [r.latency_s for r in records if r.outcome == "correct"]
    diffs = [r.diff for r in records if r.outcome == "correct"]
    return Counts(
        sent=len(records),
        correct=sum(r.outcome == "correct" for r in records),
        wrong=sum(r.outcome == "wrong" for r in records),
        failed=dict(failed),
        lost=sum(r.outcome == "lost" for r in records),
        unclear=sum(
            r.outcome == "failed" and (r.code == "UNKNOWN" or not r.details) for r in records
        ),
        p50_s=_percentile(latencies, 50),
        p99_s=_percentile(latencies, 99),
        failure_examples=examples,
        wrong_examples=tuple(r.details for r in records if r.outcome == "wrong")[:5],
        failed_over=sum(r.outcome == "correct" and r.failovers > 0 for r in records),
        wrong_matched=sum(r.outcome == "wrong" and r.matched is not None for r in records),
        max_diff=max(diffs, default=math.nan),
    )


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A split model and the nodes to run it on: base nodes, and the extra one (which joins
    in "join", and runs from the start in "kill extra")."""

    model_dir: Path
    speeds: Mapping[str, float]  # name -> pinned speed_gflops
    extra: tuple[str, float]
    deadline_s: float = NODE_DEADLINE_S
    env: Mapping[str, str] = field(default_factory=dict)  # for every node process


@dataclass(frozen=True)
class Scenario:
    """A fault: which node it hits (picked by role), what is done to it, who the origins are."""

    key: str
    title: str
    victim: Callable[[Roles, Layout], str | None]  # None: the plan has no such node
    fault: Callable[[Cluster, str, Layout], None]
    with_extra: bool = False  # start the layout's extra node with the others
    origin_is_victim: bool = False  # the victim is also an origin (the load targets it)


@dataclass
class ScenarioResult:
    """What one scenario measured."""

    scenario: str
    title: str
    victim: str = ""
    victim_role: str = ""
    plan_before: str = ""
    plan_after: str = ""
    origins: tuple[str, ...] = ()
    counts: Counts | None = None
    counts_after: Counts | None = None  # requests started after the cluster re-agreed
    victim_counts: Counts | None = None  # requests sent to the victim (origin scenario)
    fault_s: float = 0.0  # how long the fault action took (a freeze, a start)
    agreed_after_s: float = math.nan  # from the end of the fault action to re-agreement
    seconds: float = 0.0  # the whole scenario, cluster start to stop
    skipped: str = ""  # why the scenario did not run
    stuck: str = ""  # the cluster did not re-agree: what was missing
    log_findings: list[str] = field(default_factory=list)  # tracebacks, errors
    log_warnings: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list, repr=False)
    events: list[str] = field(default_factory=list)  # the cluster's signals, timed


def _kill(cluster: Cluster, victim: str, layout: Layout) -> None:
    cluster.kill(victim)


def _freeze(seconds: float) -> Callable[[Cluster, str, Layout], None]:
    def fault(cluster: Cluster, victim: str, layout: Layout) -> None:
        cluster.freeze(victim)
        time.sleep(seconds)  # the fault's length, not a wait for an event
        cluster.thaw(victim)

    return fault


def _flap(rounds: Sequence[tuple[float, float]]) -> Callable[[Cluster, str, Layout], None]:
    def fault(cluster: Cluster, victim: str, layout: Layout) -> None:
        roles = cluster.roles()
        other = roles.final() or next(n for n in cluster.names() if n != victim)
        for nudge, length in rounds:
            cluster.freeze(other)  # shifts when this one next asks its peers
            time.sleep(nudge)
            cluster.thaw(other)
            cluster.freeze(victim)
            time.sleep(length)  # the fault's length, not a wait for an event
            cluster.thaw(victim)
            cluster.wait_agreed()

    return fault


def _restart(cluster: Cluster, victim: str, layout: Layout) -> None:
    cluster.restart(victim)


def _join(cluster: Cluster, victim: str, layout: Layout) -> None:
    cluster.add(victim, layout.extra[1])


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("kill-first", "SIGKILL first stage", lambda r, _: r.first(), _kill),
        Scenario("kill-middle", "SIGKILL middle stage", lambda r, _: r.middle(), _kill),
        Scenario("kill-final", "SIGKILL final stage", lambda r, _: r.final(), _kill),
        Scenario(
            "kill-extra",
            "SIGKILL idle/replica node",
            lambda r, _: r.extra(),
            _kill,
            with_extra=True,
        ),
        Scenario(
            "kill-origin",
            "SIGKILL an origin (final stage)",
            lambda r, _: r.final(),
            _kill,
            origin_is_victim=True,
        ),
        Scenario(
            "freeze", "SIGSTOP 3 s + SIGCONT middle stage", lambda r, _: r.middle(), _freeze(3.0)
        ),
        Scenario(
            "freeze-flap",
            "SIGSTOP/SIGCONT final stage 0.5 s then middle stage 1.6-2.3 s, 4 times",
            lambda r, _: r.middle(),
            _flap(FLAP_ROUNDS),
        ),
        Scenario("restart", "restart middle stage, same name", lambda r, _: r.middle(), _restart),
        Scenario("join", "a node joins mid-load", lambda r, layout: layout.extra[0], _join),
    )
}


def run_scenario(
    cluster: Cluster,
    load: Load,
    fault: Callable[[], None],
    *,
    warmup_answers: int = 10,
    before_s: float = 1.0,
    after_s: float = 3.0,
    result: ScenarioResult | None = None,
) -> ScenarioResult:
    """Start ``load``, wait for ``warmup_answers`` correct answers and ``before_s`` more,
    run ``fault``, wait until the cluster re-agrees (``result.stuck`` says what was missing
    if it does not), keep the load ``after_s`` more seconds (and until a request started
    after the re-agreement was answered correctly, or the client deadline), stop the load."""
    result = result or ScenarioResult("custom", "custom")
    with load:
        wait_until(
            lambda: load.correct_since() >= warmup_answers,
            AGREE_DEADLINE_S,
            f"{warmup_answers} correct answers before the fault",
        )
        time.sleep(before_s)  # a fixed length of load before the fault
        faulted = time.monotonic()
        try:
            fault()
            result.fault_s = time.monotonic() - faulted
            result.plan_after = cluster.roles().summary()  # waits for the agreement
        except AssertionError as exc:  # no agreement (or a node that did not start)
            result.fault_s = time.monotonic() - faulted
            result.stuck = str(exc)
            agreed = time.monotonic()
        else:
            agreed = time.monotonic()
            result.agreed_after_s = agreed - faulted - result.fault_s
            time.sleep(after_s)  # a fixed length of load after the recovery
            with contextlib.suppress(AssertionError):  # counted below, asserted by the caller
                wait_until(lambda: load.correct_since(agreed) > 0, load.deadline_s, "an answer")
    records = load.stop()
    result.records = records
    result.events = list(cluster.events)
    result.counts = summarize(records)
    if not result.stuck:
        result.counts_after = summarize([r for r in records if r.started_s >= agreed])
    return result


def run_named(
    key: str,
    layout: Layout,
    pool: Pool,
    workdir: Path,
    *,
    clients: int = 8,
    after_s: float = 3.0,
) -> ScenarioResult:
    """Start the layout's cluster, run scenario ``key`` on it with a load of ``clients``,
    stop the cluster; the result (``skipped`` says why when the plan has no such node)."""
    scenario = SCENARIOS[key]
    result = ScenarioResult(key, scenario.title)
    speeds = dict(layout.speeds)
    if scenario.with_extra:
        speeds[layout.extra[0]] = layout.extra[1]
    began = time.monotonic()
    cluster = Cluster(
        layout.model_dir, workdir, speeds, deadline_s=layout.deadline_s, env=layout.env
    )
    with cluster:
        roles = cluster.roles()
        result.plan_before = roles.summary()
        victim = scenario.victim(roles, layout)
        if victim is None:
            result.skipped = f"the plan {roles.summary()} has no such node"
            return result
        result.victim = victim
        result.victim_role = roles.describe(victim) if victim in cluster.nodes else "new node"
        origins = [n for n in cluster.names() if scenario.origin_is_victim or n != victim]
        result.origins = tuple(origins)
        load = Load(
            [cluster.address(n) for n in origins],
            pool,
            clients=clients,
            deadline_s=2 * layout.deadline_s + 5.0,
        )
        victim_address = cluster.address(victim) if victim in cluster.nodes else ""
        run_scenario(
            cluster,
            load,
            lambda: scenario.fault(cluster, victim, layout),
            after_s=after_s,
            result=result,
        )
        if scenario.origin_is_victim:
            result.victim_counts = summarize(
                [r for r in result.records if r.target == victim_address]
            )
    result.log_findings = cluster.log_findings()
    result.log_warnings = cluster.log_findings(warnings=True)
    result.seconds = time.monotonic() - began
    return result


def format_result(result: ScenarioResult, *, warnings: int = 0) -> str:
    """A few lines for a log or an assertion message."""
    if result.skipped:
        return f"{result.scenario}: skipped: {result.skipped}"
    c = result.counts
    assert c is not None
    lines = [
        f"{result.scenario}: {result.title}: victim {result.victim} ({result.victim_role}); "
        f"plan {result.plan_before} -> {result.plan_after}; origins {', '.join(result.origins)}",
        f"  sent {c.sent} correct {c.correct} (failed over {c.failed_over}, largest diff "
        f"{c.max_diff:.3g}) wrong {c.wrong_text()} failed {c.failed_text()} lost {c.lost} "
        f"unclear {c.unclear}; "
        f"fault {result.fault_s:.2f} s, re-agreed "
        f"{result.agreed_after_s:.2f} s after it; "
        f"p50 {c.p50_s * 1e3:.1f} ms p99 {c.p99_s * 1e3:.1f} ms; {result.seconds:.1f} s",
    ]
    if result.stuck:
        lines.append(f"  STUCK: {result.stuck}")
    if result.stuck or c.lost or c.wrong:
        lines.append(f"  events: {'; '.join(result.events)}")
    if result.victim_counts is not None:
        v = result.victim_counts
        lines.append(
            f"  sent to the victim: {v.sent}: correct {v.correct} (failed over "
            f"{v.failed_over}) failed {v.failed_text()} lost {v.lost} wrong {v.wrong_text()}"
        )
    if result.counts_after is not None:
        a = result.counts_after
        lines.append(
            f"  after re-agreement: sent {a.sent} correct {a.correct} failed "
            f"{a.failed_text()} lost {a.lost} wrong {a.wrong_text()}"
        )
    lines += [f"  {code}: {text[:300]}" for code, text in c.failure_examples.items()]
    lines += [f"  wrong: {text}" for text in c.wrong_examples]
    lines += [f"  log: {line}" for line in result.log_findings]
    lines += [f"  log: {line}" for line in result.log_warnings[:warnings]]
    return "\n".join(lines)


def multi_io_layout(model_dir: Path, deadline_s: float = NODE_DEADLINE_S) -> Layout:
    """Pinned speeds that make the planner give every one of 4 nodes one part of the
    multi_io model cut at [2, 4, 6] (part work 21504, 92, 14, 51 FLOP): n0 runs part 0
    alone, which sets the bottleneck; on the slow nodes two of the small parts together would
    exceed it, so each gets one. The extra node n4 forms a second, one-node replica."""
    return Layout(
        model_dir=model_dir,
        speeds={"n0": 2.2e-7, "n1": 1e-9, "n2": 6e-10, "n3": 6e-10},
        extra=("n4", 6e-10),
        deadline_s=deadline_s,
    )
