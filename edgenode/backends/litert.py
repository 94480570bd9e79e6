"""Run a LiteRT (``.tflite``) part with ``ai_edge_litert``; no TensorFlow needed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgenode.errors import ModelError

__all__ = ["LiteRTPart"]

_SIGNATURE = "serving_default"


class LiteRTPart:
    """A LiteRT part called with a dict of named inputs, returning named outputs."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load LiteRT part {path}: {exc}") from exc
        signatures = self._interpreter.get_signature_list()
        if _SIGNATURE not in signatures:
            raise ModelError(f"{path} has no {_SIGNATURE!r} signature")
        self._runner: Any = self._interpreter.get_signature_runner(_SIGNATURE)
        self.inputs: tuple[str, ...] = tuple(signatures[_SIGNATURE]["inputs"])
        self.outputs: tuple[str, ...] = tuple(signatures[_SIGNATURE]["outputs"])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the part; ``inputs`` must hold exactly the part's input names."""
        if set(inputs) != set(self.inputs):
            raise ModelError(
                f"LiteRT part expects inputs {sorted(self.inputs)}, got {sorted(inputs)}"
            )
        result = self._runner(**{name: np.asarray(inputs[name]) for name in self.inputs})
        return {name: np.asarray(value) for name, value in result.items()}
