"""What the wire formats cost in accuracy and save in bytes, on the trained EfficientNet-Lite0.

    .venv/bin/python benchmarks/wire_formats.py [--variants 70] [--batch 16] [--out FILE]

Offline, in one process: the model is cut as `edgenode split` cuts it for 2 and 4 parts
(balanced) and at each of those cut points alone, plus the narrowest single cut; the parts
are chained here, and every tensor a part hands to a later part (each part on a node of its
own) goes through the codec (transport.codec: encode_frames, then FrameDecoder) in float32,
float16 or int8, one request (batch 1) at a time, as a cluster sends it. Compared with the
whole model on every sample photo plus ``--variants`` distinct crops/flips of each: top-1
agreement, the largest relative logit error (max |logit error| / max |logit| of that input),
and the bytes on the wire per hop (frames as the codec writes them, headers included).
Writes benchmarks/results/wire_formats.md.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import RESULTS, ROOT
from harness.report import machine_lines, say, table

FORMATS = ("float32", "float16", "int8")
PHOTO_DIRS = (ROOT / "edgenode" / "data" / "images", Path("/work/shared/data"))
SIDE = 224  # EfficientNet-Lite0's input
SEED = 19
PLAN_PARTS = (2, 4, 8)  # `edgenode split --parts N` (8: what a node cutting a model uses)


# -- inputs -----------------------------------------------------------------------------------


def photos() -> list[Path]:
    """Every sample photo, each once (by content) however many folders hold it."""
    seen, found = set(), []
    for folder in PHOTO_DIRS:
        for path in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                found.append(path)
    return found


def inputs(paths: Sequence[Path], variants: int) -> np.ndarray:
    """Each photo as a client sends it (TF's evaluation crop), then ``variants`` random
    crops (45-100% of the shorter side, aspect 3:4..4:3, anywhere), half of them mirrored,
    resized bicubic to 224x224: pixels 0..255 as float32, all distinct."""
    from PIL import Image, ImageOps

    from edgenode.client.inputs import decode_image

    rng = np.random.default_rng(SEED)
    arrays, seen = [], set()

    def add(pixels: np.ndarray) -> None:
        key = hashlib.sha256(pixels.tobytes()).hexdigest()
        if key not in seen:
            seen.add(key)
            arrays.append(pixels.astype(np.float32))

    for path in paths:
        add(decode_image(path, height=SIDE, width=SIDE, center_crop=True))
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        made = 0
        while made < variants:
            side = min(image.size)
            scale = rng.uniform(0.45, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = min(image.width, int(side * scale * np.sqrt(aspect)))
            h = min(image.height, int(side * scale / np.sqrt(aspect)))
            left = int(rng.integers(0, image.width - w + 1))
            top = int(rng.integers(0, image.height - h + 1))
            crop = image.crop((left, top, left + w, top + h))
            crop = crop.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
            if rng.integers(0, 2):
                crop = ImageOps.mirror(crop)
            before = len(arrays)
            add(np.asarray(crop, dtype=np.uint8))
            made += len(arrays) - before
    return np.stack(arrays)[:, None]  # (N, 1, 224, 224, 3): one request each


# -- the codec on the hops ----------------------------------------------------------------------


def travel(x: np.ndarray, fmt: str) -> tuple[np.ndarray, int]:
    """What the codec delivers of one request's tensor sent in ``fmt``, and its wire bytes."""
    from edgenode.transport.codec import FrameDecoder, RequestId, Tensor, encode_frames

    frames = list(encode_frames([Tensor(RequestId("r"), "t", x, "plan", fmt)]))  # type: ignore[arg-type]
    decoder = FrameDecoder()
    [got] = [t for f in frames for t in decoder.feed(f)]
    return np.asarray(got.array), sum(len(f) for f in frames)


@dataclass
class Config:
    """One way to cut the model: its label, cut positions and parts."""

    label: str
    cuts: tuple[int, ...]
    parts: list[Any]
    hops: list[str]  # tensors a part hands to a later part (each crosses a link)
    producer: dict[str, int]  # the part producing each of ``hops``


def configs(graph: Any, stats: Any) -> list[Config]:
    from edgenode.model.slicing import cut_graph
    from edgenode.model.split import choose_cuts

    wanted: list[tuple[str, tuple[int, ...]]] = []
    for parts in PLAN_PARTS:
        cuts = tuple(choose_cuts(graph, stats, parts=parts))
        wanted.append((f"{parts} parts (split --parts {parts}): cuts {_cuts(cuts)}", cuts))
    singles = {c: "of the 4-part plan" for c in choose_cuts(graph, stats, parts=4)}
    for c in choose_cuts(graph, stats, parts=8):
        singles.setdefault(c, "of the 8-part plan")
    for c in choose_cuts(graph, stats, parts=8, method="narrow"):
        singles.setdefault(c, "narrow, of --parts 8 --cut narrow")
    for c in sorted(singles):
        if (c,) not in [w[1] for w in wanted]:
            wanted.append((f"single cut {c} ({singles[c]})", (c,)))
    finals = set(graph.outputs)
    out = []  # each cut: a hop to another node
    for label, cuts in wanted:
        parts = cut_graph(graph, cuts)
        producer = {n: p.index for p in parts[:-1] for n in p.outputs if n not in finals}
        out.append(Config(label, cuts, parts, list(producer), producer))
    return out


def _cuts(cuts: Sequence[int]) -> str:
    return ",".join(map(str, cuts))


def chain(config: Config, batch: np.ndarray, fmt: str, finals: Sequence[str]) -> np.ndarray:
    """The parts chained on ``batch`` (N requests), every hop through the codec per request."""
    values: dict[str, np.ndarray] = {"image": batch}
    for part in config.parts:
        feed = {n: values[n] for n in part.inputs}
        result = part.model(feed, training=False)
        for name, tensor in result.items():
            array = np.asarray(tensor)
            if name in config.hops:  # float32 too: the codec must give it back exact
                array = np.concatenate(
                    [travel(array[i : i + 1], fmt)[0] for i in range(len(array))]
                )
            values[name] = array
    [final] = finals
    return values[final]


# -- measuring ----------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from edgenode.model.cost import graph_stats
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import load_model

    started = time.time()
    paths = photos()
    say(f"photos: {', '.join(p.name for p in paths)}")
    samples = inputs(paths, args.variants)
    say(f"{len(samples)} distinct inputs: {len(paths)} photos and their variants")
    model = load_model("EfficientNetLite0", weights="imagenet")
    graph = build_graph(model)
    stats = graph_stats(graph)
    finals = graph.outputs
    if graph.inputs != ("image",) or len(finals) != 1:
        raise SystemExit(f"expected one input 'image' and one output, got {graph.inputs} {finals}")
    batches = [
        np.concatenate(samples[i : i + args.batch]) for i in range(0, len(samples), args.batch)
    ]
    say("whole model")
    whole = np.concatenate([np.asarray(model(b, training=False)) for b in batches])
    top2 = np.sort(whole, axis=-1)[:, -2:]
    gaps = (top2[:, 1] - top2[:, 0]) / np.abs(whole).max(axis=-1)
    results = []
    for config in configs(graph, stats):
        say(config.label)
        row: dict[str, Any] = {"label": config.label, "hops": []}
        for name in config.hops:
            shape = list(graph.tensors[name].shape)
            row["hops"].append(
                {
                    "name": name,
                    "after_part": config.producer[name],
                    "shape": shape,
                    "bytes": {},
                    "codec_ms": {},
                }
            )
        for fmt in FORMATS:
            got = np.concatenate([chain(config, b, fmt, finals) for b in batches])
            same = got.argmax(-1) == whole.argmax(-1)
            top1 = float(np.mean(same))
            rel = np.abs(got - whole).max(axis=-1) / np.abs(whole).max(axis=-1)
            row[fmt] = {
                "top1": top1,
                "agree": int(np.sum(same)),
                # where top-1 moved: how close the whole model's top two were (relative)
                "flips": [float(gaps[i]) for i in np.flatnonzero(~same)],
                "max_rel": float(rel.max()),
                "mean_rel": float(rel.mean()),
                "max_abs": float(np.abs(got - whole).max()),
            }
            say(f"  {fmt}: top-1 {top1:.2%}, max relative logit error {rel.max():.2e}")
        # wire bytes and codec time per hop, on the first input's tensors
        values: dict[str, np.ndarray] = {"image": np.ascontiguousarray(samples[0])}
        for part in config.parts:
            result = part.model({n: values[n] for n in part.inputs}, training=False)
            values.update({n: np.asarray(v) for n, v in result.items()})
        for hop in row["hops"]:
            x = values[hop["name"]]
            for fmt in FORMATS:
                _, nbytes = travel(x, fmt)
                runs = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    travel(x, fmt)
                    runs.append(time.perf_counter() - t0)
                hop["bytes"][fmt] = nbytes
                hop["codec_ms"][fmt] = float(np.median(runs)) * 1e3
        results.append(row)
    return {
        "inputs": len(samples),
        "photos": [p.name for p in paths],
        "rows": results,
        "seconds": time.time() - started,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "classes_whole": len(set(whole.argmax(-1).tolist())),
        "median_gap": float(np.median(gaps)),
    }


# -- report -------------------------------------------------------------------------------------


def kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def report(found: dict[str, Any], command: str) -> list[str]:
    n = found["inputs"]
    accuracy = []
    for row in found["rows"]:
        accuracy.append(
            [
                row["label"],
                *(f"{row[f]['agree']}/{n} ({row[f]['top1']:.1%})" for f in FORMATS),
                *(f"{row[f]['max_rel']:.2e}" for f in FORMATS),
            ]
        )
    flips = [
        f"{row['label']}, {f}: top-2 gap {gap:.2e}"
        for row in found["rows"]
        for f in FORMATS
        for gap in row[f]["flips"]
    ]
    wire = []
    for row in found["rows"]:
        after = sorted({h["after_part"] for h in row["hops"]})
        for k in after:  # one hop: what part k sends on, every tensor in one send
            tensors = [h for h in row["hops"] if h["after_part"] == k]
            b = {f: sum(h["bytes"][f] for h in tensors) for f in FORMATS}
            wire.append(
                [
                    row["label"],
                    f"{k} -> {k + 1}",
                    " + ".join(f"`{h['name']}` {tuple(h['shape'][1:])}" for h in tensors),
                    *(kb(b[f]) for f in FORMATS),
                    f"{b['float32'] / b['float16']:.2f}x",
                    f"{b['float32'] / b['int8']:.2f}x",
                    *(f"{sum(h['codec_ms'][f] for h in tensors):.2f}" for f in FORMATS),
                ]
            )
    lines = [
        "# Wire formats: accuracy and bytes on EfficientNet-Lite0 (trained)",
        "",
        f"`{command}` ({found['seconds']:.0f} s, {found['when']})",
        "",
        *machine_lines(),
        f"- inputs: {n} distinct (the sample photos {', '.join(found['photos'])} with TF's "
        "evaluation crop, plus random crops of 45-100% of the shorter side, aspect 3:4..4:3, "
        f"half mirrored); the whole model gives {found['classes_whole']} distinct top-1 classes",
        "- each part on a node of its own: every tensor a part hands to a later part goes "
        "through the codec (encode_frames, FrameDecoder), one request at a time; the model's "
        "input and its logits travel exact",
        "- relative logit error: max over inputs of max |logit - whole model's logit| / "
        "max |whole model's logit|",
        "",
        "## Top-1 agreement with the float32 whole model, and max relative logit error",
        "",
        *table(
            [
                "cut",
                *(f"top-1 {f}" for f in FORMATS),
                *(f"max rel. err. {f}" for f in FORMATS),
            ],
            accuracy,
        ),
        "",
        "Where top-1 moved, how close the whole model's top two logits were (difference / "
        f"max |logit|; the median over all inputs is {found['median_gap']:.2e}): "
        + ("; ".join(flips) if flips else "nowhere"),
        "",
        "## Bytes per hop (one request, frames as sent) and codec time (encode + decode)",
        "",
        *table(
            [
                "cut",
                "hop (parts)",
                "tensors (shape)",
                *(f"KiB {f}" for f in FORMATS),
                "float16 saves",
                "int8 saves",
                *(f"ms {f}" for f in FORMATS),
            ],
            wire,
        ),
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=70, help="random crops per photo")
    parser.add_argument("--batch", type=int, default=16, help="requests run together")
    parser.add_argument("--out", type=Path, default=RESULTS / "wire_formats.md")
    args = parser.parse_args()
    command = "benchmarks/wire_formats.py" + (
        f" --variants {args.variants}" if args.variants != 70 else ""
    )
    found = measure(args)
    lines = report(found, command)
    print("\n".join(lines))
    args.out.write_text("\n".join(lines))
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
