"""The control plane's domain side: what a node answers about itself.

The gRPC adapter (edgenode/transport/_control.py) only translates these to and
from messages: Hello (who are you), Leave (a peer's goodbye), GetPlan (the digest
this node computed, used to confirm agreement), GetStatus (for `edgenode status`)
and FetchFile (part files and the manifest, for nodes that lack them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgenode._stats import percentile
from edgenode.errors import ModelError
from edgenode.mesh import NodeId, PeerInfo
from edgenode.model.manifest import MANIFEST_NAME, Manifest
from edgenode.runtime.negotiation import PlanState
from edgenode.transport import MANIFEST_PART

__all__ = [
    "RECENT_RUNS",
    "LoadState",
    "MemoryUse",
    "NodeControl",
    "NodeStatus",
    "StageStats",
    "load_state",
]

RECENT_RUNS = 256  # runs per part behind the percentiles GetStatus reports

# How far a node is in serving the agreed plan: "waiting" (no agreed plan yet), "loading"
# (parts the plan gives it are not all loaded), "unloading" (parts of an old plan are still
# loaded) or "ready" (exactly the parts the plan gives it are loaded).
LoadState = Literal["waiting", "loading", "unloading", "ready"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageStats:
    """How one owned part has been doing."""

    part: int
    count: int
    mean_s: float  # over every run
    p50_s: float  # over the last RECENT_RUNS runs
    p90_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """One node's view of itself and the cluster."""

    node: PeerInfo
    address: str
    plan: PlanState
    parts: tuple[int, ...]  # loaded now
    owned: tuple[int, ...]  # what the agreed plan gives this node
    state: LoadState
    requests_served: int  # requests that entered the cluster here and were answered
    requests_failed: int  # requests that entered here and ended with an error
    part_runs: int  # runs of this node's parts, for requests that entered anywhere
    stages: tuple[StageStats, ...]
    peers: tuple[PeerInfo, ...]
    uptime_s: float
    metrics_url: str = ""  # where this node serves Prometheus metrics ("" when off)
    roles: tuple[str, ...] = ()  # what each owned part is, for a tiled model
    memory: MemoryUse = field(default_factory=lambda: MemoryUse())


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryUse:
    """A node's memory in bytes: resident now and at its peak since start (0: the OS does
    not say), and what the memory model predicts for the parts loaded now (its baseline
    plus their need, ``planning.memory``)."""

    resident_bytes: int = 0
    peak_bytes: int = 0
    predicted_bytes: int = 0


def load_state(plan: PlanState, owned: tuple[int, ...], loaded: tuple[int, ...]) -> LoadState:
    """Where a node stands with the parts of its agreed plan."""
    if plan.agreed is None:
        return "waiting"
    if not set(owned) <= set(loaded):
        return "loading"
    if set(loaded) != set(owned):
        return "unloading"
    return "ready"


@dataclass(slots=True)
class _Stage:
    count: int = 0
    total_s: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_RUNS))

    def stats(self, part: int) -> StageStats:
        return StageStats(
            part=part,
            count=self.count,
            mean_s=self.total_s / self.count,
            p50_s=percentile(self.recent, 0.5),
            p90_s=percentile(self.recent, 0.9),
        )


@dataclass(eq=False)
class NodeControl:
    """Answers control requests from the node's live state (getters injected)."""

    local: Callable[[], PeerInfo]
    address: Callable[[], str]
    plan: Callable[[], PlanState]
    loaded: Callable[[], tuple[int, ...]]
    served: Callable[[], int]
    peers: Callable[[], tuple[PeerInfo, ...]]
    manifest: Manifest
    directory: Path
    failed: Callable[[], int] = lambda: 0  # requests that entered here and failed
    left: Callable[[NodeId, int], None] = lambda node_id, incarnation: None  # a peer's Leave
    metrics_url: str = ""  # where this node serves Prometheus metrics ("" when off)
    memory: Callable[[], MemoryUse] = MemoryUse  # measured now, and predicted
    clock: Callable[[], float] = time.monotonic
    started_s: float = field(default=0.0)
    _stages: dict[int, _Stage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started_s = self.clock()

    def record_stage(self, part: int, seconds: float) -> None:
        """Note one run of an owned part."""
        stage = self._stages.setdefault(part, _Stage())
        stage.count += 1
        stage.total_s += seconds
        stage.recent.append(seconds)

    def status(self) -> NodeStatus:
        """A snapshot for `edgenode status`."""
        local = self.local()
        plan = self.plan()
        loaded = self.loaded()
        owned = tuple(plan.agreed.parts_of(local.node_id)) if plan.agreed is not None else ()
        return NodeStatus(
            node=local,
            address=self.address(),
            plan=plan,
            parts=loaded,
            owned=owned,
            state=load_state(plan, owned, loaded),
            requests_served=self.served(),
            requests_failed=self.failed(),
            part_runs=sum(s.count for s in self._stages.values()),
            stages=tuple(s.stats(p) for p, s in sorted(self._stages.items()) if s.count),
            peers=self.peers(),
            uptime_s=self.clock() - self.started_s,
            metrics_url=self.metrics_url,
            roles=tuple(self.manifest.tiles.role(i) for i in owned) if self.manifest.tiles else (),
            memory=self.memory(),
        )

    def file_path(self, manifest_identity: str, part: int) -> Path:
        """The file behind a FetchFile request; ModelError when this node cannot serve it."""
        if manifest_identity != self.manifest.identity:
            raise ModelError("this node serves another model or another cut of it")
        if part == MANIFEST_PART:
            path = self.directory / MANIFEST_NAME
        elif 0 <= part < len(self.manifest.parts):
            path = self.directory / self.manifest.parts[part].file
        else:
            raise ModelError(f"part {part} is not in the manifest")
        if not path.is_file():
            raise ModelError(f"this node does not have {path.name}")
        return path
