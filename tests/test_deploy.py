"""Deployment: the systemd unit, install.sh, readiness over sd_notify, LiteRT nodes without
TensorFlow, and clusters mixing Keras and LiteRT nodes."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, agreed_cluster
from tests.reference import LITERT_TOLERANCE, assert_answer, reference_set

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "edgenode.service"
INSTALL = ROOT / "deploy" / "install.sh"
VENV_EDGENODE = Path(sys.executable).with_name("edgenode")
READY_DEADLINE_S = 120.0


def _unit_with(executable: Path, unit_dir: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here."""
    text = UNIT.read_text().replace("/opt/edgenode/venv/bin/edgenode", str(executable))
    path = unit_dir / "edgenode.service"
    path.write_text(text)
    return path


def test_the_unit_declares_what_the_deployment_needs() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "User=edgenode",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "StateDirectory=edgenode",
        "StandardOutput=journal",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    from edgenode.config import Config

    assert stop > Config().limits.request_deadline_s + 5  # the drain fits in the stop timeout
    from edgenode.cli import EXIT_USAGE

    # A configuration error (bad node.toml, a duplicate node id) is not restarted in a loop.
    assert re.search(rf"^RestartPreventExitStatus={EXIT_USAGE}$", text, re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    unit = _unit_with(VENV_EDGENODE, tmp_path)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "edgenode.service" not in out.stderr, out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck")
def test_install_script_is_shellcheck_clean() -> None:
    out = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGENODE_SYSTEM": "0",  # no apt, user or systemctl: a sandboxed install
        "EDGENODE_PREFIX": str(root / "opt"),
        "EDGENODE_CONFIG_DIR": str(root / "etc"),
        "EDGENODE_STATE_DIR": str(root / "var"),
        "EDGENODE_UNIT_DIR": str(root / "units"),
        "EDGENODE_PIP_ARGS": "--no-deps",  # the package itself; its dependencies are here
    }
    return subprocess.run(
        ["sh", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgenode.security import new_cluster, write_private

    root = tmp_path_factory.mktemp("install")
    _, credential = new_cluster("home")
    write_private(root / "cluster.pem", credential.bundle())
    out = _install(root, "--backend", "litert", "--key", str(root / "cluster.pem"))
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.slow
def test_install_writes_venv_config_and_unit_and_is_idempotent(installed: Path) -> None:
    config = installed / "etc" / "node.toml"
    text = config.read_text()
    assert f'name = "{socket.gethostname()}"' in text and 'backend = "litert"' in text
    assert f'key = "{installed}/etc/cluster.pem"' in text  # secure by default
    assert (installed / "etc" / "cluster.pem").read_bytes() == (
        installed / "cluster.pem"
    ).read_bytes()
    unit = (installed / "units" / "edgenode.service").read_text()
    assert f"ExecStart={installed}/opt/venv/bin/edgenode run --config {installed}/etc/" in unit
    assert (installed / "opt" / "venv" / "bin" / "edgenode").is_file()
    config.write_text(text + "# edited by the operator\n")
    again = _install(installed, "--backend", "litert")  # the key stays too
    assert again.returncode == 0, again.stderr
    assert "keeping" in again.stdout and config.read_text().endswith("# edited by the operator\n")
    assert (installed / "units" / "edgenode.service").read_text() == unit
    bad = _install(installed, "--backend", "tpu")
    assert bad.returncode == 2 and "litert or keras" in bad.stderr


# -- nodes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgenode.model.graph import build_graph
    from edgenode.model.split import split_model
    from tests.model import models

    root = tmp_path_factory.mktemp("splits")
    model = models.build("multi_io")
    keras = split_model(model, root / "keras", cuts=[2, 4, 6]).manifest
    litert = split_model(model, root / "litert", cuts=[2, 4, 6], fmt="litert").manifest
    assert keras.identity == litert.identity
    return {"model": model, "graph": build_graph(model), "manifest": keras, "root": root}


@pytest.fixture
def no_tensorflow(tmp_path: Path) -> dict[str, str]:
    """Environment for a process in which importing tensorflow or keras fails."""
    shim = tmp_path / "shim"
    for name in ("tensorflow", "keras"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: a LiteRT node must not import it')\n"
        )
    return {"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}


def _check_answers(
    splits: dict[str, Any], address: str, atol: float, key: Path | None = None
) -> None:
    from edgenode.transport import ControlClient, run
    from tests.model import models

    batches = [models.sample_inputs(splits["model"], seed=s, batch=1) for s in range(8)]

    from edgenode.security import load_credentials
    from edgenode.transport import Security

    security = Security(load_credentials(key)) if key else Security.insecure()

    async def go() -> list[dict[str, Any]]:
        client = ControlClient(protocol=1, security=security)
        try:
            return list(
                await asyncio.gather(*(client.infer(address, b, timeout_s=60) for b in batches))
            )
        finally:
            await client.aclose()

    refs = reference_set(splits["graph"], batches, tolerance=atol, manifest=splits["manifest"])
    for i, out in enumerate(run(go())):
        assert_answer(refs, i, out)


class _NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, deadline_s: float, process: subprocess.Popen[Any]) -> str:
        """The first message holding ``field``; fails at the deadline or when the process
        has exited with nothing more to read."""
        end = time.monotonic() + deadline_s
        self.sock.settimeout(0.5)  # a bounded wait for each datagram
        while time.monotonic() < end:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                if process.poll() is not None:
                    break
                continue
            self.messages.append(message)
            if field in message.splitlines():
                return message
        raise AssertionError(f"no {field} within {deadline_s} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[_NotifySocket]:
    sock = _NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.tf
@pytest.mark.slow
def test_the_units_command_with_the_installed_config_serves_securely_without_tensorflow(
    installed: Path, splits: dict[str, Any], no_tensorflow: dict[str, str], notify_socket, tmp_path
) -> None:
    # The installed config, moved to the loopback interface and pointed at LiteRT parts.
    installed_config = (installed / "etc" / "node.toml").read_text()
    config = tmp_path / "node.toml"
    config.write_text(
        installed_config.replace('listen = "0.0.0.0:50051"', 'listen = "127.0.0.1:0"')
        .replace('interfaces = "all"', 'interfaces = ["127.0.0.1"]')
        .replace('name = "home"', f'name = "test-{uuid.uuid4().hex[:12]}"')
        .replace('source = "MobileNetV3Large"', f'source = "{splits["root"] / "litert"}"')
        .replace("speed_gflops = 0.0", "speed_gflops = 1.0")
    )
    unit = (installed / "units" / "edgenode.service").read_text()
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))  # type: ignore[union-attr]
    assert exec_start[0] == f"{installed}/opt/venv/bin/edgenode"
    # This test's venv has the dependencies the sandboxed install skipped.
    command = [str(VENV_EDGENODE), *exec_start[1:]]
    command[command.index("--config") + 1] = str(config)
    env = {**os.environ, **no_tensorflow, "NOTIFY_SOCKET": str(notify_socket.path)}
    log = (tmp_path / "node.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ready = notify_socket.wait_for("READY=1", READY_DEADLINE_S, process)
        assert "STATUS=serving plan" in ready and "parts 0-3" in ready
        address = re.search(r"serving on (\S+:\d+)", (tmp_path / "node.log").read_text())
        assert address is not None
        _check_answers(
            splits, address.group(1), atol=LITERT_TOLERANCE, key=installed / "etc" / "cluster.pem"
        )
        process.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", 30.0, process)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    text = (tmp_path / "node.log").read_text()
    assert "blocked" not in text and "Traceback" not in text, text


@pytest.mark.tf
@pytest.mark.slow
def test_keras_and_litert_nodes_share_a_cluster(
    splits: dict[str, Any], no_tensorflow: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    # slow pinned speeds: compute outweighs hops, so the plan uses both nodes
    config.write_text(
        f'[node]\nspeed_gflops = 0.000001\n[cluster]\nname = "test-{uuid.uuid4().hex[:12]}"\n'
    )
    nodes = []
    try:
        for name, backend, env in (("k", "keras", None), ("l", "litert", no_tensorflow)):
            model = str(splits["root"] / backend)
            args = ["--config", str(config), "--listen", "127.0.0.1:0", "--model", model]
            args += ["--backend", backend, "--interfaces", "127.0.0.1"]
            args += ["--state-dir", str(tmp_path / name)]
            nodes.append(NodeProcess(name, tmp_path, *args, env=env))
        for node in nodes:
            node.wait_serving()
        found = agreed_cluster(nodes, {"k", "l"})
        assert found["k"]["parts"] and found["l"]["parts"]  # both backends run parts
        for node in nodes:
            _check_answers(splits, node.address, atol=LITERT_TOLERANCE)
    finally:
        for node in nodes:
            node.stop()
    assert "blocked" not in nodes[1].log()


def test_install_help_is_its_header_and_nothing_else() -> None:
    out = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    header = []
    for line in INSTALL.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(re.sub(r"^# ?", "", line))
    assert out.stdout.splitlines() == header
    assert "set -eu" not in out.stdout and "usage" not in out.stderr
