"""`edgenode status`: the cluster as a table or JSON (argv is parsed in edgenode.cli)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from edgenode._cli_cluster import client_security, find_nodes
from edgenode._cli_common import EXIT_OK
from edgenode._table import format_table
from edgenode.errors import EdgenodeError

__all__ = ["cmd_status", "parts_label"]


def parts_label(status: Mapping[str, Any]) -> str:
    """Parts as "2-4", "r1:2-4" (replica 1) when the plan has several pipelines, or "idle"."""
    parts = status["parts"]
    if not parts:
        return "idle"
    label = f"{min(parts)}-{max(parts)}"
    replicas = {a.get("replica", 0) for a in status["plan"]["assignments"]}
    if len(replicas) > 1:
        mine = [
            a.get("replica", 0)
            for a in status["plan"]["assignments"]
            if a["node_id"] == status["node"]["node_id"]
        ]
        label = f"r{mine[0] if mine else '?'}:{label}"
    return label


def cmd_status(args: argparse.Namespace) -> int:
    from edgenode.transport import run

    statuses = run(_collect_status(args))
    if args.json:
        print(json.dumps(statuses, indent=2))
        return EXIT_OK
    rows = []
    for st in statuses:
        node = st["node"]
        plan = st["plan"]
        stages = ", ".join(
            f"{s['part']}: {s['p50_s'] * 1e3:.2f} ms (p90 {s['p90_s'] * 1e3:.2f})"
            for s in st["stages"]
        )
        agreed = plan["agreed_digest"]
        rows.append(
            [
                node["node_id"],
                st["address"],
                parts_label(st),
                (agreed or plan["computed_digest"])[:12] or "-",
                "yes" if agreed and agreed == plan["computed_digest"] else "no",
                st["requests_served"],
                stages or "-",
            ]
        )
    headers = ["node", "address", "parts", "plan", "agreed", "requests", "part run time (median)"]
    print(format_table(headers, rows))
    return EXIT_OK


async def _collect_status(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgenode.errors import PeerUnavailable
    from edgenode.mesh import Endpoint
    from edgenode.transport._control import ControlClient, status_to_dict

    client = ControlClient(protocol=1, security=client_security(args))
    statuses: dict[str, dict[str, Any]] = {}
    try:
        queue = list(await find_nodes(args, client))
        errors = []
        while queue:
            address = queue.pop(0)
            if any(s["address"] == address for s in statuses.values()):
                continue
            try:
                status = dict(status_to_dict(await client.status(address)))
            except PeerUnavailable as exc:
                errors.append(str(exc))
                continue
            statuses[status["node"]["node_id"]] = status
            for peer in status["peers"]:
                if peer["node_id"] not in statuses:
                    queue.append(str(Endpoint(host=peer["addresses"][0], port=peer["port"])))
        if not statuses:
            raise EdgenodeError(f"no node answered: {errors[0]}")
    finally:
        await client.aclose()
    return [statuses[k] for k in sorted(statuses)]
