"""Logs an operator can filter (issue 21, item 4): the journal's native protocol read back
from a socket of the test's own, the fields of every line, and what real nodes log at the
default level: one line per plan change and per peer state change, none per request.

The datagrams are parsed here from the protocol's description
(systemd.io/JOURNAL_NATIVE_PROTOCOL), not with the library that writes them.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import contextvars
import io
import itertools
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgenode import logfields
from edgenode._cli_logging import configure_logging
from edgenode._journal import JournalHandler, journal_stream, priority
from tests.nodes import NodeProcess, agreed_cluster, node_config, wait_until

_KEY = re.compile(rb"[A-Z0-9][A-Z0-9_]*")  # the protocol's field names
_MAX_DATAGRAM = 1 << 20


def parse_entry(data: bytes) -> dict[str, list[str]]:
    """One datagram of the native protocol: KEY=value lines, or KEY, a newline, a 64-bit
    little-endian length, the value's bytes and a newline (any value, newlines included)."""
    fields: dict[str, list[str]] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = end + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "no newline after the value"
            i = start + size + 1
        assert _KEY.fullmatch(key), f"not a journal field name: {key!r}"
        fields.setdefault(key.decode(), []).append(value.decode())
    return fields


class Journal:
    """A datagram socket standing in for /run/systemd/journal/socket; a thread reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)  # how soon the reader sees that it should stop
        self.entries: list[dict[str, list[str]]] = []
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="journal-reader")
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    _MAX_DATAGRAM, socket.CMSG_SPACE(array.array("i").itemsize)
                )
            except TimeoutError:
                continue
            except OSError:
                return
            for level, kind, payload in ancillary:  # a large entry comes as a sealed memfd
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    with os.fdopen(fds[0], "rb") as memfd:
                        memfd.seek(0)  # the writer's offset: journald maps it from 0
                        data = memfd.read()
            self.raw.append(data)
            self.entries.append(parse_entry(data))

    def close(self) -> None:
        self._stop.set()
        self._reader.join()
        self.sock.close()

    def lines(self, node: str, upto: int | None = None) -> list[dict[str, str]]:
        """The entries of one node, `journalctl NODE_ID=node` (one value per field), of the
        first ``upto`` received."""
        return [
            {k: v[0] for k, v in e.items()}
            for e in self.entries[:upto]
            if e.get("NODE_ID") == [node]
        ]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sock")
    try:
        yield j
    finally:
        j.close()


@pytest.fixture
def handler(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """A logger of its own whose records go to ``journal`` only; no node bound."""
    monkeypatch.setattr(logfields, "_last", [])
    h = JournalHandler(str(journal.path))
    logger = logging.getLogger("edgenode.test_journal")
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(h)
        logger.propagate = True
        h.close()


def _received(journal: Journal, count: int) -> list[dict[str, list[str]]]:
    return wait_until(
        lambda: journal.entries if len(journal.entries) >= count else None,
        5.0,
        f"{count} journal entries",
    )


# -- the handler ---------------------------------------------------------------------------


def test_a_record_is_one_entry_with_the_fields_an_operator_filters_on(journal, handler) -> None:
    def as_node_a() -> int:
        logfields.bind_node("a").plan_changed("0123456789abcdef" * 4)
        handler.info("plan %s agreed", "x")
        line = sys._getframe().f_lineno - 1
        handler.warning("slow", extra={logfields.REQUEST_ID: "r1.7", logfields.PEER_ID: "b"})
        return line

    line = contextvars.copy_context().run(as_node_a)  # bound there, not in later tests
    first, second = _received(journal, 2)
    assert first == {
        "MESSAGE": ["plan x agreed"],
        "PRIORITY": ["6"],
        "SYSLOG_IDENTIFIER": ["edgenode"],
        "CODE_FILE": [__file__],
        "CODE_LINE": [str(line)],
        "CODE_FUNC": ["as_node_a"],
        "LOGGER": ["edgenode.test_journal"],
        "NODE_ID": ["a"],
        "PLAN_DIGEST": ["0123456789ab"],
    }
    assert second["PRIORITY"] == ["4"]
    assert (second["REQUEST_ID"], second["PEER_ID"], second["NODE_ID"]) == (["r1.7"], ["b"], ["a"])


def test_a_multi_line_message_goes_in_the_binary_safe_form(journal, handler) -> None:
    def log() -> None:
        try:
            raise ValueError("bad part\nsecond line")
        except ValueError:
            handler.exception("cannot load %s", "part-3.keras")

    contextvars.Context().run(log)  # in no node's context
    (entry,) = _received(journal, 1)
    (message,) = entry["MESSAGE"]
    assert message.startswith("cannot load part-3.keras\nTraceback (most recent call last):\n")
    assert message.endswith("ValueError: bad part\nsecond line")
    # on the wire: the name, a newline, the length, the bytes (not MESSAGE=...)
    body = message.encode()
    assert b"MESSAGE\n" + struct.pack("<Q", len(body)) + body + b"\n" in journal.raw[0]
    assert b"MESSAGE=" not in journal.raw[0]
    assert entry["PRIORITY"] == ["3"]
    assert "NODE_ID" not in entry  # no node bound: no empty field either


def test_an_entry_larger_than_a_datagram_arrives_whole(journal, handler) -> None:
    text = "".join(f"line {i}\n" for i in range(40_000))  # ~400 kB: over the socket's limit
    handler.info("%s", text)
    (entry,) = _received(journal, 1)
    assert entry["MESSAGE"] == [text]


def test_a_request_log_names_the_request_and_where_it_was_logged(journal, handler) -> None:
    log = logfields.RequestLog(handler)
    log.warning("o1.4", "parts %s failed: %s", [2, 3], "boom")
    line = sys._getframe().f_lineno - 1
    log.debug("o1.5", "not at this level")  # the logger is at DEBUG: sent too
    first, second = _received(journal, 2)
    assert first["MESSAGE"] == ["request o1.4: parts [2, 3] failed: boom"]
    assert (first["REQUEST_ID"], first["CODE_LINE"]) == (["o1.4"], [str(line)])
    assert first["CODE_FUNC"] == ["test_a_request_log_names_the_request_and_where_it_was_logged"]
    assert second["REQUEST_ID"] == ["o1.5"] and second["PRIORITY"] == ["7"]


@pytest.mark.parametrize(
    ("level", "expected"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (25, 4), (logging.INFO, 6),
     (logging.DEBUG, 7), (5, 7)],
)  # fmt: skip
def test_priority(level: int, expected: int) -> None:
    assert priority(level) == expected


def test_nodes_in_one_process_tag_their_own_records(monkeypatch) -> None:
    import asyncio

    monkeypatch.setattr(logfields, "_last", [])
    seen: list[tuple[str, dict[str, str]]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), logfields.record_fields(record)))

    logger = logging.getLogger("edgenode.test_journal.tags")
    logger.addHandler(capture := Capture())
    logger.setLevel(logging.INFO)

    async def node(name: str) -> None:
        logfields.bind_node(name).plan_changed(f"{name}" * 20)
        await asyncio.sleep(0)  # interleave with the other node
        logger.info("from %s", name)
        await asyncio.to_thread(logger.info, "thread of %s", name)

    async def both() -> None:
        await asyncio.gather(*(asyncio.create_task(node(n), context=contextvars.Context())
                               for n in ("a", "b")))  # fmt: skip

    try:
        asyncio.run(both())
    finally:
        logger.removeHandler(capture)
    assert sorted(seen) == [
        (f"{text} {n}", {"NODE_ID": n, "PLAN_DIGEST": n * 12})
        for text in ("from", "thread of")
        for n in "ab"
    ]


# -- a real journald -------------------------------------------------------------------------

JOURNALD = Path("/lib/systemd/systemd-journald")


@pytest.fixture
def real_journal() -> Iterator[str]:
    """A systemd-journald of a namespace of its own (the system's journal untouched), where
    the test runs as root and it is installed; the namespace's name."""
    import shutil
    import subprocess
    import uuid

    if os.geteuid() != 0 or not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("needs root, systemd-journald and journalctl")
    namespace = f"edgenode-test-{uuid.uuid4().hex[:8]}"
    run_dir = Path(f"/run/systemd/journal.{namespace}")
    process = subprocess.Popen([str(JOURNALD), namespace], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: (run_dir / "socket").exists(), 10.0, "journald's socket")
        yield namespace
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)
        machine = Path("/etc/machine-id").read_text().strip()
        for logs in (Path("/var/log/journal"), Path("/run/log/journal")):
            shutil.rmtree(logs / f"{machine}.{namespace}", ignore_errors=True)


def test_a_real_journald_files_the_fields_and_filters_on_them(
    real_journal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `journalctl NODE_ID=...` shows, from systemd's own journald and journalctl."""
    import json
    import subprocess

    monkeypatch.setattr(logfields, "_last", [])
    handler = JournalHandler(f"/run/systemd/journal.{real_journal}/socket")
    logger = logging.getLogger("edgenode.test_journal.real")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def as_node_a() -> None:
        logfields.bind_node("a").plan_changed("3f2a9c0e1b7d" * 5)
        logger.info("plan 3f2a9c0e1b7d agreed", extra={logfields.PLAN_DIGEST: "3f2a9c0e1b7d"})
        logfields.RequestLog(logger).warning("a.4f1c2d9a.17", "two\nlines")
        logger.info("%s", "x" * 300_000)  # over a datagram: a memfd

    try:
        contextvars.Context().run(as_node_a)
        contextvars.Context().run(logfields.bind_node, "b")
        logger.info("from b")  # a thread no node's task started: the node bound last
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()

    def journalctl(*match: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            ["journalctl", f"--namespace={real_journal}", "--all", "-o", "json", *match],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        return [json.loads(line) for line in out.splitlines()]

    found = wait_until(lambda: len(journalctl("NODE_ID=a")) == 3 and journalctl("NODE_ID=a"),
                       10.0, "node a's three lines")  # fmt: skip
    assert [e["MESSAGE"] for e in found] == [
        "plan 3f2a9c0e1b7d agreed",
        "request a.4f1c2d9a.17: two\nlines",
        "x" * 300_000,
    ]
    assert {(e["PLAN_DIGEST"], e["SYSLOG_IDENTIFIER"]) for e in found} == {
        ("3f2a9c0e1b7d", "edgenode")
    }
    (request,) = journalctl("REQUEST_ID=a.4f1c2d9a.17")
    assert (request["PRIORITY"], request["NODE_ID"]) == ("4", "a")
    assert [e["MESSAGE"] for e in journalctl("NODE_ID=b")] == ["from b"]


# -- where the log goes ---------------------------------------------------------------------


def test_journal_stream_is_the_stderr_systemd_connected(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal_stream(stream, a.fileno())
        assert not journal_stream(stream, b.fileno())  # a child's redirected stderr
        assert not journal_stream({}, a.fileno())
        assert not journal_stream({"JOURNAL_STREAM": "x:y"}, a.fileno())


@contextlib.contextmanager
def _root_logging() -> Iterator[logging.Logger]:
    """The root logger without its handlers (basicConfig adds one only then); restored."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        for h in root.handlers:
            h.close()
        root.handlers = saved
        root.setLevel(level)


def _run_args(**changes: Any) -> argparse.Namespace:
    from edgenode.cli import build_parser

    args = build_parser().parse_args(["run"])
    vars(args).update(changes)
    return args


def test_run_logs_to_the_journal_when_stderr_is_its_stream(journal, tmp_path) -> None:
    with (tmp_path / "stderr").open("w") as stderr, _root_logging() as root:
        st = os.fstat(stderr.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        args = _run_args(journal_socket=str(journal.path))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stderr", stderr)
            configure_logging(args, environ=environ)
        (h,) = root.handlers
        assert isinstance(h, JournalHandler) and root.level == logging.INFO
        logging.getLogger("edgenode.x").info("to the journal")
    assert _received(journal, 1)[0]["MESSAGE"] == ["to the journal"]
    assert (tmp_path / "stderr").read_text() == ""  # not twice


def test_run_logs_to_stderr_elsewhere_and_when_no_journal_listens(tmp_path) -> None:
    with _root_logging() as root:
        configure_logging(_run_args(), environ={})
        (h,) = root.handlers
        assert type(h) is logging.StreamHandler
    with _root_logging() as root, pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", stream := io.StringIO())
        configure_logging(
            _run_args(log_to="journal", journal_socket=str(tmp_path / "none.sock")), environ={}
        )
        (h,) = root.handlers
        assert type(h) is logging.StreamHandler
    assert "cannot log to the journal at " in stream.getvalue()
    assert "logging to stderr" in stream.getvalue()


# -- what real nodes log -------------------------------------------------------------------


@pytest.mark.tf
@pytest.mark.slow
def test_nodes_log_plan_and_peer_changes_once_and_no_request(journal, tmp_path) -> None:
    from edgenode.transport import Security
    from tests.nodes import infer_checked, multi_io_split

    split = multi_io_split(tmp_path / "split")
    config = node_config(tmp_path)
    names = ("a", "b", "c")
    args = ["--config", str(config), "--listen", "127.0.0.1:0", "--model", str(split["dir"]),
            "--interfaces", "127.0.0.1", "--log-to", "journal",
            "--journal-socket", str(journal.path)]  # fmt: skip
    nodes = [
        NodeProcess(name, tmp_path, *args, "--state-dir", str(tmp_path / name)) for name in names
    ]
    try:
        for node in nodes:
            node.wait_serving()
        found = agreed_cluster(nodes, set(names))
        served = {st["plan"]["agreed_digest"] for st in found.values()}
        settled = len(journal.entries)
        for seed in range(5):  # ten requests, each answer checked
            infer_checked(nodes[seed % 3].address, Security.insecure(), split, seed)
        # Nodes of other tests' clusters on this host are seen once each (mDNS): not ours.
        during = [e for e in journal.entries[settled:] if not _foreign(e)]
        assert nodes[2].stop() == 0
        found = agreed_cluster(nodes[:2], {"a", "b"})
        (after,) = {st["plan"]["agreed_digest"] for st in found.values()}
        wait_until(lambda: _last_message(journal, "c") == "stopped", 10.0, "c's last line")
        upto = len(journal.entries)  # not what a and b log as the test stops them
    finally:
        for node in nodes:
            node.stop()
    dump = "\n".join(str(e) for e in journal.entries)
    assert during == [], dump  # nothing logged while requests ran, at the default level
    assert not [e for e in journal.entries if "REQUEST_ID" in e], dump
    assert not [e for e in journal.entries if "NODE_ID" not in e], dump
    assert {e["NODE_ID"][0] for e in journal.entries} == set(names)
    for node in nodes:  # not on stderr as well
        assert not re.search(r"^\d{4}-\d\d-\d\d .* edgenode", node.log(), re.M), node.log()
    for name in ("a", "b"):
        lines = journal.lines(name, upto)
        assert all(line["SYSLOG_IDENTIFIER"] == "edgenode" for line in lines)
        peers = [(p["PEER_ID"], p["MESSAGE"].split()[3]) for p in lines if "PEER_ID" in p]
        others = [n for n in names if n != name]
        # in the order they were seen, each joined once; then c left
        assert sorted(peers[:2]) == [(n, "joined") for n in others] and peers[2:] == [("c", "left")]
        plans = [p for p in lines if re.match(r"plan \w+ agreed: ", p["MESSAGE"])]
        digests = [p["PLAN_DIGEST"] for p in plans]
        assert all(x != y for x, y in itertools.pairwise(digests)), dump  # each a change
        assert digests[-1] == after[:12] and any(d == next(iter(served))[:12] for d in digests)
        # what a plan change logged besides its one line is at DEBUG now
        demoted = r"loaded part|running parts|no part for this node|confirming again|membership: \d"
        assert not [p for p in lines if re.search(demoted, p["MESSAGE"])], dump
        # and so is what vetting and the liveness checks said of peers besides
        ours = [p for p in lines if re.search(r"\bpeer [abc]\b", p["MESSAGE"])]
        assert all("PEER_ID" in p for p in ours), dump
        # a line logged while a node serves a plan says which
        (left,) = [p for p in lines if p.get("PEER_ID") == "c" and "left" in p["MESSAGE"]]
        assert left["PLAN_DIGEST"] == next(iter(served))[:12]


def _foreign(entry: dict[str, list[str]]) -> bool:
    return re.match(r"ignoring peer .*: other cluster ", entry["MESSAGE"][0]) is not None


def _last_message(journal: Journal, node: str) -> str:
    lines = journal.lines(node)
    return lines[-1]["MESSAGE"] if lines else ""
