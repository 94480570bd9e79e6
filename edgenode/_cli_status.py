"""`edgenode status`: the cluster as a table or JSON, and `--wait-ready N`, which polls until
N nodes serve one agreed plan with their parts loaded (argv is parsed in edgenode.cli)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgenode._cli_cluster import client_security, find_nodes
from edgenode._cli_common import EXIT_OK, say
from edgenode._table import format_table
from edgenode.errors import EdgenodeError

if TYPE_CHECKING:
    from edgenode.client.cluster import ClusterClient
    from edgenode.transport import NodeReport

__all__ = ["DEFAULT_READY_TIMEOUT_S", "TABLE_WIDTH", "Readiness", "cmd_status", "parts_label",
           "readiness", "status_table"]  # fmt: skip

TABLE_WIDTH = 100  # characters: the default table fits a terminal this wide (--wide: all)
DEFAULT_READY_TIMEOUT_S = 60.0  # --wait-ready gives up after this long
POLL_INTERVAL_S = 0.5  # between two rounds of status calls while waiting
PROGRESS_INTERVAL_S = 2.0  # at most one progress line this often, unless more nodes are ready


def _ranges(parts: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    ordered = sorted(set(parts))
    spans: list[list[int]] = []
    for p in ordered:
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def parts_label(status: NodeReport, *, wide: bool = False) -> str:
    """The parts the agreed plan gives a node: "2-4", "r1:2-4" (replica 1) when the plan has
    several pipelines, "idle" when it gives none, "-" before a plan is agreed; for a tiled
    model what they are: "1-2: stripe 1, gather" (``wide``: with the stripe's input rows)."""
    plan = status.plan
    if not plan.agreed_digest:
        return "-"
    if not status.owned:
        return "idle"
    label = _ranges(status.owned)
    if len({a.replica for a in plan.assignments}) > 1:
        mine = status.replica
        label = f"r{'?' if mine is None else mine}:{label}"
    if status.roles:
        roles = status.roles if wide else [r.split(" (", 1)[0] for r in status.roles]
        label = f"{label}: {', '.join(roles)}"
    return label


def _state_label(status: NodeReport) -> str:
    """The node's load state, with the parts it concerns: "ready", "loading 3-5",
    "unloading 6-7" (parts of an old plan), "waiting" (no agreed plan yet)."""
    state = status.state or "?"
    owned, loaded = set(status.owned), set(status.parts)
    if state == "loading":
        return f"loading {_ranges(owned - loaded)}"
    if state == "unloading":
        return f"unloading {_ranges(loaded - owned)}"
    return str(state)


def _why_not_ready(status: NodeReport, digest: str) -> str:
    """What keeps a node from serving the plan ``digest`` with its parts loaded ("" when
    nothing does)."""
    who = status.node_id
    agreed, computed = status.plan.agreed_digest, status.plan.computed_digest
    if not agreed:
        problem = status.plan.problem
        return f"{who} has no plan: {problem}" if problem else f"{who} has no agreed plan yet"
    if agreed != digest:
        return f"{who} serves another plan ({agreed[:8]})"
    if computed != agreed:
        return f"{who} is agreeing on a new plan"
    owned, loaded = set(status.owned), set(status.parts)
    if status.state == "loading":
        return f"{who} is loading {_parts(owned - loaded)}"
    if status.state == "unloading":
        return f"{who} is unloading {_parts(loaded - owned)} of an old plan"
    if status.state != "ready":
        return f"{who} is {status.state or 'in an unknown state'}"
    return ""


@dataclass(frozen=True, slots=True)
class Readiness:
    """How many nodes serve one agreed plan with their parts loaded, and what the rest lack."""

    ready: int
    wanted: int  # the nodes waited for, or the plan's members when they are more
    missing: tuple[str, ...]  # one reason per node that is not ready; () when done

    @property
    def done(self) -> bool:
        return not self.missing

    def summary(self, after_s: float | None = None) -> str:
        """Like "2 of 3 nodes ready after 60 s: c is loading parts 3-5"."""
        text = f"{self.ready} of {_count(self.wanted, 'node')} ready"
        if after_s is not None:
            text += f" after {after_s:g} s"
        return f"{text}: {'; '.join(self.missing)}" if self.missing else text


def readiness(statuses: Sequence[NodeReport], want: int, *, unreachable: str = "") -> Readiness:
    """Whether ``want`` nodes or more serve one agreed plan: every member of it answers,
    with that plan agreed and computed, and exactly its parts loaded (the condition the
    node tests wait for). The plan judged is the one most nodes are ready on; nodes outside
    it do not hold the wait, but are named while it lasts. ``unreachable``: why no node
    answered, when none did."""
    by_id = {s.node_id: s for s in statuses}
    if not by_id:
        return Readiness(0, want, (unreachable or "no node answered",))
    ready_on: Counter[str] = Counter()
    for s in statuses:
        digest = s.plan.agreed_digest
        if digest and not _why_not_ready(s, digest):
            ready_on[digest] += 1
    agreed = [s.plan.agreed_digest for s in statuses if s.plan.agreed_digest]
    # deterministic: most ready nodes, then most nodes serving it, then the digest
    best = max(set(agreed), key=lambda d: (ready_on[d], agreed.count(d), d), default="")
    # the plan's nodes and every member its nodes count (a newcomer holds the wait)
    serving = [s.plan for s in statuses if s.plan.agreed_digest == best]
    members = sorted(
        {m for plan in serving for m in plan.members}
        | {a.node_id for plan in serving for a in plan.assignments}
        | {m for plan in serving for m in plan.idle}
    )
    missing = []
    for node_id in members:
        if node_id not in by_id:
            missing.append(f"{node_id} does not answer")
        elif why := _why_not_ready(by_id[node_id], best):
            missing.append(why)
    ready = len(members) - len(missing)
    if missing or len(members) < want:
        outside = [_why_not_ready(by_id[n], best) for n in sorted(by_id) if n not in members]
        missing += [why for why in outside if why]
    if not missing and len(members) < want:
        names = ", ".join(members)
        missing.append(f"the agreed plan has {_count(len(members), 'node')}: {names or 'none'}")
    return Readiness(ready, max(want, len(members)), tuple(missing))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _parts(parts: set[int]) -> str:
    return f"part{'' if len(parts) == 1 else 's'} {_ranges(parts)}"


def cmd_status(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    if args.watch:
        from edgenode._cli_watch import watch

        return watch(args)

    if args.wait_ready is not None:
        statuses = run(_wait_ready(args, args.wait_ready))
    else:
        statuses = run(_collect_status(args))
    if args.json:
        print(json.dumps([s.to_json() for s in statuses], indent=2))
    else:
        print(status_table(statuses, wide=args.wide))
    return EXIT_OK


def status_table(statuses: Sequence[NodeReport], *, wide: bool = False) -> str:
    """One row per node; TABLE_WIDTH characters at most unless ``wide`` (a node id or
    address too long for it aside)."""
    rows = []
    for st in statuses:
        node, plan = st.node, st.plan
        digest = (plan.agreed_digest or plan.computed_digest)[: 12 if wide else 8] or "-"
        owned = set(st.owned)
        stages = [s for s in st.stages if s.part in owned]
        stage_ms = f"{sum(s.p50_s for s in stages) * 1e3:.2f}" if stages else "-"
        row = [
            node.node_id,
            st.address,
            parts_label(st, wide=wide),
            digest,
            "yes" if plan.agreed else "no",
            _state_label(st),
            st.requests_served,
            st.part_runs,
            stage_ms,
            _duration(st.uptime_s),
            f"{node.capacity.speed / 1e9:.3g}",
            f"{_mib(st.predicted_bytes)}/{_mib(node.capacity.memory_bytes)}",
        ]
        if wide:
            per_part = ", ".join(
                f"{s.part}: {s.p50_s * 1e3:.2f}/{s.p90_s * 1e3:.2f}" for s in st.stages
            )
            row += [
                st.requests_failed,
                f"{_mib(st.resident_bytes)}/{_mib(st.peak_bytes)}",
                _mib(node.capacity.baseline_bytes),
                _link_label(node.capacity.link_bytes_per_s),
                per_part or "-",
            ]
        rows.append(row)
    headers = ["node", "address", "parts", "plan", "agreed", "state", "requests here",
               "part runs", "run p50 ms", "up", "GFLOP/s", "MiB predicted/budget"]  # fmt: skip
    if wide:
        headers += ["failed here", "MiB resident/peak", "MiB baseline", "link Mbit/s",
                    "part run ms p50/p90"]  # fmt: skip
        table = format_table(headers, rows)
    else:  # address, uptime, speed and memory while they fit (always with --wide)
        table = format_table(headers, rows, max_width=TABLE_WIDTH, optional=(1, 9, 10, 11))
    # every member computes the same plan, so they give the same reason: say it once
    problems = dict.fromkeys(st.plan.problem for st in statuses if st.plan.problem)
    return "\n".join([table, *(f"no plan: {problem}" for problem in problems)])


def _mib(n: int) -> str:
    """Bytes in whole MiB; "-" for 0 (not known: an older node, or an OS that does not say)."""
    return f"{n / 2**20:.0f}" if n else "-"


def _link_label(bytes_per_s: float) -> str:
    """The node's own link as measured or configured; "-": not known, or as fast as the
    cluster's link (the planner then uses the cluster's)."""
    return f"{bytes_per_s * 8 / 1e6:g}" if bytes_per_s else "-"


def _duration(seconds: float) -> str:
    """45 -> "45s", 725 -> "12m05s", 11_520 -> "3h12m", 190_000 -> "2d04h"."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


async def _collect_status(args: argparse.Namespace) -> list[NodeReport]:
    from edgenode.client.cluster import ClusterClient

    async with ClusterClient(security=client_security(args)) as client:
        statuses, errors = await client.crawl(await find_nodes(args, client))
    if not statuses:
        raise EdgenodeError(f"no node answered: {errors[0]}")
    return statuses


async def _wait_ready(args: argparse.Namespace, want: int) -> list[NodeReport]:
    """Statuses once ``want`` nodes serve one agreed plan with their parts loaded; progress
    on stderr; EdgenodeError, in one line, saying what is missing at the timeout."""
    import asyncio

    from edgenode.client.cluster import ClusterClient

    timeout_s = args.timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    verdict = Readiness(0, want, ("no node answered yet",))
    said, said_at, said_ready = "", -PROGRESS_INTERVAL_S, 0
    say(args, f"waiting up to {timeout_s:g} s for {_count(want, 'ready node')}")
    known: list[str] = []
    async with ClusterClient(security=client_security(args)) as client:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    statuses, verdict = await _ready_round(args, client, known, want)
            except TimeoutError:
                break
            if verdict.done:
                return statuses
            known = [s.address for s in statuses]
            news = verdict.summary() != said and (
                verdict.ready != said_ready or loop.time() - said_at >= PROGRESS_INTERVAL_S
            )
            if news:
                said, said_at, said_ready = verdict.summary(), loop.time(), verdict.ready
                say(args, said)
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(POLL_INTERVAL_S, deadline - loop.time()))
    raise EdgenodeError(verdict.summary(after_s=timeout_s))


async def _ready_round(
    args: argparse.Namespace, client: ClusterClient, known: list[str], want: int
) -> tuple[list[NodeReport], Readiness]:
    """One look at the cluster: the nodes known so far and their peers, and, while fewer
    than ``want`` answer, whatever --peer or mDNS finds."""
    seeds = list(known)
    unreachable = ""
    if len(known) < want or args.peer:
        try:
            seeds += [a for a in await find_nodes(args, client) if a not in seeds]
        except EdgenodeError as exc:
            unreachable = str(exc)
    statuses, errors = await client.crawl(seeds)
    if not statuses and errors:
        unreachable = f"no node answered: {errors[0]}"
    return statuses, readiness(statuses, want, unreachable=unreachable)
