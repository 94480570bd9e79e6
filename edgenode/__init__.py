"""edgenode: run one neural network across several small devices as a peer-to-peer cluster."""

from __future__ import annotations

from edgenode.errors import ConfigError, EdgenodeError, ModelError, PlanError, UsageError

__all__ = ["ConfigError", "EdgenodeError", "ModelError", "PlanError", "UsageError", "__version__"]
__version__ = "0.1.0"
