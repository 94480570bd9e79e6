"""The composition root: builds a node from its configuration and runs it until stopped.

Only this module names concrete implementations (gRPC transport, zeroconf or static
discovery); everything it wires together depends on Protocols.

    config -> model (manifest + part files) -> transport (gRPC server) -> discovery
           -> negotiation (agreed plan) -> part host (owned parts loaded)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from edgenode._table import format_bytes
from edgenode.config import Config, ModelConfig, parse_address
from edgenode.defaults import MEMORY_BUDGET_SHARE
from edgenode.errors import ConfigError, EdgenodeError
from edgenode.mesh import (
    Capacity,
    Discovery,
    Endpoint,
    NodeId,
    PeerInfo,
    StaticDiscovery,
    ZeroconfDiscovery,
    local_addresses,
    new_incarnation,
)
from edgenode.model.manifest import DEFAULT_WIRE_FORMAT, Manifest, link_spec, load_manifest
from edgenode.planning import ClusterPlan, room_bytes
from edgenode.runtime.control import MemoryUse, NodeControl
from edgenode.runtime.follow import follow_plan, tell_router
from edgenode.runtime.instrument import (
    ObservedRequests,
    TimedTransport,
    stage_observer,
    watch_plans,
)
from edgenode.runtime.linkmeter import measure_link
from edgenode.runtime.metrics import MetricsServer, NodeMetrics, sample_gauges
from edgenode.runtime.negotiation import Negotiator, PlanState, link_of
from edgenode.runtime.parts import PartHost, RunnerFactory
from edgenode.runtime.requests import Router
from edgenode.runtime.selfbench import (
    baseline_memory_bytes,
    measure_speed,
    memory_budget_bytes,
    process_memory_bytes,
)
from edgenode.security import load_credentials
from edgenode.transport import (
    PROTOCOL_VERSION,
    ControlClient,
    GrpcTransport,
    InferenceService,
    Security,
    TransportConfig,
)
from edgenode.transport._control import control_handlers

__all__ = ["DEFAULT_SPLIT_PARTS", "Node", "node_security", "prepare_model", "write_ready_file"]

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_PARTS = 8  # a node that cuts the model itself: the planner groups these


def prepare_model(model: ModelConfig, state_dir: Path) -> tuple[Manifest, Path]:
    """The manifest and the directory of its part files (blocking: call in a thread).

    A directory written by ``edgenode split`` is used as it is (missing part files are
    fetched from peers later); a ``.keras`` file or an application name is cut here,
    the same way on every node, into ``state_dir``.
    """
    source = Path(model.source)
    if source.is_dir():
        return load_manifest(source), source
    from edgenode.model.loading import load_model
    from edgenode.model.split import SpatialOptions, split_model

    fmt = model.backend
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.stem if source.suffix else model.source)
    # float32 keeps the directory it always had; another wire format is another cut's files
    wire = "" if model.wire_format == DEFAULT_WIRE_FORMAT else f"-{model.wire_format}"
    cut = (
        f"spatial{model.spatial}-{model.spatial_gflops:g}" if model.spatial else DEFAULT_SPLIT_PARTS
    )
    target = state_dir / "models" / f"{slug}-{cut}-{fmt}{wire}"
    keras_model = load_model(
        model.source,
        weights=model.weights,
        input_shape=model.input_shape or None,
        seed=model.seed,
    )
    link = link_spec(model.link_mbps or None, model.hop_latency_ms) if model.custom_link else None
    spatial = None
    if model.spatial:
        spatial = SpatialOptions(stripes=model.spatial, speed=model.spatial_gflops * 1e9)
    result = split_model(
        keras_model,
        target,
        parts=None if spatial else DEFAULT_SPLIT_PARTS,
        fmt=fmt,
        link=link,
        wire_format=model.wire_format,
        spatial=spatial,
    )
    return result.manifest, target


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def slow_link(local: PeerInfo, cluster_bytes_per_s: float) -> float:
    """This node's own link (measured or configured) when slower than the cluster's, else 0."""
    own = local.capacity.link_bytes_per_s
    return own if 0 < own < cluster_bytes_per_s else 0.0


def node_security(config: Config) -> Security:
    """TLS and membership checks from ``[security]``; ConfigError when neither a key nor
    an explicit ``insecure = true`` is configured."""
    if config.security.key:
        credentials = load_credentials(Path(config.security.key))
        logger.info(
            "cluster credential: member %r of %r, valid until %s",
            credentials.member, credentials.cluster, f"{credentials.not_after:%Y-%m-%d}",
        )  # fmt: skip
        return Security(credentials)
    if config.security.insecure:
        logger.warning("insecure: no TLS, any host on the network can join and send requests")
        return Security.insecure()
    raise ConfigError(
        "security.key: no cluster credential; create one with `edgenode keygen` and set "
        "security.key, or set security.insecure = true (or --insecure) for development"
    )


@contextlib.asynccontextmanager
async def _first_error() -> AsyncIterator[None]:
    """Raise the first EdgenodeError out of the node's task group as itself, so that the CLI
    prints it in one line (e.g. DuplicateNodeId); anything else stays a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, _ = group.split(EdgenodeError)
        if matched is None:
            raise
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group


def write_ready_file(path: Path, *, node_id: str, address: str) -> None:
    """Write ``path`` as JSON {node_id, address, pid} atomically: a reader sees the whole
    file or none (a temporary file in the same directory, then os.replace)."""
    text = json.dumps({"node_id": node_id, "address": address, "pid": os.getpid()})
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise EdgenodeError(f"cannot write the ready file {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text + "\n")
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise EdgenodeError(f"cannot write the ready file {path}: {exc.strerror or exc}") from None


def _remove_ready_file(path: Path) -> None:
    """Best effort: a node that cannot remove its ready file still stops."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _count(count: int, noun: str) -> str:
    """'1 part', '3 parts': for log lines."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Running:
    transport: GrpcTransport
    discovery: Discovery
    negotiator: Negotiator
    host: PartHost
    control: NodeControl


class Node:
    """One edgenode node. ``await node.run(stop)`` serves until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        state_dir: Path,
        runner_factory: RunnerFactory | None = None,
        security: Security | None = None,
        ready_file: Path | None = None,
    ) -> None:
        """``runner_factory``: how parts are loaded (default: by each part file's format);
        ``security``: what ``node_security(config)`` gave, when the caller checked it first;
        ``ready_file``: written once the node serves (``write_ready_file``), removed when it
        stops."""
        self._config = config
        self._security = security
        self._state_dir = state_dir
        self._ready_file = ready_file
        self._runner_factory = runner_factory
        self._running: _Running | None = None
        self.metrics = NodeMetrics()

    @property
    def state(self) -> PlanState | None:
        """The negotiation state (None before the node has started)."""
        return self._running.negotiator.state if self._running else None

    @property
    def address(self) -> str:
        """host:port of the gRPC server (valid once running)."""
        if self._running is None:
            raise EdgenodeError("the node is not running")
        return self._running.transport.address

    async def run(
        self, stop: asyncio.Event, *, on_agreed: Callable[[ClusterPlan], None] | None = None
    ) -> None:
        """Start, serve until ``stop`` is set, then shut down cleanly."""
        config = self._config
        # Before the slow part: a bad key fails at once.
        security = self._security or node_security(config)
        if self._ready_file is not None:
            # A file left by a killed run must not announce this one's address early.
            _remove_ready_file(self._ready_file)
        manifest, directory = await asyncio.to_thread(prepare_model, config.model, self._state_dir)
        backend = manifest.backend  # what the parts run on (prepare_model converted)
        speed = config.node.speed_gflops * 1e9 or await asyncio.to_thread(
            measure_speed, backend=backend
        )
        baseline = await asyncio.to_thread(baseline_memory_bytes, backend)
        host, port = parse_address(config.node.listen, key="node.listen")
        transport_config = TransportConfig(
            max_tensor_bytes=config.limits.max_tensor_bytes, security=security
        )
        # Metrics off: the request path gets the plain router and transport, nothing observed.
        observed = bool(config.node.metrics_listen)
        metrics = self.metrics

        def refused(reason: str) -> None:
            metrics.refused.labels(reason=reason).inc()

        async with contextlib.AsyncExitStack() as stack:
            # Bind first (the port goes into this node's record), build, then serve.
            transport = GrpcTransport(
                host, port, config=transport_config, on_refused=refused if observed else None
            )
            stack.push_async_callback(transport.aclose)
            await transport.bind()
            bound_port = int(transport.address.rsplit(":", 1)[1])
            local = self._local_record(manifest, bound_port, speed, baseline)
            room = room_bytes(local.capacity.memory_bytes, baseline)
            client = ControlClient(security=security)
            stack.push_async_callback(client.aclose)
            discovery = self._discovery(local, client)
            cluster_link = link_of(manifest).bandwidth_bytes_per_s
            negotiator = Negotiator(
                discovery=discovery,
                graph=manifest.cost_graph(),
                manifest_digest=manifest.identity,
                link=link_of(manifest),
                peers=client,
            )
            part_host = await stack.enter_async_context(
                PartHost(
                    manifest,
                    directory,
                    threads=config.model.threads,
                    factory=self._runner_factory,
                    memory_bytes=room,
                )
            )

            def address_of(node_id: str) -> str | None:
                peer = negotiator.membership.get(NodeId(node_id))
                return str(peer.endpoint) if peer is not None else None

            def peer_at(address: str) -> str | None:
                members = negotiator.membership.members
                return next((p.node_id for p in members if str(p.endpoint) == address), None)

            observe_stage = stage_observer(metrics) if observed else None

            def on_stage(parts: range, seconds: tuple[float, ...]) -> None:
                for part, part_s in zip(parts, seconds, strict=True):
                    control.record_stage(part, part_s)  # built below, before anything runs
                if observe_stage is not None:
                    observe_stage(parts, seconds)

            router = Router(
                node_id=local.node_id,
                manifest=manifest,
                host=part_host,
                transport=TimedTransport(transport, metrics, peer_at) if observed else transport,
                plan=lambda: negotiator.state.agreed,
                address_of=address_of,
                deadline_s=config.limits.request_deadline_s,
                max_inflight=config.limits.max_inflight_requests,
                on_stage=on_stage,
                slow_link=lambda: slow_link(negotiator.membership.local, cluster_link),
            )
            serving: InferenceService = ObservedRequests(router, metrics) if observed else router
            metrics_url = ""
            if observed:
                m_host, m_port = parse_address(
                    config.node.metrics_listen, key="node.metrics_listen"
                )
                metrics.describe(
                    node_id=local.node_id,
                    model=manifest.model.name,
                    identity=manifest.identity,
                    backend=backend,
                    wire_format=manifest.wire_format,
                    threads=config.model.threads,
                    speed_flops=speed,
                )
                server = await stack.enter_async_context(MetricsServer(metrics, m_host, m_port))
                reachable = local.host if m_host in ("0.0.0.0", "::", "") else m_host
                metrics_url = f"http://{_url_host(reachable)}:{server.port}/metrics"

            def memory() -> MemoryUse:
                resident, peak = process_memory_bytes()
                predicted = baseline + part_host.needs_bytes(part_host.loaded)
                return MemoryUse(
                    resident_bytes=resident, peak_bytes=peak, predicted_bytes=predicted
                )

            control = NodeControl(
                local=lambda: discovery.local,
                address=lambda: f"{local.host}:{bound_port}",
                plan=lambda: negotiator.state,
                loaded=lambda: part_host.loaded,
                served=lambda: router.served,
                failed=lambda: router.failed,
                peers=lambda: tuple(negotiator.membership.alive),
                manifest=manifest,
                directory=directory,
                left=negotiator.peer_left,
                metrics_url=metrics_url,
                memory=memory,
            )
            await transport.serve(
                control_handlers(
                    lambda: control,
                    lambda: serving,
                    max_tensor_bytes=config.limits.max_tensor_bytes,
                )
            )
            self._running = _Running(
                transport=transport,
                discovery=discovery,
                negotiator=negotiator,
                host=part_host,
                control=control,
            )
            await stack.enter_async_context(discovery)
            logger.info(
                "node %s serving on %s:%d (model %s, %s, %s, %s per part, speed %.1f GFLOP/s, "
                "memory budget %s%s, baseline %s)",
                local.node_id,
                local.host,
                bound_port,
                manifest.model.name,
                _count(len(manifest.parts), "part"),
                backend,
                _count(config.model.threads, "thread"),
                speed / 1e9,
                format_bytes(local.capacity.memory_bytes),
                ""
                if config.node.memory_budget
                else f", {MEMORY_BUDGET_SHARE:.0%} of the memory available at start",
                format_bytes(baseline),
            )
            if self._ready_file is not None:
                await asyncio.to_thread(
                    write_ready_file,
                    self._ready_file,
                    node_id=local.node_id,
                    address=f"{local.host}:{bound_port}",
                )
                stack.callback(_remove_ready_file, self._ready_file)
            async with _first_error(), asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(negotiator.run()),
                    group.create_task(router.run()),
                    group.create_task(tell_router(negotiator, router)),
                    group.create_task(
                        follow_plan(negotiator, part_host, client, manifest, directory, on_agreed)
                    ),
                ]
                if observed:
                    gauges = sample_gauges(
                        metrics,
                        queued=lambda: transport.stats().queued_tensors,
                        negotiator=negotiator,
                        router=router,
                        host=part_host,
                    )
                    tasks.append(group.create_task(gauges))
                    tasks.append(group.create_task(watch_plans(negotiator, metrics)))
                if not config.node.link_mbps:
                    meter = measure_link(
                        membership=lambda: negotiator.membership,
                        publish=negotiator.publish_local,
                        prober=client,
                        cap_bytes_per_s=link_of(manifest).bandwidth_bytes_per_s,
                    )
                    tasks.append(group.create_task(meter))
                await stop.wait()
                deadline = config.limits.request_deadline_s
                logger.info("stopping: finishing requests started here (at most %g s)", deadline)
                if unanswered := await router.drain(deadline):
                    logger.warning("stopping with %s unanswered", _count(unanswered, "request"))
                logger.info("stopping: goodbye to the cluster")
                await negotiator.leave()
                for task in tasks:
                    task.cancel()
        self._running = None
        logger.info("stopped")

    def _local_record(self, manifest: Manifest, port: int, speed: float, baseline: int) -> PeerInfo:
        config = self._config
        host, _ = parse_address(config.node.listen, key="node.listen")
        if host in ("0.0.0.0", "::", ""):
            addresses = tuple(local_addresses(config.cluster.interfaces))
        else:
            addresses = (host,)
        if not addresses:
            raise ConfigError("cluster.interfaces: no address to advertise")
        return PeerInfo(
            node_id=NodeId(config.node.node_id),
            name=config.node.name,
            addresses=addresses,
            port=port,
            protocol=PROTOCOL_VERSION,
            cluster=config.cluster.name,
            manifest_identity=manifest.identity,
            capacity=Capacity(
                speed=speed,
                memory_bytes=memory_budget_bytes(config.node.memory_budget_bytes),
                link_bytes_per_s=config.node.link_mbps * 1e6 / 8,  # 0: measured later
                baseline_bytes=baseline,
                backend=manifest.backend,
            ),
            incarnation=new_incarnation(),
            started_ms=time.time_ns() // 1_000_000,
        )

    def _discovery(self, local: PeerInfo, client: ControlClient) -> Discovery:
        cluster = self._config.cluster
        if cluster.multicast:
            return ZeroconfDiscovery(local, interfaces=cluster.interfaces)
        peers = [Endpoint.parse(p) for p in cluster.peers]
        return StaticDiscovery(local, peers, client.hello)
