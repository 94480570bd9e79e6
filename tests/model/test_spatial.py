"""Locality analysis: where local regions end, and that the rows it says a stripe needs
(with padding only at the image border) give exactly the whole model's rows."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from edgenode.model.efficientnet_lite import build_efficientnet_lite0
from edgenode.model.graph import build_graph
from edgenode.model.spatial import (
    RowMap,
    find_regions,
    region_ending_at,
    split_rows,
    stripe_plan,
)
from edgenode.model.tiles import build_stripe
from tests.reference import WholeModel

RELATIVE_TOLERANCE = 1e-5
SEEN: dict[str, float] = {}  # case -> largest relative error, printed with -s

L = keras.layers


def conv_stack(height: int = 23, width: int = 9) -> keras.Model:
    """Every local kind: stride-2 "same", dilation, depthwise, a residual Add and a channel
    Concatenate inside the region, pooling, zero padding, "valid", up-sampling, separable,
    hard-swish from keras.ops; then global pooling and a dense head."""
    keras.utils.set_random_seed(0)
    x = keras.Input((height, width, 3), name="image")
    y = L.Rescaling(1 / 128, offset=-1.0, name="scale")(x)
    y = L.Conv2D(8, 3, strides=2, padding="same", name="c1")(y)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.ReLU(6.0, name="r1")(y)
    y = L.Conv2D(8, 3, dilation_rate=2, padding="same", activation="relu", name="dil")(y)
    shortcut = y
    y = L.DepthwiseConv2D(5, padding="same", name="dw")(y)
    y = L.Conv2D(8, 1, name="pw")(y)
    y = L.Add(name="res")([y, shortcut])
    z = L.Conv2D(4, 3, padding="same", name="branch")(y)
    y = L.Concatenate(name="cat")([y, z])
    y = L.MaxPooling2D(3, strides=2, padding="same", name="mp")(y)
    y = L.AveragePooling2D(3, strides=1, padding="same", name="ap")(y)
    y = L.ZeroPadding2D(((1, 2), (1, 1)), name="zp")(y)
    y = L.Conv2D(6, 3, padding="valid", name="cv")(y)
    y = L.UpSampling2D(2, name="up")(y)
    y = L.SeparableConv2D(6, 3, strides=2, padding="same", name="sep")(y)
    y = y * keras.ops.relu6(y + 3.0) * (1.0 / 6.0)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, L.Dense(4, name="head")(y))


def squeeze_excite(height: int = 19) -> keras.Model:
    """A squeeze-excite gate: its Multiply ends the first region, starts the second."""
    keras.utils.set_random_seed(0)
    x = keras.Input((height, 8, 3), name="image")
    y = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(x)
    gate = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(y)
    gate = L.Conv2D(8, 1, activation="sigmoid", name="se_gate")(gate)
    y = L.Multiply(name="se_mul")([y, gate])
    y = L.Conv2D(4, 3, strides=2, padding="same", name="after")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, L.Dense(3, name="head")(y))


def image(model: keras.Model, seed: int, batch: int = 2, name: str = "image"):
    shape = model.inputs[0].shape[1:]
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(0, 255, (batch, *shape)).astype("float32")}


def relative(got: np.ndarray, ref: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Largest difference relative to the largest magnitude of the reference (of
    ``scale``, the whole tensor, when ``ref`` is a few of its rows)."""
    return float(np.abs(got - ref).max() / np.abs(ref if scale is None else scale).max())


def check_rows(graph, region, x, whole, rows, *, case: str, shift: int = 0) -> float:
    """Run the stripe for ``rows`` on the input rows the analysis names; the relative
    error against the whole model's rows (``shift`` feeds wrong rows, to see it fail)."""
    stripe = build_stripe(graph, region, rows)
    lo, hi = stripe.input_rows
    source = whole[region.input] if region.input in whole else x[region.input]
    feed = {stripe.part.inputs[0]: source[:, lo + shift : hi + shift]}
    feed.update({name: whole[name] for name in region.gates})
    got = np.asarray(next(iter(stripe.part.model(feed, training=False).values())))
    ref = whole[region.output][:, rows[0] : rows[1]]
    assert got.shape == ref.shape
    err = relative(got, ref, whole[region.output])
    if not shift:
        SEEN[case] = max(SEEN.get(case, 0.0), err)
    return err


def whole_tensors(graph, x, names):
    return WholeModel(graph, names=sorted(set(names)))(x)


def check_every_end(model: keras.Model, case: str, *, ranges: int = 3, seed: int = 0) -> None:
    graph = build_graph(model)
    rng = np.random.default_rng(seed)
    x = image(model, seed, name=graph.inputs[0])
    for full in find_regions(graph):
        names = [full.input, *full.gates, *(out for _, out in full.ends)]
        whole = whole_tensors(graph, x, [n for n in names if n not in x])
        for stop, _ in full.ends:
            region = region_ending_at(graph, full, stop)
            height = region.output_height
            picks = {(0, height), (0, 1), (height - 1, height)}
            for _ in range(ranges):
                a = int(rng.integers(0, height))
                picks.add((a, int(rng.integers(a + 1, height + 1))))
            for rows in sorted(picks):
                err = check_rows(graph, region, x, whole, rows, case=case)
                assert err <= RELATIVE_TOLERANCE, (region.output, rows, err)


def test_same_padding_split_matches_tensorflow() -> None:
    # k 3 at stride 2: 1 row of padding when the height is even (at the bottom), 2 when odd;
    # dilation 2 makes k_eff 5: 2 rows above. The row checks below hold these to Keras.
    for height, top in ((16, 0), (15, 1), (17, 1), (20, 0)):
        graph = build_graph(conv_stack(height))
        region = find_regions(graph)[0]
        stem, dil = region.maps[graph.op("c1").index], region.maps[graph.op("dil").index]
        assert (stem.offset, stem.kernel, stem.stride) == (top, 3, 2)
        assert (dil.offset, dil.kernel, dil.stride) == (2, 5, 1)
    stem = RowMap(kind="window", kernel=3, stride=2, offset=0)
    assert stem.needs((0, 4)) == (0, 9)
    assert RowMap(kind="window", kernel=5, stride=1, offset=2).needs((0, 3)) == (-2, 5)
    assert RowMap(kind="upsample", stride=2).needs((3, 6)) == (1, 3)


@pytest.mark.parametrize("height", [23, 32, 17])
def test_conv_stack_region_and_rows(height: int) -> None:
    graph = build_graph(conv_stack(height))
    (region,) = find_regions(graph)
    assert graph.ops[region.start].name == "scale"
    assert graph.ops[region.stop].name == "gap"  # global pooling ends it
    # a cut between "dil" and "res" would hand on two tensors (the shortcut)
    ends = {graph.ops[stop - 1].name for stop, _ in region.ends}
    assert {"dil", "res", "cat", "mp", "sep"} <= ends
    assert not ends & {"dw", "pw", "branch"}
    check_every_end(conv_stack(height), f"conv_stack h={height}")


def test_wrong_rows_are_caught() -> None:
    model = conv_stack(32)
    graph = build_graph(model)
    (full,) = find_regions(graph)
    region = region_ending_at(graph, full, graph.op("cat").index + 1)
    x = image(model, 0)
    whole = whole_tensors(graph, x, [region.output])
    rows = (4, 9)
    assert check_rows(graph, region, x, whole, rows, case="wrong") <= RELATIVE_TOLERANCE
    assert check_rows(graph, region, x, whole, rows, case="wrong", shift=1) > 1e-2


def test_border_padding_only_at_the_border() -> None:
    graph = build_graph(conv_stack(32))
    (full,) = find_regions(graph)
    region = region_ending_at(graph, full, graph.op("dil").index + 1)
    stem, dil = graph.op("c1").index, graph.op("dil").index
    top = stripe_plan(graph, region, (0, 4))
    middle = stripe_plan(graph, region, (6, 10))
    bottom = stripe_plan(graph, region, (12, 16))
    # the stem of a 32-row input at stride 2 pads 1 row at the bottom only
    assert (top.pads[stem], middle.pads[stem], bottom.pads[stem]) == ((0, 0), (0, 0), (0, 1))
    assert (top.pads[dil], middle.pads[dil], bottom.pads[dil]) == ((2, 0), (0, 0), (0, 2))
    # rows 4..12 of the stem output; its row 11 reads input rows 22..24
    assert middle.input_rows == (8, 25)
    assert top.tensor_rows["c1"] == (0, 6)


def test_squeeze_excite_gate_ends_a_region() -> None:
    model = squeeze_excite()
    graph = build_graph(model)
    first, second = find_regions(graph)
    assert graph.ops[first.stop].name == "se_pool"
    assert graph.ops[second.start].name == "se_mul"
    assert second.gates == ("se_gate",)
    check_every_end(model, "squeeze_excite")


def test_split_rows() -> None:
    assert split_rows(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_rows(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_efficientnet_lite0_region() -> None:
    graph = build_graph(build_efficientnet_lite0())
    first = find_regions(graph)[0]
    assert (first.start, first.input) == (0, "image")
    assert graph.ops[first.stop].name == "avg_pool"
    assert first.output == "head_relu" and first.output_height == 7
    # one end per block (after the block's last op) and inside blocks without a shortcut
    ends = {graph.ops[stop - 1].name for stop, _ in first.ends}
    assert {"block0_project_bn", "block2_add", "block15_project_bn"} <= ends
    assert "block2_dwconv" not in ends  # inside a residual block: two tensors cross


def test_efficientnet_lite0_rows() -> None:
    keras.utils.set_random_seed(0)
    check_every_end(build_efficientnet_lite0((67, 40, 3)), "efficientnet_lite0", ranges=1)


def test_mobilenet_v3_small_regions() -> None:
    model = keras.applications.MobileNetV3Small(
        input_shape=(75, 48, 3), weights=None, include_top=True, classifier_activation=None
    )
    graph = build_graph(model)
    regions = find_regions(graph)
    first = regions[0]
    assert graph.ops[first.stop].name == "expanded_conv_squeeze_excite_avg_pool"
    second = regions[1]
    assert graph.ops[second.start].name == "expanded_conv_squeeze_excite_mul"
    assert len(second.gates) == 1
    check_every_end(model, "mobilenet_v3_small", ranges=1)


def test_report_errors_seen() -> None:
    print({case: f"{err:.2e}" for case, err in sorted(SEEN.items())})
