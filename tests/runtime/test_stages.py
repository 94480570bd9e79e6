"""A node's stage and the recipients of its outputs, on a fork/join manifest."""

from __future__ import annotations

from edgenode.model.manifest import Manifest
from edgenode.planning import Assignment, ClusterPlan
from edgenode.runtime.stages import consumers_of, recipients, role_of


def _tensor(name: str, final: bool | None = None) -> dict:
    t = {"name": name, "shape": [None, 8], "dtype": "float32"}
    return t if final is None else {**t, "final": final}


def fork_join() -> Manifest:
    """input -> part 0 -> a, b; a -> part 1 -> c; b, c -> part 2 -> out (final)."""
    parts = [
        (["input"], [("a", False), ("b", False)]),
        (["a"], [("c", False)]),
        (["b", "c"], [("out", True)]),
    ]
    return Manifest.from_json(
        {
            "format": "edgenode-manifest/1",
            "model": {
                "name": "fork-join",
                "sha256": "cd" * 32,
                "inputs": [_tensor("input")],
                "outputs": ["out"],
            },
            "parts": [
                {
                    "index": i,
                    "file": f"part-{i}.keras",
                    "sha256": f"{i:064x}",
                    "inputs": [_tensor(n) for n in ins],
                    "outputs": [_tensor(n, f) for n, f in outs],
                    "flops": 10,
                    "param_bytes": 10,
                }
                for i, (ins, outs) in enumerate(parts)
            ],
        }
    )


def plan(manifest: Manifest, stages: list[tuple[str, int, int, int]]) -> ClusterPlan:
    return ClusterPlan(
        manifest_digest=manifest.identity,
        members=tuple(sorted({s[0] for s in stages})),
        assignments=tuple(
            Assignment(node_id=n, start=a, stop=b, replica=r) for n, a, b, r in stages
        ),
        idle=(),
        bottleneck_s=0.0,
        latency_s=0.0,
    )


def test_stages_read_from_outside_and_send_what_others_read() -> None:
    m = fork_join()
    consumers = consumers_of(m)
    assert consumers == {"input": (0,), "a": (1,), "b": (2,), "c": (2,)}
    p = plan(m, [("x", 0, 2, 0), ("y", 2, 3, 0)])
    x, y = role_of(p, "x", m, consumers), role_of(p, "y", m, consumers)
    assert (x.parts, x.needs, x.sends, x.replica) == (range(0, 2), {"input"}, ("b", "c"), 0)
    assert (y.parts, y.needs, y.sends) == (range(2, 3), {"b", "c"}, ("out",))
    idle = role_of(p, "z", m, consumers)
    assert len(idle.parts) == 0 and idle.needs == frozenset() and idle.sends == ()


def test_recipients_are_the_readers_in_the_replica_and_the_origin_for_finals() -> None:
    m = fork_join()
    consumers = consumers_of(m)
    p = plan(m, [("x", 0, 1, 0), ("y", 1, 3, 0), ("x2", 0, 1, 1), ("y2", 1, 3, 1)])

    def to(name: str, replica: int, producer: range) -> list[str]:
        return recipients(
            p, replica, name, consumers=consumers, finals={"out"}, origin="o",
            producer_parts=producer,
        )  # fmt: skip

    assert to("input", 0, range(0)) == ["x"]
    assert to("a", 0, range(0, 1)) == ["y"] and to("b", 1, range(0, 1)) == ["y2"]
    assert to("c", 0, range(1, 3)) == []  # read only inside the producing stage
    assert to("out", 1, range(1, 3)) == ["o"]
    assert role_of(p, "y2", m, consumers).replica == 1


def _rows(name: str, height: int) -> dict:
    return {"name": name, "shape": [None, height, 4, 2], "dtype": "float32"}


def tiled(*, before: bool = True) -> Manifest:
    """[part 0: x -> image], stripes reading rows 0-6 and 4-10 of image, a gather."""
    parts = [(["x"], [("image", False)])] if before else []
    first = len(parts)
    parts += [
        (["image.rows0_6"], [("feat.stripe0", False)]),
        (["image.rows4_10"], [("feat.stripe1", False)]),
        (["feat.stripe0", "feat.stripe1"], [("out", True)]),
    ]
    heights = {"image.rows0_6": 6, "image.rows4_10": 6, "feat.stripe0": 3, "feat.stripe1": 2}
    return Manifest.from_json(
        {
            "format": "edgenode-manifest/1",
            "model": {
                "name": "tiled",
                "sha256": "cd" * 32,
                "inputs": [_rows("x" if before else "image", 10)],
                "outputs": ["out"],
            },
            "parts": [
                {
                    "index": i,
                    "file": f"part-{i}.keras",
                    "sha256": f"{i:064x}",
                    "inputs": [_rows(n, heights.get(n, 10)) for n in ins],
                    "outputs": [{**_rows(n, heights.get(n, 10)), "final": f} for n, f in outs],
                    "flops": 10,
                    "param_bytes": 10,
                }
                for i, (ins, outs) in enumerate(parts)
            ],
            "tiles": {
                "slices": [
                    {"name": "image.rows0_6", "source": "image", "rows": [0, 6]},
                    {"name": "image.rows4_10", "source": "image", "rows": [4, 10]},
                ],
                "stripes": [first, first + 1],
                "gather": first + 2,
            },
        }
    )


def test_a_tiled_node_sends_rows_before_its_stripe_and_starts_a_stripe_before_the_gather() -> None:
    manifest = tiled()
    consumers = consumers_of(manifest)
    p = plan(manifest, [("a", 0, 2, 0), ("b", 2, 4, 0)])
    a = role_of(p, "a", manifest, consumers)
    # a runs part 0, sends b its rows (not the whole image), then runs stripe 0
    assert [(s.parts, s.needs, s.sends) for s in a.segments] == [
        (range(0, 1), {"x"}, ("image.rows4_10",)),
        (range(1, 2), frozenset(), ("feat.stripe0",)),
    ]
    b = role_of(p, "b", manifest, consumers)
    # b runs stripe 1 on its rows alone, then waits for stripe 0 to gather
    assert [(s.parts, s.needs, s.sends) for s in b.segments] == [
        (range(2, 3), {"image.rows4_10"}, ()),
        (range(3, 4), {"feat.stripe0"}, ("out",)),
    ]
    assert b.needs == {"image.rows4_10", "feat.stripe0"}
    # the origin (a) gets the answer; nobody gets image itself
    assert recipients(
        p, 0, "image.rows4_10", consumers=consumers, finals={"out"}, origin="a",
        producer_parts=range(0, 2),
    ) == ["b"]  # fmt: skip
    assert "image" not in a.sends


def test_a_tiled_model_on_one_node_runs_in_one_go() -> None:
    manifest = tiled(before=False)
    consumers = consumers_of(manifest)
    alone = role_of(plan(manifest, [("a", 0, 3, 0)]), "a", manifest, consumers)
    assert [(s.parts, s.needs, s.sends) for s in alone.segments] == [
        (range(0, 3), {"image.rows0_6", "image.rows4_10"}, ("out",))
    ]


def test_a_pipeline_stage_stays_one_segment() -> None:
    manifest = fork_join()
    p = plan(manifest, [("a", 0, 2, 0), ("b", 2, 3, 0)])
    a = role_of(p, "a", manifest, consumers_of(manifest))
    assert len(a.segments) == 1 and a.segments[0].parts == range(0, 2)
