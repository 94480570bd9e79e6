"""Small hand-built Keras models, one per graph feature the slicer must handle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

PACKAGE = "edgenode_tests"


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitInTwo(keras.layers.Layer):
    """A layer returning a list of two tensors."""

    def call(self, x: Any) -> list[Any]:
        half = x.shape[-1] // 2
        return [x[..., :half], x[..., half:] * 2.0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class StatsDict(keras.layers.Layer):
    """A layer returning a dict of tensors."""

    def call(self, x: Any) -> dict[str, Any]:
        return {"mean": keras.ops.mean(x, axis=-1, keepdims=True), "scaled": x * 0.5}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvBlock(keras.layers.Layer):
    """A custom layer with sublayers (a conv inside), for the cost model."""

    def __init__(self, filters: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.norm = keras.layers.BatchNormalization()

    def build(self, input_shape: Any) -> None:
        self.conv.build(input_shape)
        self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, x: Any) -> Any:
        return keras.ops.relu(self.norm(self.conv(x)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters}


def non_layer_ops() -> keras.Model:
    """MobileNetV3's hard_swish written with Python operators and keras.ops."""
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(x)
    hard_sigmoid = keras.ops.relu6(y + 3.0) * (1.0 / 6.0)
    y = y * hard_sigmoid
    y = keras.ops.mean(y, axis=(1, 2))
    return keras.Model(x, keras.ops.tanh(y) - 1.0)


def fork_join() -> keras.Model:
    """A residual Add, a squeeze-excite Multiply and a Concatenate."""
    x = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(4, 3, padding="same")(x)
    a = keras.layers.ReLU()(a)
    res = keras.layers.Add()([x, a])
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(res)
    se = keras.layers.Conv2D(2, 1, activation="relu", bias_initializer="ones")(se)  # alive
    se = keras.layers.Conv2D(4, 1, activation="sigmoid")(se)
    scaled = keras.layers.Multiply()([res, se])
    b1 = keras.layers.Conv2D(3, 1)(scaled)
    b2 = keras.layers.Conv2D(5, 3, padding="same")(scaled)
    b3 = keras.layers.MaxPooling2D(3, strides=1, padding="same")(scaled)
    y = keras.layers.Concatenate()([b1, b2, b3])
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(3)(y))


def shared_and_multi_output() -> keras.Model:
    """A layer called twice, keras.ops.split, and layers returning a list and a dict."""
    x = keras.Input((12,))
    shared = keras.layers.Dense(12, activation="tanh", name="shared")
    a = shared(x)
    b = shared(a)
    p, q, r = keras.ops.split(b, 3, axis=-1)
    left, right = SplitInTwo()(a)
    stats = StatsDict()(keras.layers.Concatenate()([p, r, left]))
    y = keras.layers.Concatenate()([stats["mean"], stats["scaled"], q, right])
    return keras.Model(x, keras.layers.Dense(4)(y))


def nested() -> keras.Model:
    """A functional backbone called twice (siamese), and a nested Sequential head."""
    inner_in = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="fc")(inner_in)
    low = keras.layers.Dense(4, name="low")(h)
    high = keras.layers.Dense(4, name="high")(keras.ops.sin(h))
    backbone = keras.Model(inner_in, [low, high], name="backbone")
    head = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(2)],
        name="head",
    )
    a = keras.Input((6,), name="left")
    b = keras.Input((6,), name="right")
    la, ha = backbone(a)
    lb, hb = backbone(b)
    joined = keras.layers.Concatenate()([la + lb, ha * hb])
    return keras.Model([a, b], head(joined))


def multi_io() -> keras.Model:
    """Two inputs, dict outputs, one output taken early, one reused later."""
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((5,), name="meta")
    f = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(f)
    early = keras.layers.Dense(2, name="early_head")(pooled)
    m = keras.layers.Dense(6, activation="relu", name="meta_fc")(meta)
    fused = keras.layers.Add(name="fuse")([pooled, m])
    late = keras.layers.Dense(3, name="late_head")(keras.layers.Concatenate()([fused, early]))
    return keras.Model({"image": image, "meta": meta}, {"early": early, "late": late})


def named_outputs() -> keras.Model:
    """Dict outputs {"cls", "reg", "emb"}: "emb" comes out of an inlined nested model
    (tensor ``inner.inner_dense``), "cls" is also read by a later layer (not a leaf)."""
    inner_in = keras.Input((6,))
    hidden = keras.layers.Dense(6, activation="tanh", name="inner_dense")(inner_in)
    inner = keras.Model(inner_in, hidden, name="inner")
    x = keras.Input((6,), name="features")
    emb = inner(x)
    cls = keras.layers.Dense(4, name="cls_head")(emb)
    joined = keras.layers.Concatenate(name="join")([emb, cls])
    reg = keras.layers.Dense(2, name="reg_head")(joined)
    return keras.Model(x, {"reg": reg, "cls": cls, "emb": emb})


def list_outputs() -> keras.Model:
    """List outputs: both halves of one keras.ops.split (Keras names both "split") and
    an inlined nested model's output."""
    x = keras.Input((6,), name="values")
    low, high = keras.ops.split(keras.layers.Dense(6, name="mix")(x), 2, axis=-1)
    tail_in = keras.Input((3,))
    tail = keras.Model(tail_in, keras.layers.Dense(2, name="proj")(tail_in), name="tail")
    return keras.Model(x, [low, high, tail(high)])


def twin_branches() -> keras.Model:
    """Two branches of one shape into a Concatenate, whose order matters, and a
    shape-keeping convolution: cut at ``TWIN_CUTS``, part 0 sends two same-shaped tensors
    (they can be swapped) and part 2 can be skipped (its input has its output's shape)."""
    x = keras.Input((8, 8, 3), name="image")
    stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(x)
    left = keras.layers.Conv2D(4, 3, padding="same", name="left")(stem)
    right = keras.layers.Conv2D(4, 1, name="right")(stem)
    y = keras.layers.Concatenate(name="join")([left, right])
    y = keras.layers.Conv2D(4, 1, name="mix")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", name="refine")(y)
    y = keras.layers.ReLU(name="act")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    return keras.Model(x, keras.layers.Dense(5, name="logits")(y))


# [stem left right] -> left, right -> [join mix] -> mix -> [refine act] -> act -> [pool logits]
TWIN_CUTS = (3, 5, 7)


def custom_block() -> keras.Model:
    """A custom layer with a conv inside."""
    x = keras.Input((16, 16, 3))
    y = ConvBlock(8, name="block")(x)
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(y))


BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "non_layer_ops": non_layer_ops,
    "fork_join": fork_join,
    "shared_and_multi_output": shared_and_multi_output,
    "nested": nested,
    "multi_io": multi_io,
    "named_outputs": named_outputs,
    "list_outputs": list_outputs,
    "custom_block": custom_block,
    "twin_branches": twin_branches,
}


def build(name: str, seed: int = 0) -> keras.Model:
    """A hand-built model with seeded weights."""
    keras.utils.set_random_seed(seed)
    return BUILDERS[name]()


def sample_inputs(model: keras.Model, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Random inputs keyed by the graph's input names (in model.inputs order)."""
    from edgenode.model.graph import build_graph

    rng = np.random.default_rng(seed)
    graph = build_graph(model)
    return {
        name: rng.uniform(-1, 1, size=(batch, *graph.tensors[name].shape[1:])).astype("float32")
        for name in graph.inputs
    }
