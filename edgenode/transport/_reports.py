"""What a node reports of itself (GetStatus), as typed values for clients.

``ControlClient.status`` returns a ``NodeReport``: the CLI's table, the demo, the
benchmarks and the tests read attributes, never strings into proto-JSON. ``to_json`` gives
the JSON `edgenode status --json` prints: the message's fields by their proto names, in
message order, 64-bit counts as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict

from edgenode._proto.edgenode.v1 import edgenode_pb2 as pb
from edgenode.mesh import Capacity, NodeId, PeerInfo
from edgenode.planning import Assignment
from edgenode.transport._services import PlanView, StatusView

__all__ = [
    "NodeReport",
    "PlanReport",
    "StageReport",
    "message_of",
    "peer_from_record",
    "plan_message",
    "plan_report",
    "record_of",
    "report_from",
    "report_of",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanReport:
    """The plan a node computed and the one it serves."""

    computed_digest: str  # "" before the first plan
    agreed_digest: str  # the plan served; "" when none is agreed yet
    assignments: tuple[Assignment, ...]  # of the agreed plan
    members: tuple[str, ...]
    idle: tuple[str, ...]
    # The planner's prediction for the agreed plan (0.0 without one): its best pipeline's
    # slowest stage (1 / pipelined throughput) and one request's latency through it.
    bottleneck_s: float = 0.0
    latency_s: float = 0.0
    problem: str = ""  # why the members have no plan ("" when they have one)

    @property
    def agreed(self) -> bool:
        """The node serves a plan, and computed no other since."""
        return bool(self.agreed_digest) and self.agreed_digest == self.computed_digest


@dataclass(frozen=True, slots=True, kw_only=True)
class StageReport:
    """How one part the node owns has been doing."""

    part: int
    count: int  # runs since the node started
    mean_s: float  # over all of them
    p50_s: float  # over the last runs (runtime's RECENT_RUNS)
    p90_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReport:
    """One node's status: who it is, its plan, its parts and how they ran, its peers."""

    node: PeerInfo
    address: str  # where it serves
    plan: PlanReport
    parts: tuple[int, ...]  # loaded now (parts of an old plan too, until unloaded)
    owned: tuple[int, ...]  # the parts the agreed plan gives it (none when idle)
    state: str  # "waiting", "loading", "unloading" or "ready" (runtime's LoadState)
    requests_served: int  # requests that entered the cluster here and were answered
    requests_failed: int  # requests that entered here and ended with an error
    part_runs: int  # runs of its parts, for requests that entered anywhere
    stages: tuple[StageReport, ...]
    peers: tuple[PeerInfo, ...]  # the peers it counts alive
    uptime_s: float
    metrics_url: str = ""  # where it serves Prometheus metrics ("" when off)
    roles: tuple[str, ...] = ()  # what each owned part is, for a tiled model
    # Memory in bytes: resident now and at its peak (0: not known), and what the memory
    # model predicts for the parts loaded now (planning.memory).
    resident_bytes: int = 0
    peak_bytes: int = 0
    predicted_bytes: int = 0

    @property
    def node_id(self) -> str:
        return str(self.node.node_id)

    @property
    def label(self) -> str:
        """The node's name, or its id when it has none."""
        return self.node.name or self.node_id

    @property
    def assigned(self) -> set[int]:
        """The parts the agreed plan gives this node, from its assignments."""
        return {
            part for a in self.plan.assignments if a.node_id == self.node_id for part in a.parts
        }

    @property
    def replica(self) -> int | None:
        """The pipeline the agreed plan puts this node in (None: idle or no plan)."""
        return next((a.replica for a in self.plan.assignments if a.node_id == self.node_id), None)

    def to_json(self) -> dict[str, Any]:
        """The report as `edgenode status --json` prints it."""
        return _json_of(message_of(self))


def record_of(info: PeerInfo) -> pb.NodeRecord:
    """A PeerInfo as its wire message."""
    return pb.NodeRecord(
        node_id=info.node_id,
        name=info.name,
        addresses=list(info.addresses),
        port=info.port,
        protocol=info.protocol,
        cluster=info.cluster,
        model_sha256=info.manifest_identity,
        speed=info.capacity.speed,
        memory_bytes=info.capacity.memory_bytes,
        baseline_bytes=info.capacity.baseline_bytes,
        backend=info.capacity.backend,
        link_bytes_per_s=info.capacity.link_bytes_per_s,
        incarnation=info.incarnation,
        started_ms=info.started_ms,
    )


def peer_from_record(record: pb.NodeRecord) -> PeerInfo:
    """A wire record as a validated PeerInfo (UsageError if malformed)."""
    return PeerInfo(
        node_id=NodeId(record.node_id),
        name=record.name,
        addresses=tuple(record.addresses),
        port=record.port,
        protocol=record.protocol,
        cluster=record.cluster,
        manifest_identity=record.model_sha256,
        capacity=Capacity(
            speed=record.speed,
            memory_bytes=record.memory_bytes,
            link_bytes_per_s=record.link_bytes_per_s,
            baseline_bytes=record.baseline_bytes,
            backend=record.backend,
        ),
        incarnation=record.incarnation,
        started_ms=record.started_ms,
    )


def report_of(status: pb.NodeStatus) -> NodeReport:
    """A GetStatus reply as a NodeReport (UsageError when a record in it is malformed)."""
    plan = status.plan
    return NodeReport(
        node=peer_from_record(status.node),
        address=status.address,
        plan=PlanReport(
            computed_digest=plan.computed_digest,
            agreed_digest=plan.agreed_digest,
            assignments=tuple(
                Assignment(node_id=a.node_id, start=a.start, stop=a.stop, replica=a.replica)
                for a in plan.assignments
            ),
            members=tuple(plan.members),
            idle=tuple(plan.idle),
            bottleneck_s=plan.bottleneck_s,
            latency_s=plan.latency_s,
            problem=plan.problem,
        ),
        parts=tuple(status.parts),
        owned=tuple(status.owned),
        state=status.state,
        requests_served=status.requests_served,
        requests_failed=status.requests_failed,
        part_runs=status.part_runs,
        stages=tuple(
            StageReport(part=s.part, count=s.count, mean_s=s.mean_s, p50_s=s.p50_s, p90_s=s.p90_s)
            for s in status.stages
        ),
        peers=tuple(peer_from_record(p) for p in status.peers),
        uptime_s=status.uptime_s,
        metrics_url=status.metrics_url,
        roles=tuple(status.roles),
        resident_bytes=status.resident_bytes,
        peak_bytes=status.peak_bytes,
        predicted_bytes=status.predicted_bytes,
    )


def plan_report(state: PlanView) -> PlanReport:
    """What a node's plan state says to others (GetPlan, and the plan in GetStatus)."""
    computed, agreed = state.computed, state.agreed
    return PlanReport(
        computed_digest=computed.digest if computed else "",
        agreed_digest=agreed.digest if agreed else "",
        assignments=tuple(agreed.assignments) if agreed else (),
        members=tuple(state.members),
        idle=tuple(agreed.idle) if agreed else (),
        bottleneck_s=agreed.bottleneck_s if agreed else 0.0,
        latency_s=agreed.latency_s if agreed else 0.0,
        problem=state.problem,
    )


def report_from(status: StatusView) -> NodeReport:
    """A node's own status (runtime's NodeStatus) as the report GetStatus sends."""
    return NodeReport(
        node=status.node,
        address=status.address,
        plan=plan_report(status.plan),
        parts=tuple(status.parts),
        owned=tuple(status.owned),
        state=status.state,
        requests_served=status.requests_served,
        requests_failed=status.requests_failed,
        part_runs=status.part_runs,
        stages=tuple(
            StageReport(part=s.part, count=s.count, mean_s=s.mean_s, p50_s=s.p50_s, p90_s=s.p90_s)
            for s in status.stages
        ),
        peers=tuple(status.peers),
        uptime_s=status.uptime_s,
        metrics_url=status.metrics_url,
        roles=tuple(status.roles),
        resident_bytes=status.memory.resident_bytes,
        peak_bytes=status.memory.peak_bytes,
        predicted_bytes=status.memory.predicted_bytes,
    )


def plan_message(plan: PlanReport) -> pb.PlanReply:
    """A PlanReport as its wire message."""
    return pb.PlanReply(
        computed_digest=plan.computed_digest,
        agreed_digest=plan.agreed_digest,
        assignments=[
            pb.Assignment(node_id=a.node_id, start=a.start, stop=a.stop, replica=a.replica)
            for a in plan.assignments
        ],
        members=list(plan.members),
        idle=list(plan.idle),
        bottleneck_s=plan.bottleneck_s,
        latency_s=plan.latency_s,
        problem=plan.problem,
    )


def message_of(report: NodeReport) -> pb.NodeStatus:
    """A NodeReport as its wire message (report_of's inverse)."""
    return pb.NodeStatus(
        node=record_of(report.node),
        address=report.address,
        plan=plan_message(report.plan),
        parts=list(report.parts),
        owned=list(report.owned),
        state=report.state,
        requests_served=report.requests_served,
        requests_failed=report.requests_failed,
        part_runs=report.part_runs,
        stages=[
            pb.StageStats(part=s.part, count=s.count, mean_s=s.mean_s, p50_s=s.p50_s, p90_s=s.p90_s)
            for s in report.stages
        ],
        peers=[record_of(p) for p in report.peers],
        uptime_s=report.uptime_s,
        metrics_url=report.metrics_url,
        roles=list(report.roles),
        resident_bytes=report.resident_bytes,
        peak_bytes=report.peak_bytes,
        predicted_bytes=report.predicted_bytes,
    )


def _json_of(message: Any) -> dict[str, Any]:
    """A message as plain JSON-ready data: every field by its proto name, in message order,
    64-bit integers as numbers."""
    data: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(message.DESCRIPTOR, data)
    return data


# MessageToDict writes these as strings (JSON for JavaScript, whose numbers stop being exact
# past 2**53); Python's json writes any int exactly, and readers expect counts as numbers.
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT64,
    }
)


def _int64_as_numbers(descriptor: Descriptor, data: dict[str, Any]) -> None:
    """Turn the 64-bit integer fields of ``data`` (a ``descriptor`` message) into ints, and
    put its keys in the message's field order (MessageToDict puts unset fields last)."""
    ordered = {f.name: data.pop(f.name) for f in descriptor.fields if f.name in data}
    data.update(ordered)
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        items = value if isinstance(value, list) else [value]
        if field.type in _INT64_TYPES:
            numbers = [int(v) for v in items]
            data[field.name] = numbers if isinstance(value, list) else numbers[0]
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in items:
                _int64_as_numbers(field.message_type, item)
