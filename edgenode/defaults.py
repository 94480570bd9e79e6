"""Defaults that several layers read, in one place.

Imports nothing, so that the command line can show them in ``--help`` without loading
numpy or TensorFlow, and no two modules can disagree about them.
"""

from __future__ import annotations

__all__ = ["HOP_LATENCY_MS", "LINK_MBPS", "MAX_TENSOR_BYTES"]

# The network the planner assumes when neither the manifest nor node.toml says otherwise:
# gigabit Ethernet. `split --cut balanced`, `plan` and the nodes' negotiation all use it.
LINK_MBPS = 1000.0
HOP_LATENCY_MS = 0.5  # the fixed cost of one hop on that network

# A receiver refuses incoming tensors larger than this unless configured
# (node.toml: limits.max_tensor_bytes).
MAX_TENSOR_BYTES = 256 * 2**20
