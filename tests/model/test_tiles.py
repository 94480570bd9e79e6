"""Stripes of a local region plus the gather part reproduce the whole model, in Keras and
as LiteRT parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgenode.model.graph import build_graph
from edgenode.model.manifest import slice_name
from edgenode.model.slicing import export_part, run_model
from edgenode.model.spatial import find_regions, region_between, region_ending_at
from edgenode.model.tiles import build_tiles, run_tiles, stripe_name
from tests.model.test_spatial import conv_stack, image, relative, squeeze_excite

KERAS_RELATIVE = 1e-5
LITERT_RELATIVE = 1e-4
SEEN: dict[str, float] = {}  # case -> largest relative error, printed with -s


def check_tiles(graph, tiles, case: str, *, tolerance: float = KERAS_RELATIVE, run=None) -> None:
    """Stripes + gather against the whole model for two inputs whose answers differ."""
    answers = []
    for seed in (0, 1):
        x = image(graph.model, seed, batch=1, name=graph.inputs[0])
        ref = run_model(graph, x)
        got = run_tiles(tiles, x) if run is None else run_tiles(tiles, x, run=run)
        answers.append(ref)
        for name in graph.outputs:
            err = relative(got[name], ref[name])
            SEEN[case] = max(SEEN.get(case, 0.0), err)
            assert err <= tolerance, (case, name, err)
    for name in graph.outputs:  # the reference moves with its input
        assert relative(answers[0][name], answers[1][name]) > 100 * tolerance


@pytest.mark.parametrize("height", [23, 32, 17])
@pytest.mark.parametrize("count", [2, 3, 4])
def test_conv_stack_stripes(height: int, count: int) -> None:
    graph = build_graph(conv_stack(height))
    (full,) = find_regions(graph)
    check_tiles(graph, build_tiles(graph, full, count), f"conv_stack h={height} whole region")
    # a shorter region (after the residual Add and the channel Concatenate): smaller halos
    region = region_ending_at(graph, full, graph.op("cat").index + 1)
    tiles = build_tiles(graph, region, count)
    assert [s.rows for s in tiles.stripes][-1][1] == region.output_height
    check_tiles(graph, tiles, f"conv_stack h={height} to cat")


def test_two_tile_stages_chained() -> None:
    """Stripes to the Concatenate, gathered; the gathered tensor cut into new stripes."""
    graph = build_graph(conv_stack(32))
    (full,) = find_regions(graph)
    cut = graph.op("cat").index + 1
    first = build_tiles(graph, region_ending_at(graph, full, cut), 2, stop=cut)
    second_region = region_between(graph, full, cut, full.stop)
    assert second_region.input == "cat" and second_region.gates == ()
    second = build_tiles(graph, second_region, 3, with_before=False)
    assert first.gather.outputs == ("cat",) and second.before is None

    answers = []
    for seed in (0, 1):
        x = image(graph.model, seed, batch=1)
        ref = run_model(graph, x)["head"]
        got = run_tiles(second, {**x, **run_tiles(first, x)})["head"]
        err = relative(got, ref)
        SEEN["conv_stack two stages"] = max(SEEN.get("conv_stack two stages", 0.0), err)
        assert err <= KERAS_RELATIVE
        answers.append(ref)
    assert relative(answers[0], answers[1]) > 100 * KERAS_RELATIVE


def test_stripe_interfaces_are_named() -> None:
    graph = build_graph(conv_stack(32))
    (full,) = find_regions(graph)
    region = region_ending_at(graph, full, graph.op("cat").index + 1)
    tiles = build_tiles(graph, region, 3)
    assert tiles.before is None
    for i, stripe in enumerate(tiles.stripes):
        rows = slice_name("image", stripe.input_rows)
        assert stripe.part.inputs == (rows,)
        assert stripe.part.outputs == (stripe_name("cat", i),)
        assert set(stripe.part.model.input) == {rows}
    assert tiles.gather.inputs == tuple(stripe_name("cat", i) for i in range(3))
    assert tiles.gather.outputs == ("head",)
    # shared weights, not copies
    stripe_vars = {id(v) for s in tiles.stripes for v in s.part.model.weights}
    assert {id(v) for v in graph.model.get_layer("c1").weights} <= stripe_vars


def test_wrong_halo_is_caught() -> None:
    graph = build_graph(conv_stack(32))
    (full,) = find_regions(graph)
    region = region_ending_at(graph, full, graph.op("cat").index + 1)
    tiles = build_tiles(graph, region, 2)
    x = image(graph.model, 0, batch=1)
    ref = run_model(graph, x)["head"]

    def shifted(part, feed):  # the second stripe fed rows one lower than it needs
        if part is tiles.stripes[1].part:
            lo, hi = tiles.stripes[1].input_rows
            padded = np.pad(x["image"], ((0, 0), (0, 1), (0, 0), (0, 0)))
            feed = {part.inputs[0]: padded[:, lo + 1 : hi + 1]}
        return {k: np.asarray(v) for k, v in part.model(feed, training=False).items()}

    assert relative(run_tiles(tiles, x, run=shifted)["head"], ref) > 1e-3


def test_region_after_a_squeeze_excite_gate() -> None:
    graph = build_graph(squeeze_excite(37))
    _, second = find_regions(graph)
    tiles = build_tiles(graph, second, 3)
    assert tiles.before is not None and second.gates == ("se_gate",)
    for stripe in tiles.stripes:
        rows = slice_name(second.input, stripe.input_rows)
        assert set(stripe.part.inputs) == {rows, "se_gate"}
    check_tiles(graph, tiles, "squeeze_excite gate")


def _lite0(size: int = 224):
    from edgenode.model.efficientnet_lite import (
        build_efficientnet_lite0,
        load_torch_weights,
        pretrained_weights_path,
    )

    model = build_efficientnet_lite0((size, size, 3))
    load_torch_weights(model, pretrained_weights_path())
    return build_graph(model)


def _end_at_height(graph, region, height: int):
    stop = max(stop for stop, out in region.ends if graph.tensors[out].shape[1] == height)
    return region_ending_at(graph, region, stop)


def test_efficientnet_lite0_stripes() -> None:
    graph = _lite0()
    full = find_regions(graph)[0]
    check_tiles(graph, build_tiles(graph, full, 2), "efficientnet_lite0 whole region N=2")
    for count, height in ((3, 28), (4, 56)):
        tiles = build_tiles(graph, _end_at_height(graph, full, height), count)
        check_tiles(graph, tiles, f"efficientnet_lite0 to {height} rows N={count}")


def _litert(tiles, directory: Path):
    from edgenode.backends.litert import LiteRTPart

    runners = {}
    parts = [*(s.part for s in tiles.stripes), tiles.gather]
    for part in parts:
        path = export_part(part, directory / f"part-{part.index}.tflite", "litert")
        runner = LiteRTPart(path)
        assert set(runner.inputs) == set(part.inputs)
        assert set(runner.outputs) == set(part.outputs)
        runners[id(part)] = runner

    def run(part, feed):
        return runners[id(part)](feed)

    return run


@pytest.mark.parametrize("end", ["cat", "whole"])
def test_litert_stripes_conv_stack(end: str, tmp_path: Path) -> None:
    graph = build_graph(conv_stack(23))
    (region,) = find_regions(graph)
    if end != "whole":  # the whole region has pooling, zero padding and up-sampling too
        region = region_ending_at(graph, region, graph.op(end).index + 1)
    tiles = build_tiles(graph, region, 3)
    run = _litert(tiles, tmp_path)
    case = f"litert conv_stack to {end} N=3"
    check_tiles(graph, tiles, case, tolerance=LITERT_RELATIVE, run=run)


def test_stripes_save_and_reload_as_keras(tmp_path: Path) -> None:
    import keras

    graph = build_graph(conv_stack(23))
    (region,) = find_regions(graph)
    tiles = build_tiles(graph, region, 3)
    loaded = {}
    for part in [*(s.part for s in tiles.stripes), tiles.gather]:
        path = export_part(part, tmp_path / f"part-{part.index}.keras", "keras")
        loaded[id(part)] = keras.models.load_model(path)

    def run(part, feed):
        result = loaded[id(part)](dict(feed), training=False)
        return {k: np.asarray(v) for k, v in result.items()}

    check_tiles(graph, tiles, "keras files conv_stack N=3", run=run)


def test_litert_stripes_efficientnet_lite0(tmp_path: Path) -> None:
    graph = _lite0()
    tiles = build_tiles(graph, _end_at_height(graph, find_regions(graph)[0], 28), 2)
    run = _litert(tiles, tmp_path)
    check_tiles(graph, tiles, "litert efficientnet_lite0 N=2", tolerance=LITERT_RELATIVE, run=run)


def test_report_errors_seen() -> None:
    print({case: f"{err:.2e}" for case, err in sorted(SEEN.items())})
