"""What the gRPC adapters need of a node: small Protocols that runtime's classes satisfy.

The adapters in ``_control.py`` and ``_session.py`` translate calls into these and never
name the concrete classes, so that transport depends on nothing above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from edgenode.mesh import NodeId, PeerInfo
from edgenode.planning import ClusterPlan

__all__ = ["ControlService", "InferenceService", "PlanView", "StageView", "StatusView"]


class InferenceService(Protocol):
    """Runs requests that enter the cluster at this node (runtime's ``Router``)."""

    @property
    def input_names(self) -> frozenset[str]: ...

    def check_admission(self) -> None:
        """Raise Overloaded when no more requests can be taken now."""

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The model's outputs for ``inputs`` (EdgenodeError when the request fails)."""
        ...


class PlanView(Protocol):
    """What GetPlan reports: the computed and the agreed plan, and the members."""

    @property
    def computed(self) -> ClusterPlan | None: ...
    @property
    def agreed(self) -> ClusterPlan | None: ...
    @property
    def members(self) -> Sequence[str]: ...
    @property
    def problem(self) -> str: ...


class StageView(Protocol):
    """How one owned part has been doing."""

    @property
    def part(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def mean_s(self) -> float: ...
    @property
    def p50_s(self) -> float: ...
    @property
    def p90_s(self) -> float: ...


class MemoryView(Protocol):
    """A node's memory: measured now and at its peak, and predicted (runtime's ``MemoryUse``)."""

    @property
    def resident_bytes(self) -> int: ...
    @property
    def peak_bytes(self) -> int: ...
    @property
    def predicted_bytes(self) -> int: ...


class StatusView(Protocol):
    """What GetStatus reports (runtime's ``NodeStatus``)."""

    @property
    def node(self) -> PeerInfo: ...
    @property
    def address(self) -> str: ...
    @property
    def plan(self) -> PlanView: ...
    @property
    def parts(self) -> Sequence[int]: ...
    @property
    def owned(self) -> Sequence[int]: ...
    @property
    def state(self) -> str: ...
    @property
    def requests_served(self) -> int: ...
    @property
    def requests_failed(self) -> int: ...
    @property
    def part_runs(self) -> int: ...
    @property
    def stages(self) -> Sequence[StageView]: ...
    @property
    def peers(self) -> Sequence[PeerInfo]: ...
    @property
    def uptime_s(self) -> float: ...
    @property
    def metrics_url(self) -> str: ...
    @property
    def roles(self) -> Sequence[str]: ...
    @property
    def memory(self) -> MemoryView: ...


class ControlService(Protocol):
    """Answers the control RPCs (runtime's ``NodeControl``)."""

    def local(self) -> PeerInfo:
        """This node's record (Hello)."""
        ...

    def left(self, node_id: NodeId, incarnation: int) -> None:
        """A peer said goodbye (Leave)."""

    def plan(self) -> PlanView:
        """GetPlan."""
        ...

    def status(self) -> StatusView:
        """GetStatus."""
        ...

    def file_path(self, manifest_identity: str, part: int) -> Path:
        """The file behind FetchFile; ModelError when this node cannot serve it."""
        ...
