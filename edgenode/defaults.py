"""Defaults that several layers read, in one place.

Imports nothing, so that the command line can show them in ``--help`` without loading
numpy or TensorFlow, and no two modules can disagree about them.
"""

from __future__ import annotations

__all__ = [
    "BYTE_CPU_NS",
    "HOP_LATENCY_MS",
    "LINK_MBPS",
    "MAX_TENSOR_BYTES",
    "MEMORY_BUDGET_SHARE",
    "SPATIAL_GFLOPS",
    "STAGE_CPU_MS",
]

# The network the planner assumes when neither the manifest nor node.toml says otherwise:
# gigabit Ethernet. `split --cut balanced`, `plan` and the nodes' negotiation all use it.
LINK_MBPS = 1000.0
HOP_LATENCY_MS = 0.5  # the fixed cost of one hop on that network
# CPU a node spends on a request besides running its part (gRPC, framing, copies, the
# request's bookkeeping), measured per node process in the edge lab on a 2-core x86 VM
# (benchmarks/results/edgelab.md, "Where the CPU goes"): a fixed cost per stage, and a
# cost per byte for every byte a node sends or receives. A slower device pays more.
STAGE_CPU_MS = 0.6
BYTE_CPU_NS = 3.0

# A receiver refuses incoming tensors larger than this unless configured
# (node.toml: limits.max_tensor_bytes).
MAX_TENSOR_BYTES = 256 * 2**20

# The memory a node offers the cluster when node.toml sets no node.memory_budget: this share
# of the memory the OS says is available when the node starts (MemAvailable, not the total:
# other software on the device keeps what it already uses, and some room to grow).
MEMORY_BUDGET_SHARE = 0.75

# A node that cuts the model itself into spatial stripes ([model] spatial) chooses the
# region's depth for nodes of this speed (one thread, GFLOP/s; a Raspberry Pi 4 class
# device): every node must cut alike, so it is a setting, not a measurement.
SPATIAL_GFLOPS = 10.0
