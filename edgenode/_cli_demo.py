"""`edgenode demo` on the command line: a local cluster, sample photos, a timing
(argv is parsed in edgenode.cli; the cluster itself is edgenode.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgenode._cli_common import EXIT_OK, say
from edgenode._cli_status import parts_label
from edgenode._table import format_table
from edgenode.errors import EdgenodeError, UsageError

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from edgenode.model.loading import load_model
    from edgenode.model.split import split_model
    from edgenode.transport import run

    images = [Path(p) for p in args.image] if args.image else _sample_images()
    for image in images:
        if not image.is_file():
            raise UsageError(f"--image {image}: no such file")
    from edgenode.model import efficientnet_lite

    weights = args.weights or ("imagenet" if efficientnet_lite.is_named(args.model) else "none")
    workdir = Path(tempfile.mkdtemp(prefix="edgenode-demo-"))
    try:
        what = "ImageNet weights" if weights == "imagenet" else f"weights {weights}"
        if weights == "none":
            what = f"random weights, seed {args.seed}"
        say(args, f"building {args.model} ({what}) and cutting it into {args.parts} parts")
        model = load_model(args.model, weights=weights, seed=args.seed, logits=True)
        split_model(model, workdir / "parts", parts=args.parts)
        return run(_demo(args, model, workdir, images))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _sample_images() -> list[Path]:
    folder = Path(__file__).parent / "data" / "images"
    return sorted(folder.glob("*.jpg"))


async def _demo(args: argparse.Namespace, model: Any, workdir: Path, images: list[Path]) -> int:
    import asyncio
    import statistics

    from edgenode.client import (
        is_class_vector,
        label_text,
        load_inputs,
        summarize,
        top_k,
    )
    from edgenode.client.cluster import ClusterClient
    from edgenode.demo import infer_within, local_cluster, request_deadline, wait_agreed, warm_up
    from edgenode.model.manifest import load_manifest
    from edgenode.model.preprocess import preprocess_of
    from edgenode.model.profile import time_model
    from edgenode.security import new_cluster, write_private
    from edgenode.transport import Security
    from edgenode.verify import LOGITS_TOLERANCE, ReferenceSet

    manifest = load_manifest(workdir / "parts")
    family = preprocess_of(manifest.model.name, manifest.model.preprocess)
    # One photo proves nothing on its own (a wrong routing can give the right-looking
    # answer for one input): the shipped photos go through too and are compared, unshown.
    shown = len(images)
    if shown < 2:
        given = {p.resolve() for p in images}
        images = images + [p for p in _sample_images() if p.resolve() not in given]
    batches = [
        await asyncio.to_thread(load_inputs, image, manifest.model.inputs, preprocess=family)
        for image in images
    ]
    names = list(manifest.model.answer_names)
    local_s = []
    references = []
    for batch in batches:
        flat, seconds = await asyncio.to_thread(time_model, model, batch, args.requests)
        references.append(dict(zip(names, flat, strict=True)))
        local_s.append(seconds)
    # Images the model cannot tell apart would make "equal" prove nothing: refused.
    check = ReferenceSet(references, tolerance=LOGITS_TOLERANCE)

    def progress(message: str) -> None:
        say(args, message)

    # A cluster of its own: a fresh CA and member credential, TLS between all processes.
    _, credential = new_cluster("demo", days=1)
    key = workdir / "cluster.pem"
    write_private(key, credential.bundle())
    progress(f"starting {args.nodes} nodes on 127.0.0.1 (TLS, a fresh cluster key)")
    nodes_cm = local_cluster(workdir / "parts", workdir, args.nodes, say=progress, key=key)
    async with nodes_cm as nodes, ClusterClient(security=Security(credential)) as client:
        statuses = await wait_agreed(client, nodes)
        progress("the nodes agreed on a plan and loaded their parts; warming up")
        origin = nodes[0].address
        answers, warm_s = await warm_up(client, nodes, origin, batches)
        deadline_s = request_deadline(warm_s)
        progress(f"timing {args.requests} requests per image (deadline {deadline_s:.1f} s)")
        times = []
        for batch in batches[:shown]:
            for _ in range(args.requests):
                _, seconds = await infer_within(client, nodes, origin, batch, deadline_s)
                times.append(seconds)
        statuses = await wait_agreed(client, nodes)

    worst = 0.0
    wrong = []
    for i, (image, answer) in enumerate(zip(images, answers, strict=True)):
        verdict = check.check(i, answer)
        worst = max(worst, verdict.diff)
        if not verdict.ok:
            wrong.append(f"{image.name}: {verdict.detail}")
        if i >= shown:
            continue
        print(f"{'' if i == 0 else chr(10)}{image.name} through {len(nodes)} nodes:")
        for name in names:
            value = answer[name]
            if is_class_vector(value):
                for rank, (index, label, p) in enumerate(top_k(value, args.top), 1):
                    print(f"  {rank}. {label_text(label):<28} {p:.4f}  (class {index})")
            else:
                print(f"  {summarize(name, value)}")
    print("\nplan:")
    rows = []
    for st in statuses:
        rows.append([st.node_id, st.address, parts_label(st), st.plan.agreed_digest[:12]])
    print(format_table(["node", "address", "parts", "plan"], rows))
    local_ms = statistics.median(local_s[:shown]) * 1e3
    distributed_ms = statistics.median(times) * 1e3
    outputs = ", ".join(names)
    spread = f", the images' own {outputs} differ by >= {check.spread():.3g}"
    print(
        f"\nlocal whole model {local_ms:.1f} ms, distributed {distributed_ms:.1f} ms "
        f"({distributed_ms / local_ms:.2f}x, median of {len(times)}); max abs diff "
        f"vs local {worst:.3g} over {outputs} ({len(images)} images{spread})"
    )
    if wrong or worst > LOGITS_TOLERANCE:
        detail = "; ".join(wrong) or f"max abs diff {worst:.3g}"
        raise EdgenodeError(f"the distributed answer differs from the local one: {detail}")
    return EXIT_OK
