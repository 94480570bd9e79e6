"""`edgenode demo` as a newcomer runs it, and what it says when a node is slow."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model.test_efficientnet_lite import EXPECTED

pytestmark = [pytest.mark.tf, pytest.mark.slow]

_DIFF = re.compile(r"max abs diff vs local (\S+) over (\S+) \((\d+) images")


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgenode.cli", "demo", "--nodes", "2", "--parts", "4", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _top_classes(stdout: str) -> dict[str, list[str]]:
    """Image name -> its printed classes, best first."""
    found: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.endswith(" nodes:"):
            current = found.setdefault(line.split(" through ")[0], [])
        elif current is not None and (m := re.match(r"\s+\d+\. (.+?)\s{2,}[\d.]+\s+\(class", line)):
            current.append(m.group(1).replace(" ", "_"))
        elif not line.strip():
            current = None
    return found


def test_the_default_demo_classifies_the_three_photos() -> None:
    out = _demo("--requests", "2")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    classes = _top_classes(out.stdout)
    assert set(classes) == set(EXPECTED)
    assert all(len(c) == 3 for c in classes.values())
    assert classes["cat.jpg"][0] in EXPECTED["cat.jpg"]
    for name, wanted in EXPECTED.items():
        assert wanted & set(classes[name]), f"{name}: {classes[name]}"
    assert len({c[0] for c in classes.values()}) == 3
    diff, over, images = _DIFF.search(out.stdout).groups()
    assert over == "logits" and images == "3" and float(diff) <= 1e-4


def test_random_weights_and_one_image_are_still_a_check_that_can_fail() -> None:
    cat = Path(__file__).parents[1] / "edgenode" / "data" / "images" / "cat.jpg"
    out = _demo("--model", "MobileNetV3Small", "--image", str(cat), "--requests", "1")
    assert out.returncode == 0, out.stderr
    assert set(_top_classes(out.stdout)) == {"cat.jpg"}  # only the image asked for
    # built with classifier_activation=None: "predictions" holds logits, not softmax; the
    # other sample photos went through too, so the references differ between inputs
    diff, over, images = _DIFF.search(out.stdout).groups()
    assert over == "predictions" and float(diff) <= 1e-4 and images == "3"


def test_a_missing_image_is_one_line(tmp_path: Path) -> None:
    out = _demo("--image", str(tmp_path / "absent.jpg"))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f"edgenode: error: --image {tmp_path / 'absent.jpg'}: no such file"
    ]


async def test_a_request_that_misses_its_deadline_names_the_stuck_node(tmp_path: Path) -> None:
    """Freeze the node that holds the last parts: the error says it does not answer.

    The deadline (0.3 s) is shorter than the time the other node needs to declare the
    frozen one dead (two unanswered asks, 0.5 s apart) and take its parts over."""
    from edgenode.client.cluster import ClusterClient
    from edgenode.demo import infer_within, local_cluster, wait_agreed
    from edgenode.model.split import split_model
    from tests.model import models

    model = models.build("multi_io")
    split_model(model, tmp_path / "parts", cuts=[2, 4, 6])
    batch = models.sample_inputs(model, batch=1)
    async with (
        local_cluster(tmp_path / "parts", tmp_path, 2, say=lambda _: None, key=None) as nodes,
        ClusterClient() as client,
    ):
        statuses = await wait_agreed(client, nodes)
        owners = [s.node_id for s in statuses if s.parts]
        origin = next(n for n in nodes if n.name != owners[-1])
        await infer_within(client, nodes, origin.address, batch, 60.0)
        stuck = next(n for n in nodes if n.name == owners[-1])
        stuck.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(Exception) as caught:
                await infer_within(client, nodes, origin.address, batch, 0.3)
        finally:
            stuck.process.send_signal(signal.SIGCONT)
    message = str(caught.value)
    assert f"not answering: {stuck.name}" in message, message
    assert "slowest:" in message
