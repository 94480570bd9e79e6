"""Static costs: published multiply-add counts, analytic formulas, custom layers."""

from __future__ import annotations

import keras
import pytest

from edgenode.model.cost import graph_stats
from edgenode.model.graph import build_graph
from tests.model import models


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "published_mmacs"),
    [("MobileNetV3Large", 217), ("MobileNetV3Small", 56), ("ResNet50", 3800)],
)
def test_published_multiply_adds(name: str, published_mmacs: int) -> None:
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    stats = graph_stats(build_graph(model))
    assert sum(s.macs for s in stats) / 1e6 == pytest.approx(published_mmacs, rel=0.03)
    params = sum(s.param_bytes for s in stats)
    assert params == model.count_params() * 4


def test_conv_dense_and_elementwise_formulas() -> None:
    x = keras.Input((10, 10, 3))
    c = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(x)
    d = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(c)
    f = keras.layers.Flatten(name="flat")(d)
    y = keras.layers.Dense(4, name="fc")(f) + 1.0
    stats = {s.name: s for s in graph_stats(build_graph(keras.Model(x, y)))}
    assert stats["conv"].macs == 5 * 5 * 8 * 3 * 3 * 3
    assert stats["conv"].flops == 2 * stats["conv"].macs + 5 * 5 * 8  # + bias
    assert stats["dw"].macs == 5 * 5 * 8 * 3 * 3 and stats["dw"].param_bytes == 3 * 3 * 8 * 4
    assert stats["flat"].flops == 0
    assert stats["fc"].macs == 200 * 4 and stats["fc"].param_bytes == (200 * 4 + 4) * 4
    assert stats["add-0"].flops == 4 and stats["add-0"].method == "elementwise"
    assert stats["conv"].output_bytes == 5 * 5 * 8 * 4


def test_custom_layer_counts_the_conv_inside() -> None:
    stats = {s.name: s for s in graph_stats(build_graph(models.build("custom_block")))}
    block = stats["block"]
    conv_macs = 16 * 16 * 8 * 3 * 3 * 3
    assert block.method == "profiler"
    assert conv_macs * 2 <= block.flops <= conv_macs * 2 * 1.1
    assert block.param_bytes == (3 * 3 * 3 * 8 + 8 + 4 * 8) * 4
