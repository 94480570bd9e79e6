"""Pure planning: which node runs which contiguous part of the model."""

from __future__ import annotations

from edgenode.planning._costs import (
    DEFAULT_BANDWIDTH_BYTES_PER_S,
    DEFAULT_HOP_LATENCY_S,
    CostGraph,
    Link,
    NodeSpec,
    OpCost,
    StageCost,
    TensorCost,
    TileShape,
    boundary_tensors,
    crossing_bytes,
    node_link,
    parts_memory_bytes,
    stage_cost,
    stage_memory_bytes,
)
from edgenode.planning.cluster import (
    Assignment,
    ClusterPlan,
    plan_cluster,
    quantize_link,
    quantize_speed,
)
from edgenode.planning.memory import (
    BASELINE_BYTES,
    MEMORY_MODELS,
    PLAIN,
    MemoryModel,
    room_bytes,
)
from edgenode.planning.partition import (
    MAX_EXACT_NODES,
    TIE_REL_TOL,
    Plan,
    equal_cuts,
    narrow_cuts,
    plan_parts,
    plan_pipeline,
)
from edgenode.planning.serving import Serving, serving
from edgenode.planning.tiles import TiledPlan, plan_tiles, schedule

__all__ = [
    "BASELINE_BYTES",
    "DEFAULT_BANDWIDTH_BYTES_PER_S",
    "DEFAULT_HOP_LATENCY_S",
    "MAX_EXACT_NODES",
    "MEMORY_MODELS",
    "PLAIN",
    "TIE_REL_TOL",
    "Assignment",
    "ClusterPlan",
    "CostGraph",
    "Link",
    "MemoryModel",
    "NodeSpec",
    "OpCost",
    "Plan",
    "Serving",
    "StageCost",
    "TensorCost",
    "TileShape",
    "TiledPlan",
    "boundary_tensors",
    "crossing_bytes",
    "equal_cuts",
    "narrow_cuts",
    "node_link",
    "parts_memory_bytes",
    "plan_cluster",
    "plan_parts",
    "plan_pipeline",
    "plan_tiles",
    "quantize_link",
    "quantize_speed",
    "room_bytes",
    "schedule",
    "serving",
    "stage_cost",
    "stage_memory_bytes",
]
