"""`edgenode infer` as a user meets it (issue 17): unique --save-outputs keys, a broken file
among good ones, the summary's percentiles, progress in a log file and on a terminal,
class labels, and one clear line when nothing listens at --peer.

The CLI runs as a real subprocess; the cluster tests run real node processes serving a
small classifier (8x8 RGB in, 1000 ImageNet probabilities and an embedding out), and
check every answer against Keras' own for its input (tests/reference.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgenode._stats import percentile
from edgenode.errors import InputError, PeerUnavailable
from edgenode.transport import ControlClient
from edgenode.transport._status import failure_reason
from tests.nodes import cli, running_cluster

IMAGES = Path(__file__).parents[1] / "edgenode" / "data" / "images"
OUTPUTS = ("embedding", "probs")  # the model's dict keys
TOLERANCE = 1e-5  # node processes with their own thread settings (NODE_TOLERANCE)
_PROGRESS = re.compile(r"edgenode: \d+/\d+ done.*")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("edgenode: error: ")]


# -- one clear line when a node cannot be reached (item 8) -------------------------------


def test_infer_and_status_at_a_port_nobody_listens_at_say_connection_refused() -> None:
    port = _closed_port()
    out = cli("infer", str(IMAGES / "cat.jpg"), "--peer", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stderr == f"edgenode: error: 127.0.0.1:{port}: connection refused\n"
    out = cli("status", "--peer", f"127.0.0.1:{port}")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith("edgenode: error: ")
    assert line.endswith(f"127.0.0.1:{port}: connection refused")


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        # the texts gRPC 1.85 gave here, for a port nobody listens at (also IPv6), an
        # unknown host, a listener that says nothing, an HTTP/1 server, an HTTP/2 one
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            "connection refused",
        ),
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B::1%5D:1: "
            "Failed to connect to remote host: Connection refused",
            "connection refused",
        ),
        (
            "UNAVAILABLE",
            "errors resolving nosuchhost.invalid:5000: [field:hostname lookup error:address "
            "lookup failed for nosuchhost.invalid:5000: Domain name not found]",
            "unknown host name",
        ),
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:4: "
            "connection attempt timed out before receiving SETTINGS frame",
            "no answer within 2 s",
        ),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", "no answer within 2 s"),
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: "
            "Failed parsing HTTP/2 (Expected SETTINGS frame as the first frame, got frame "
            "type 79)",
            "not a gRPC server",
        ),
        ("UNIMPLEMENTED", "Received http2 header with status: 404", "not a gRPC server"),
        ("UNAVAILABLE", "failed to connect ...: Socket closed", "connection closed"),
        # a node's own words, and what gRPC says of a call cut short: kept, on one line
        ("UNAVAILABLE", "node a is stopping", "node a is stopping"),
        ("UNAVAILABLE", "Stream removed\n  (more)", "Stream removed (more)"),
        ("INTERNAL", None, "INTERNAL"),
    ],
)
def test_grpc_texts_become_a_few_words(code: str, details: str | None, expected: str) -> None:
    assert failure_reason(grpc.StatusCode[code], details, timeout_s=2.0) == expected


def test_a_closed_connection_hints_at_tls_only_to_an_insecure_caller() -> None:
    closed = (grpc.StatusCode.UNAVAILABLE, "last error: UNAVAILABLE: ipv4:x: Socket closed")
    assert failure_reason(*closed) == "connection closed"
    assert (
        failure_reason(*closed, insecure=True) == "connection closed (a node with TLS? pass --key)"
    )


@pytest.fixture
async def listeners() -> AsyncIterator[dict[str, int]]:
    """Ports of a listener that never says a word and of an HTTP/1 server."""
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    servers = [
        await asyncio.start_server(silent, "127.0.0.1", 0),
        await asyncio.start_server(http, "127.0.0.1", 0),
    ]
    try:
        yield {
            name: s.sockets[0].getsockname()[1]
            for name, s in zip(("silent", "http"), servers, strict=True)
        }
    finally:
        for server in servers:
            server.close()
        for writer in writers:
            writer.close()
        for server in servers:
            await server.wait_closed()


async def test_control_calls_say_why_a_node_did_not_answer(listeners: dict[str, int]) -> None:
    cases = {
        f"127.0.0.1:{_closed_port()}": "connection refused",
        f"127.0.0.1:{listeners['silent']}": "no answer within 0.5 s",
        f"127.0.0.1:{listeners['http']}": "not a gRPC server",
    }
    async with ControlClient(timeout_s=0.5) as client:
        for address, reason in cases.items():
            with pytest.raises(PeerUnavailable) as caught:
                await client.status(address)
            assert str(caught.value) == f"{address}: {reason}"


# -- checked before anything is sent -----------------------------------------------------


def test_a_file_given_twice_with_save_outputs_is_refused_before_sending(tmp_path: Path) -> None:
    image = tmp_path / "cat.jpg"
    shutil.copy(IMAGES / "cat.jpg", image)
    port = _closed_port()  # nothing is asked: the error is about the files
    out = cli("infer", str(image), str(tmp_path), "--peer", f"127.0.0.1:{port}",
              "--save-outputs", str(tmp_path / "y.npz"))  # fmt: skip
    assert out.returncode == 2
    assert _errors(out.stderr) == [
        f"edgenode: error: {image} is an input twice: --save-outputs keeps one answer per "
        "input file, give each file once"
    ]
    out = cli("infer", str(image), "--peer", f"127.0.0.1:{port}",
              "--save-outputs", str(tmp_path / "no" / "y.npz"))  # fmt: skip
    assert out.returncode == 2 and "cannot write the outputs (no folder " in out.stderr


def test_help_documents_keys_failures_labels_and_progress() -> None:
    out = cli("infer", "--help")
    text = " ".join(out.stdout.split())
    assert "a/cat.jpg/probs and b/cat.jpg/probs for a/cat.jpg b/cat.jpg" in text
    assert "each file may be given only once" in text
    assert "A batch answers every input it can" in text and "exit status is then 1" in text
    assert "labels are the model's own in --json (golden_retriever)" in text
    assert "spaces for underscores in text (golden retriever)" in text
    assert "one line updated in place on a terminal, else a line per tenth" in text
    assert "--progress draws a bar with the rate and the time left" in text


# -- against a real cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import keras

    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model

    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="scale")(image)  # pixels, as images give them
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # scaled so that both outputs move with the input well past the tolerance
    embedding = keras.layers.Dense(6, activation="tanh", name="embed")(x * 20.0)
    logits = keras.layers.Dense(1000, name="classes")(embedding * 30.0)
    probs = keras.layers.Softmax(name="softmax")(logits)
    model = keras.Model(image, {"embedding": embedding, "probs": probs}, name="tiny_classifier")
    directory = tmp_path_factory.mktemp("classifier")
    manifest = split_model(model, directory, parts=3).manifest
    return {"model": model, "graph": build_graph(model), "manifest": manifest, "dir": directory}


@pytest.fixture(scope="module")
def peer(classifier: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a node of a three-node cluster serving the classifier (these tests
    only send requests, so the cluster is started once)."""
    with running_cluster(classifier["dir"], tmp_path_factory.mktemp("nodes")) as (nodes, found):
        assert len([st for st in found.values() if st["parts"]]) >= 2
        yield nodes[1].address


def _npz(path: Path, seed: int) -> dict[str, np.ndarray]:
    """An input file for the classifier; its inputs."""
    rng = np.random.default_rng(seed)
    # a colour of its own per file: noise alone averages out in the pooling
    pixels = rng.uniform(0, 255, (1, 1, 1, 3)) * rng.uniform(0.5, 1.0, (1, 8, 8, 3))
    inputs = {"image": pixels.astype(np.float32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **inputs)
    return inputs


def _references(classifier: dict[str, Any], batches: list[dict[str, np.ndarray]]) -> Any:
    from tests.reference import reference_set

    return reference_set(
        classifier["graph"], batches, tolerance=TOLERANCE, manifest=classifier["manifest"]
    )


@pytest.mark.tf
@pytest.mark.slow
def test_inputs_with_one_file_name_keep_their_own_saved_outputs(
    classifier: dict[str, Any], peer: str, tmp_path: Path
) -> None:
    from tests.reference import assert_answer

    names = ["a/x.npz", "b/x.npz", "b/deeper/x.npz"]
    batches = [_npz(tmp_path / name, seed) for seed, name in enumerate(names)]
    saved = tmp_path / "y.npz"
    out = cli("infer", *(str(tmp_path / n) for n in names), "--peer", peer,
              "--save-outputs", str(saved))  # fmt: skip
    assert out.returncode == 0, out.stderr
    refs = _references(classifier, batches)
    with np.load(saved) as got:
        assert sorted(got.files) == sorted(f"{n}/{o}" for n in names for o in OUTPUTS)
        for i, name in enumerate(names):
            assert_answer(refs, i, {o: got[f"{name}/{o}"] for o in OUTPUTS})


@pytest.mark.tf
@pytest.mark.slow
def test_a_broken_file_is_reported_and_every_good_input_is_answered(
    classifier: dict[str, Any], peer: str, tmp_path: Path
) -> None:
    from edgenode.client import load_inputs
    from tests.reference import assert_answer

    good = tmp_path / "good.jpg"
    shutil.copy(IMAGES / "cat.jpg", good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    batches = [
        load_inputs(good, classifier["manifest"].model.inputs, preprocess=None),
        _npz(tmp_path / "x.npz", 7),
    ]
    refs = _references(classifier, batches)
    files = [str(good), str(broken), str(tmp_path / "x.npz")]
    with pytest.raises(InputError) as caught:  # what it says of that file on its own
        load_inputs(broken, classifier["manifest"].model.inputs, preprocess=None)
    reason = str(caught.value)
    assert reason.startswith(f"{broken}: ")

    out = cli("infer", *files, "--peer", peer)  # the text report
    assert out.returncode == 1
    assert _errors(out.stderr) == [f"edgenode: error: {reason}"]
    assert f"{good}  (" in out.stdout and f"{tmp_path / 'x.npz'}  (" in out.stdout
    assert "2 of 3 inputs answered in " in out.stdout
    assert out.stdout.rstrip().endswith("; 1 failed (errors on stderr)")

    saved = tmp_path / "y.npz"
    out = cli("infer", *files, "--peer", peer, "--json", "--save-outputs", str(saved))
    assert out.returncode == 1
    assert _errors(out.stderr) == [f"edgenode: error: {reason}"]
    report = json.loads(out.stdout)
    assert [r["file"] for r in report["results"]] == files
    assert report["results"][1] == {"file": str(broken), "error": reason}
    assert (report["summary"]["images"], report["summary"]["failed"]) == (2, 1)
    with np.load(saved) as got:
        assert sorted(got.files) == sorted(
            f"{n}/{o}" for n in ("good.jpg", "x.npz") for o in OUTPUTS
        )
        for i, (entry, name) in enumerate(
            zip(report["results"][::2], ("good.jpg", "x.npz"), strict=True)
        ):
            answer = {o: got[f"{name}/{o}"] for o in OUTPUTS}
            assert_answer(refs, i, answer)
            assert entry["outputs"]["embedding"] == answer["embedding"].tolist()


@pytest.mark.tf
@pytest.mark.slow
def test_the_summary_percentiles_are_those_of_the_request_times(peer: str, tmp_path: Path) -> None:
    files = [str(tmp_path / f"x{i}.npz") for i in range(3)]
    for i, f in enumerate(files):
        _npz(Path(f), i)
    out = cli("infer", *files, "--peer", peer, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    seconds = [r["seconds"] for r in report["results"]]
    summary = report["summary"]
    # numpy as an independent reference of the definition; three requests: the old p95
    # (a nearest rank cut one too low) was the median
    assert summary["p50_s"] == pytest.approx(float(np.percentile(seconds, 50)), rel=1e-12)
    assert summary["p95_s"] == pytest.approx(float(np.percentile(seconds, 95)), rel=1e-12)
    assert summary["p95_s"] == percentile(seconds, 0.95)
    assert summary["p50_s"] <= summary["p95_s"] <= max(seconds)


@pytest.mark.tf
@pytest.mark.slow
def test_progress_in_a_log_is_whole_lines_per_tenth(peer: str, tmp_path: Path) -> None:
    for i in range(25):
        _npz(tmp_path / "in" / f"x{i:02d}.npz", i)
    log = tmp_path / "infer.log"
    with log.open("w") as handle:  # a file, as `edgenode infer ... 2>infer.log` gives it
        done = subprocess.run(
            [sys.executable, "-m", "edgenode.cli", "infer", str(tmp_path / "in"), "--peer",
             peer, "--insecure"],
            stdout=subprocess.DEVNULL, stderr=handle, timeout=120,
        )  # fmt: skip
    text = log.read_bytes().decode()  # read_text would turn "\r" into "\n"
    assert done.returncode == 0, text
    assert "\r" not in text
    # 25 inputs: a line every 2 and one for the last
    expected = [f"edgenode: {k}/25 done" for k in (*range(2, 25, 2), 25)]
    assert [line for line in text.splitlines() if _PROGRESS.fullmatch(line)] == expected


def _on_a_terminal(*args: str, deadline_s: float = 120.0, columns: int = 0) -> tuple[int, str]:
    """Run `edgenode ARGS --insecure` with stderr on a pseudo-terminal (``columns`` wide,
    else of size 0x0, unknown); its exit status and what it wrote there (byte for byte: no
    newline translation)."""
    import fcntl
    import pty
    import struct

    main, side = pty.openpty()
    if columns:
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    attrs = termios.tcgetattr(side)
    attrs[1] &= ~termios.OPOST  # as written: "\n" stays "\n"
    termios.tcsetattr(side, termios.TCSANOW, attrs)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgenode.cli", *args, "--insecure"],
            stdout=subprocess.DEVNULL,
            stderr=side,
        )
    finally:
        os.close(side)
    chunks = []
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([main], [], [], end - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return process.wait(max(1.0, end - time.monotonic())), b"".join(chunks).decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)


@pytest.mark.tf
@pytest.mark.slow
def test_progress_on_a_terminal_is_one_line_updated_in_place(peer: str, tmp_path: Path) -> None:
    files = [str(tmp_path / f"x{i}.npz") for i in range(3)]
    for i, f in enumerate(files):
        _npz(Path(f), i)
    code, text = _on_a_terminal("infer", *files, "--peer", peer)
    assert code == 0, text
    assert text == "".join(f"\redgenode: {k}/3 done" for k in (1, 2, 3)) + "\n"


@pytest.mark.tf
@pytest.mark.slow
def test_labels_are_the_models_in_json_and_read_with_spaces_in_text(
    peer: str, tmp_path: Path
) -> None:
    from edgenode.client import imagenet_labels

    path = tmp_path / "x.npz"
    _npz(path, 11)
    shown = cli("infer", str(path), "--peer", peer, "--top", "1000")
    data = cli("infer", str(path), "--peer", peer, "--top", "1000", "--json")
    assert shown.returncode == 0 and data.returncode == 0, shown.stderr + data.stderr
    in_json = {
        c["class"]: c["label"] for c in json.loads(data.stdout)["results"][0]["outputs"]["probs"]
    }
    rows = re.findall(r"^  \d+\. (.+?) +\d\.\d{4}  \(class (\d+)\)$", shown.stdout, re.M)
    in_text = {int(index): label for label, index in rows}
    labels = imagenet_labels()
    assert sorted(in_json) == sorted(in_text) == list(range(1000))
    assert sum("_" in label for label in labels) > 400  # the rule has work to do
    for index in range(1000):
        assert in_json[index] == labels[index]  # verbatim
        assert in_text[index] == labels[index].replace("_", " ")


# -- --progress: a bar with the rate and the time left (issue 21, item 5) ------------------


_BAR = (
    r"edgenode: +(\d+)%\|[ ▏▎▍▌▋▊▉█]*\| (\d+)/{n} \[\d\d:\d\d<(\d\d:\d\d|\?), +([\d.?]+)input/s\]"
)


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("columns", [72, 0])  # 0: a terminal that does not say its size
def test_progress_bar_on_a_terminal_shows_the_rate_and_time_left(
    peer: str, tmp_path: Path, columns: int
) -> None:
    for i in range(6):
        _npz(tmp_path / "in" / f"x{i}.npz", i)
    code, text = _on_a_terminal(
        "infer", str(tmp_path / "in"), "--peer", peer, "--progress", columns=columns
    )
    assert code == 0, text
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1, text
    frames = [re.fullmatch(_BAR.format(n=6), f) for f in text[1:-1].split("\r")]
    assert all(frames), text  # one line redrawn in place, every time a whole bar
    done = [int(f.group(2)) for f in frames if f]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 6, text
    assert (last := frames[-1]) and last.group(1) == "100" and last.group(3) == "00:00"
    assert float(last.group(4)) > 0  # inputs per second
    (width,) = {len(f.group(0)) for f in frames if f}  # the terminal's (tqdm spares one)
    assert (columns or 80) - 1 <= width <= (columns or 80)


@pytest.mark.tf
@pytest.mark.slow
def test_progress_bar_away_from_a_terminal_only_when_forced(peer: str, tmp_path: Path) -> None:
    for i in range(4):
        _npz(tmp_path / "in" / f"x{i}.npz", i)

    def infer(flag: str) -> str:
        log = tmp_path / f"{flag}.log"
        with log.open("w") as handle:
            done = subprocess.run(
                [sys.executable, "-m", "edgenode.cli", "infer", str(tmp_path / "in"),
                 "--peer", peer, "--insecure", flag],
                stdout=subprocess.DEVNULL, stderr=handle, timeout=120,
            )  # fmt: skip
        text = log.read_bytes().decode()
        assert done.returncode == 0, text
        return text

    text = infer("--progress")  # a log file: the lines, as without it
    assert "\r" not in text and "%|" not in text
    assert [line for line in text.splitlines() if _PROGRESS.fullmatch(line)] == [
        f"edgenode: {k}/4 done" for k in range(1, 5)
    ]
    text = infer("--force-progress")
    last = re.fullmatch(_BAR.format(n=4), text.rstrip("\n").split("\r")[-1])
    assert last and last.group(1) == "100", text
