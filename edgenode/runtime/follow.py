"""Following the agreed plan: load exactly the parts it gives this node, fetching missing
part files from peers, and wake the router's waiting requests when the plan changes."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from edgenode.errors import EdgenodeError, ModelError
from edgenode.mesh import PeerInfo
from edgenode.model.manifest import Manifest, file_sha256
from edgenode.planning import ClusterPlan
from edgenode.runtime.negotiation import Negotiator, PlanState
from edgenode.runtime.parts import PartHost

__all__ = [
    "PartFiles",
    "PlanListener",
    "PlanWaiter",
    "ensure_files",
    "follow_plan",
    "next_agreed",
    "tell_router",
]

logger = logging.getLogger(__name__)

WAIT_S = 3600.0  # one wait for a new plan; then the loops wait again (next_agreed)


class PartFiles(Protocol):
    """Where missing part files come from (the RPC client: FetchFile from a peer)."""

    async def fetch_file(
        self, peer: PeerInfo, manifest_identity: str, part: int, path: Path, sha256: str
    ) -> None:
        """Download part ``part`` from ``peer`` into ``path``, verified against ``sha256``."""


def _newly_agreed(served: ClusterPlan | None, state: PlanState) -> bool:
    return state.agreed is not None and state.agreed is not served


class PlanWaiter(Protocol):
    """Waits for a plan state (the Negotiator)."""

    async def wait(self, predicate: Callable[[PlanState], bool], timeout_s: float) -> PlanState:
        """The first state satisfying ``predicate``; TimeoutError after ``timeout_s``."""
        ...


class PlanListener(Protocol):
    """Told when the agreed plan changes (the Router)."""

    def plan_changed(self) -> None: ...


async def next_agreed(negotiator: PlanWaiter, served: ClusterPlan | None) -> PlanState:
    """The first state whose agreed plan is not ``served``, however long that takes (a
    cluster's plan may hold for days: each WAIT_S that passes, it waits again)."""
    while True:
        try:
            return await negotiator.wait(functools.partial(_newly_agreed, served), WAIT_S)
        except TimeoutError:
            continue


async def ensure_files(
    manifest: Manifest,
    directory: Path,
    parts: Iterable[int],
    peers: Callable[[], Iterable[PeerInfo]],
    files: PartFiles,
) -> None:
    """Make sure the files of ``parts`` are in ``directory``, fetching each missing or
    damaged one from the first peer that can send it (ModelError when none can)."""
    for index in parts:
        spec = manifest.parts[index]
        path = directory / spec.file
        if path.is_file() and await asyncio.to_thread(file_sha256, path) == spec.sha256:
            continue
        for peer in peers():
            try:
                await files.fetch_file(peer, manifest.identity, index, path, spec.sha256)
            except EdgenodeError as exc:
                logger.info("cannot fetch %s from %s: %s", spec.file, peer.node_id, exc)
                continue
            logger.info("fetched %s from %s", spec.file, peer.node_id)
            break
        else:
            raise ModelError(f"no peer could send {spec.file}")


async def follow_plan(
    negotiator: Negotiator,
    host: PartHost,
    files: PartFiles,
    manifest: Manifest,
    directory: Path,
    on_agreed: Callable[[ClusterPlan], None] | None = None,
) -> None:
    """Load exactly the parts of each newly agreed plan (fetching missing files); runs
    until cancelled."""
    served: ClusterPlan | None = None
    me = negotiator.membership.local.node_id
    while True:
        state = await next_agreed(negotiator, served)
        plan = state.agreed
        assert plan is not None
        parts = plan.parts_of(me)
        try:
            await ensure_files(
                manifest, directory, parts, lambda: negotiator.membership.alive, files
            )
            await host.load(parts)
        except EdgenodeError as exc:
            logger.error("cannot load parts %s of plan %s: %s", list(parts), plan.digest[:12], exc)
            served = plan
            continue
        served = plan
        if parts:
            logger.debug(
                "plan %s: running parts %d-%d", plan.digest[:12], parts.start, parts.stop - 1
            )
        else:
            logger.debug("plan %s: no part for this node (idle)", plan.digest[:12])
        if on_agreed is not None:
            on_agreed(plan)


async def tell_router(negotiator: PlanWaiter, router: PlanListener) -> None:
    """Wake the router's waiting requests whenever the agreed plan changes; runs until
    cancelled."""
    served: ClusterPlan | None = None
    while True:
        state = await next_agreed(negotiator, served)
        served = state.agreed
        router.plan_changed()
