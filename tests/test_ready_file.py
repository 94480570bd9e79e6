"""`edgenode run --ready-file`: written atomically once the node serves, removed when it stops,
and a path that cannot be written refused in one line before anything starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from edgenode.node import write_ready_file
from tests.nodes import NodeProcess, statuses

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.tf
@pytest.mark.slow
def test_a_serving_node_writes_its_ready_file_and_removes_it_on_sigterm(tmp_path: Path) -> None:
    from edgenode.model.split import split_model
    from tests.model import models

    split_model(models.build("fork_join"), tmp_path / "split", parts=2)
    config = tmp_path / "node.toml"
    config.write_text(f'[cluster]\nname = "test-{uuid.uuid4().hex[:12]}"\n')
    node = NodeProcess(
        "ready", tmp_path,
        "--config", str(config), "--listen", "127.0.0.1:0", "--model", str(tmp_path / "split"),
        "--interfaces", "127.0.0.1", "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    try:
        address = node.wait_serving()
        ready = json.loads(node.ready_path.read_text())
        assert ready == {"node_id": "ready", "address": address, "pid": node.process.pid}
        # the address the log line names, and a node answers there under that id
        logged = re.search(r"node ready serving on (\S+:\d+)", node.log())
        assert logged is not None and logged.group(1) == address, node.log()
        assert set(statuses([address])) == {"ready"}
    finally:
        code = node.stop()
    assert code == 0, node.log()
    assert not node.ready_path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_the_ready_file_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written beside its target, then renamed over it: at every moment the path holds the
    old content or the new, whole."""
    path = tmp_path / "ready.json"
    path.write_text('{"old": true}')
    replaced = []
    real_replace = os.replace

    def replace(src: str, dst: str | Path) -> None:
        assert Path(src).parent == Path(dst).parent  # one file system: the rename is atomic
        assert path.read_text() == '{"old": true}'  # the target is untouched until then
        replaced.append(json.loads(Path(src).read_text()))  # the new content is complete
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_ready_file(path, node_id="a", address="127.0.0.1:4000")
    assert replaced == [{"node_id": "a", "address": "127.0.0.1:4000", "pid": os.getpid()}]
    assert json.loads(path.read_text()) == replaced[0]
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]


def test_a_reader_never_sees_a_partial_ready_file(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    write_ready_file(path, node_id="a", address="127.0.0.1:1")
    done = threading.Event()
    seen: list[str] = []

    def read() -> None:
        while not done.is_set():
            seen.append(path.read_text())  # never missing: replaced, not removed and rewritten

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for port in range(2, 300):
            write_ready_file(path, node_id="a", address=f"127.0.0.1:{port}")
    finally:
        done.set()
        reader.join()
    assert seen
    for text in seen:
        assert json.loads(text)["node_id"] == "a"


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("missing/ready.json", "--ready-file: directory {tmp}/missing does not exist"),
        (".", "--ready-file: {tmp} is a directory"),
    ],
)
def test_an_unwritable_ready_file_is_one_line_before_anything_starts(
    tmp_path: Path, where: str, error: str
) -> None:
    target = tmp_path if where == "." else tmp_path / where
    script = (
        "import sys\n"
        "from edgenode.cli import _command, build_parser\n"
        f"argv = ['run', '--insecure', '--ready-file', {str(target)!r}]\n"
        "args = build_parser().parse_args(argv)\n"
        "code = _command(args)\n"
        "print(code, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert out.stderr.splitlines() == [f"edgenode: error: {error.format(tmp=tmp_path)}"]
