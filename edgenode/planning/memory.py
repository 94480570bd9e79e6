"""How much resident memory a node needs for a set of parts, per backend.

A node's resident memory (VmRSS, and its peak VmHWM) is

    baseline + runtime + weights * P + loading * W + activations * A + buffers * B

- **baseline**: what the node holds before any part: Python, gRPC, numpy and the backend's
  library once imported. Each node measures its own at start-up and advertises it
  (``Capacity.baseline_bytes``); ``BASELINE_BYTES`` stands in where nothing was measured
  (``edgenode plan``).
- **runtime**: the backend's one-off growth once a first part has loaded and run (LiteRT's
  XNNPACK delegate and thread pool; TensorFlow's eager context, kernels and allocator).
- **weights** x P, the parts' parameter bytes. LiteRT maps each ``.tflite`` file (its pages
  all become resident on the first run) and XNNPACK packs a second, anonymous copy of the
  weights: about 2.1 P. Keras holds the weights as tensors plus what loading leaves behind:
  about 1.7 P.
- **loading** x W, the largest single weight tensor of the parts
  (``OpCost.largest_weight_bytes``): Keras passes each variable through several copies
  while it loads a part, and the largest sets the peak (about 9.8 W: ConvNeXtLarge's last
  part, with 36 MiB matrices, peaked 250 MiB above the others of the same size); LiteRT
  maps the file (0).
- **activations** x A: from the largest working set of one layer of a part (every tensor
  that layer reads and writes; ``OpCost.activation_bytes``). LiteRT keeps an arena per part
  (its interpreter's and XNNPACK's), so the parts' working sets add up (about 3.3 x each);
  TensorFlow frees intermediates as it goes, so the largest one counts (about 2.1 x).
- **buffers** x B, the bytes the parts receive and send for one request (model inputs and
  answers included): the transport's chunks of a request in flight and the arrays they
  become.

The coefficients were fitted to the VmHWM of real nodes serving MobileNetV2, ResNet50 and
EfficientNetB3 in 1 to 4 parts of each backend, 20 requests each (LiteRT: typical error
6 MiB, worst 14 MiB). ``benchmarks/memory.py`` on ConvNeXtLarge and ConvNeXtBase showed
what the small models hid: LiteRT's arenas add up across a node's parts (a node with five
parts held 50-70 MiB more than the largest arena alone explains; the summed form predicts
those nodes within 2 %, and over-predicts the small models' multi-part nodes by up to 18 %:
the safe side), and a Keras node's peak follows its largest weight tensor (a form in the
parameters and the largest part was 20-26 % off). Keras' coefficients are fitted on all of
those nodes (26 of them; worst error 50 MiB, 4.5 %).
The planner gives a node parts whose need fits its budget less its baseline
(``room_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BASELINE_BYTES",
    "MEMORY_MODELS",
    "PLAIN",
    "MemoryModel",
    "room_bytes",
]

_MIB = 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryModel:
    """Resident bytes a node needs for parts, beyond its baseline (see the module's doc)."""

    backend: str
    runtime_bytes: int
    weights: float
    activations: float
    buffers: float
    loading: float = 0.0
    # Each part keeps its own activation memory (LiteRT): the working sets add up, rather
    # than only the largest counting.
    activations_add_up: bool = False

    def need_bytes(
        self, param_bytes: int, largest_weight_bytes: int, activation_bytes: int, moved_bytes: int
    ) -> int:
        """Bytes a node needs beyond its baseline for parts with these parameter bytes, this
        largest weight tensor, these layer working sets (the largest, or the parts' sum when
        ``activations_add_up``), and these bytes received and sent per request."""
        return int(
            self.runtime_bytes
            + self.weights * param_bytes
            + self.loading * largest_weight_bytes
            + self.activations * activation_bytes
            + self.buffers * moved_bytes
        )


# Parameters plus the largest working set, nothing else: the planner's unit tests and graphs
# that name no backend.
PLAIN = MemoryModel(backend="plain", runtime_bytes=0, weights=1.0, activations=1.0, buffers=0.0)

MEMORY_MODELS: dict[str, MemoryModel] = {
    "litert": MemoryModel(
        backend="litert",
        runtime_bytes=14 * _MIB,
        weights=2.12,
        activations=3.3,
        buffers=2.0,
        activations_add_up=True,
    ),
    "keras": MemoryModel(
        backend="keras",
        runtime_bytes=23 * _MIB,
        weights=1.71,
        activations=2.75,
        buffers=2.0,
        loading=9.77,
    ),
}

# A node's resident memory at start-up with its backend imported and no part loaded, as
# measured on x86-64 Linux with Python 3.12 (a node measures its own; this is for planning
# offline). TensorFlow is most of Keras' figure.
BASELINE_BYTES: dict[str, int] = {"litert": 78 * _MIB, "keras": 556 * _MIB}


def room_bytes(budget_bytes: int, baseline_bytes: int) -> int:
    """What a node with this budget and baseline can give its parts (never negative)."""
    return max(0, budget_bytes - baseline_bytes)
