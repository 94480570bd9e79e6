"""The command line: split, plan and profile, and one-line errors without tracebacks."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgenode.cli import build_parser, main


def _edgenode(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgenode.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_help_explains_every_command() -> None:
    out = _edgenode("--help")
    assert out.returncode == 0
    for command in ("split", "plan", "profile"):
        assert command in out.stdout
    split_help = _edgenode("split", "--help").stdout
    for flag in ("--model", "--parts", "--out", "--format", "--weights", "--input-shape"):
        assert flag in split_help


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _help_entries(help_text: str) -> dict[str, str]:
    """Each option's entry in a --help text (its lines joined), by every option string."""
    entries: list[tuple[list[str], list[str]]] = []
    for line in help_text.splitlines():
        if re.match(r"  -", line):  # "  -v, --verbose  more logging", "  --out DIR  ..."
            head = re.split(r"\s{2,}", line.strip())[0]
            entries.append(([piece.split()[0] for piece in head.split(", ")], [line]))
        elif entries and line.startswith("   "):
            entries[-1][1].append(line)
        else:  # a blank line or a section heading ends an entry
            entries.append(([], []))
    return {key: " ".join(" ".join(lines).split()) for keys, lines in entries for key in keys}


def _defaults_not_shown(parser: argparse.ArgumentParser, help_text: str) -> list[str]:
    """Options that take a value and have a default that ``help_text`` does not show once
    as "(default: X)"; flags (store_true, count) and options without a default have none."""
    entries = _help_entries(help_text)
    wrong = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
            continue
        if action.default is None or action.default == argparse.SUPPRESS:
            continue
        entry = entries.get(action.option_strings[-1], "")
        if entry.count("(default") != 1 or f"(default: {action.default})" not in entry:
            wrong.append(f"{action.option_strings[-1]}: {entry!r}")
    return wrong


def test_no_command_lists_every_command() -> None:
    out = _edgenode()
    assert out.returncode == 2 and out.stdout == ""
    shown = " ".join(out.stderr.split())
    assert shown.startswith("usage: edgenode ")
    sub = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for choice in sub[0]._choices_actions:
        assert f"{choice.dest} {' '.join(str(choice.help).split())}" in shown
    assert "Traceback" not in out.stderr


def test_every_help_shows_every_default() -> None:
    parser = build_parser()
    commands = _subcommands(parser)
    assert set(commands) >= {"split", "plan", "profile", "run", "status", "infer", "keygen"}
    wrong = _defaults_not_shown(parser, _edgenode("--help").stdout)
    for name, command in commands.items():
        out = _edgenode(name, "--help")
        assert out.returncode == 0, out.stderr
        wrong += [f"{name} {w}" for w in _defaults_not_shown(command, out.stdout)]
    assert not wrong, "\n".join(wrong)


def test_the_default_check_catches_a_hidden_or_repeated_default() -> None:
    from edgenode.cli import _Parser

    def with_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--runs", type=int, default=20, help="timed runs per op")
        parser.add_argument("--top", type=int, default=5, help="classes (default 5)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--peer", metavar="HOST:PORT", help="a node to ask")
        return parser

    def options(wrong: list[str]) -> list[str]:
        return [w.split(":")[0] for w in wrong]

    plain = with_options(argparse.ArgumentParser(prog="x"))  # argparse shows no default
    assert options(_defaults_not_shown(plain, plain.format_help())) == ["--runs", "--top"]
    ours = with_options(_Parser(prog="x"))  # ours shows --top's twice: once in words
    assert options(_defaults_not_shown(ours, ours.format_help())) == ["--top"]


def test_cli_defaults_match_the_library() -> None:
    from edgenode import cli, security

    assert cli.DEFAULT_CREDENTIAL_DAYS == security.DEFAULT_DAYS


@pytest.mark.tf
def test_cli_defaults_match_the_model_library() -> None:
    from edgenode import cli
    from edgenode.model import loading, profile

    assert cli.DEFAULT_SEED == loading.DEFAULT_SEED
    assert cli.DEFAULT_PROFILE_RUNS == profile.DEFAULT_RUNS
    assert cli.DEFAULT_PROFILE_SEGMENTS == profile.DEFAULT_SEGMENTS


def test_bad_arguments_exit_2() -> None:
    out = _edgenode("split", "--model", "x", "--parts", "0", "--out", "o")
    assert out.returncode == 2 and "expected at least 1" in out.stderr


def test_run_without_multicast_needs_a_peer_in_one_line() -> None:
    out = _edgenode("run", "--no-multicast", "--insecure")
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "edgenode: error: cluster.peers: needed when cluster.multicast is false"
    ]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model import models

    path = tmp_path_factory.mktemp("model") / "fork_join.keras"
    models.build("fork_join").save(path)
    return path


@pytest.mark.tf
def test_split_command_end_to_end(small_model: Path, tmp_path: Path) -> None:
    out = _edgenode("split", "--model", str(small_model), "--parts", "3", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "max abs diff 0" in out.stdout
    assert "exporting part 3/3" in out.stderr  # progress goes to stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == "edgenode-manifest/1" and len(manifest["parts"]) == 3
    assert "Traceback" not in out.stderr and "oneDNN" not in out.stderr


@pytest.mark.tf
def test_a_litert_split_checks_the_part_files_it_wrote(small_model: Path, tmp_path: Path) -> None:
    out = _edgenode(
        "split", "--model", str(small_model), "--parts", "3", "--format", "litert",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = re.search(r"chained LiteRT part files vs whole model: max abs diff (\S+)", out.stdout)
    assert found, out.stdout
    assert float(found[1]) < 1e-4


@pytest.mark.tf
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "MobileNetV9"], "unknown model 'MobileNetV9'"),
        (["--model", "{garbage}"], "garbage.keras: "),
        (["--model", "{small}", "--parts", "99"], "cannot cut 13 operations into 99 parts"),
        (["--model", "{small}", "--parts", "2", "--at", "3"], None),
        (["--model", "MobileNetV3Small", "--weights", "/nonexistent.h5"], "does not exist"),
        (["--model", "{subclassed}"], "subclassed keras.Model"),
    ],
)
def test_split_errors_are_one_line(
    args: list[str], message: str | None, small_model: Path, tmp_path: Path, capsys
) -> None:
    import keras

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"\x00not a zip")
    from tests.cli_models import Doubler

    subclassed = tmp_path / "sub.keras"
    model = Doubler()
    model(keras.ops.ones((1, 3)))
    model.save(subclassed)
    args = [a.format(garbage=garbage, small=small_model, subclassed=subclassed) for a in args]
    if "--parts" not in args and "--at" not in args:
        args += ["--parts", "2"]
    code = main(["split", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:  # --parts and --at together: the explicit cuts win
        assert code == 0
        return
    assert code == 1
    assert err[-1].startswith("edgenode: error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


@pytest.mark.tf
def test_plan_and_profile(small_model: Path, tmp_path: Path, capsys) -> None:
    assert main(["plan", "--model", str(small_model), "--nodes", "1,1,3", "--gflops", "2"]) == 0
    out = capsys.readouterr().out
    assert "bottleneck stage" in out and "node-2" in out
    assert (
        main(["plan", "--model", str(small_model), "--nodes", "3", "--gflops", "2", "--json"]) == 0
    )
    plan = json.loads(capsys.readouterr().out)
    stages = plan["stages"]
    assert stages[0]["start"] == 0 and stages[-1]["stop"] == 13
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(stages))

    profile = tmp_path / "profile.json"
    assert main(["profile", "--model", str(small_model), "--out", str(profile), "--runs", "3"]) == 0
    data = json.loads(profile.read_text())
    assert len(data["ops"]) == 13 and all(o["raw_seconds"] > 0 for o in data["ops"])
    segments = data["segments"]  # consecutive runs of ops, timed together
    assert segments[0]["start"] == 0 and segments[-1]["stop"] == 13 and len(segments) > 1
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(segments))
    assert all(g["seconds"] > 0 for g in segments)
    # net of the per-call overhead, calibrated on the segments, adding up to the whole model
    assert all(o["seconds"] >= 0 for o in data["ops"])
    assert sum(o["seconds"] for o in data["ops"]) == pytest.approx(data["whole_model_s"])
    capsys.readouterr()
    assert (
        main(["plan", "--model", str(small_model), "--nodes", "2", "--profile", str(profile)]) == 0
    )
    assert "speed basis: measured" in capsys.readouterr().out


@pytest.mark.tf
def test_plan_prices_memory_with_the_backends_model(small_model: Path, capsys) -> None:
    """Each stage's predicted resident memory: the backend's baseline plus its need by the
    backend's memory model; a budget below the baseline holds nothing (one line, exit 1)."""
    from edgenode.planning import BASELINE_BYTES

    plan = ["plan", "--model", str(small_model), "--nodes", "2", "--gflops", "2", "--json"]
    found = {}
    for backend in ("keras", "litert"):
        assert main([*plan, "--backend", backend, "--node-memory", "4GiB"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["backend"], data["baseline_bytes"]) == (backend, BASELINE_BYTES[backend])
        found[backend] = [
            s["predicted_memory_bytes"] - data["baseline_bytes"] for s in data["stages"]
        ]
        assert all(need > 0 for need in found[backend])
    assert found["keras"] != found["litert"]  # each backend's own model
    assert main([*plan, "--backend", "litert", "--node-memory", "64MiB"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "holds 0 bytes for parts" in err.splitlines()[-1]


@pytest.mark.tf
def test_plan_counts_the_wire_formats_bytes_per_hop(small_model: Path, capsys) -> None:
    """Between parts a float32 tensor costs half as float16 and a quarter (plus its scale and
    zero point) as int8; the model's input and its answer stay exact; `plan` says which."""
    from edgenode.model.cost import graph_stats
    from edgenode.model.graph import build_graph
    from edgenode.model.loading import load_model
    from edgenode.model.split import layer_cost_graph

    graph = build_graph(load_model(str(small_model)))
    stats = graph_stats(graph)
    costs = {
        w: layer_cost_graph(graph, stats, wire_format=w) for w in ("float32", "float16", "int8")
    }
    for exact, half, quarter in zip(*(c.tensors for c in costs.values()), strict=True):
        if exact.producer < 0 or exact.final:
            assert exact.nbytes == half.nbytes == quarter.nbytes
        else:
            assert (half.nbytes, quarter.nbytes) == (exact.nbytes // 2, exact.nbytes // 4 + 12)
    base = ["plan", "--model", str(small_model), "--nodes", "2", "--gflops", "2", "--json"]
    assert main([*base, "--wire-format", "int8"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["wire_format"] == "int8" and plan["link_bytes_per_s"] == 125e6


@pytest.mark.tf
def test_split_balances_on_a_profile(small_model: Path, tmp_path: Path, capsys) -> None:
    """With --profile, balanced cuts weigh ops by measured time, not FLOPs: an op the
    profile says is slow gets a part of its own."""
    profile = tmp_path / "profile.json"
    assert main(["profile", "--model", str(small_model), "--out", str(profile), "--runs", "2"]) == 0
    data = json.loads(profile.read_text())
    slow = 9
    for i, op in enumerate(data["ops"]):
        op["seconds"] = 1.0 if i == slow else 1e-6
    profile.write_text(json.dumps(data))
    out = tmp_path / "parts"
    split = ["split", "--model", str(small_model), "--parts", "2", "--no-verify"]
    assert main([*split, "--profile", str(profile), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parts"][0]["ops"]["stop"] in (slow, slow + 1)
    assert main([*split, "--out", str(tmp_path / "by-flops")]) == 0
    by_flops = json.loads((tmp_path / "by-flops" / "manifest.json").read_text())
    assert by_flops["parts"][0]["ops"]["stop"] != manifest["parts"][0]["ops"]["stop"]

    data["model_sha256"] = "0" * 64
    profile.write_text(json.dumps(data))
    capsys.readouterr()
    assert main([*split, "--profile", str(profile), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"edgenode: error: {profile} was measured on another model"


@pytest.mark.tf
def test_split_writes_the_link_the_cluster_plans_for(small_model: Path, tmp_path, capsys) -> None:
    split = ["split", "--model", str(small_model), "--parts", "2", "--no-verify"]
    out = tmp_path / "wifi"
    assert main([*split, "--link-mbps", "20", "--hop-latency-ms", "3", "--out", str(out)]) == 0
    link = json.loads((out / "manifest.json").read_text())["link"]
    assert link == {"bandwidth_bytes_per_s": 2.5e6, "latency_s": 0.003}
    assert "plans for a 20 Mbit/s link, 3 ms per hop" in capsys.readouterr().out
    assert main([*split, "--out", str(tmp_path / "wired")]) == 0
    assert "link" not in json.loads((tmp_path / "wired" / "manifest.json").read_text())
    for bad in (["--link-mbps", "0"], ["--link-mbps", "fast"], ["--hop-latency-ms", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*split, *bad, "--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2


@pytest.mark.tf
def test_split_writes_the_wire_format(small_model: Path, tmp_path: Path) -> None:
    split = ["split", "--model", str(small_model), "--parts", "2", "--no-verify"]
    assert main([*split, "--wire-format", "int8", "--out", str(tmp_path / "int8")]) == 0
    assert json.loads((tmp_path / "int8" / "manifest.json").read_text())["wire_format"] == "int8"
    assert main([*split, "--out", str(tmp_path / "plain")]) == 0
    assert "wire_format" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    with pytest.raises(SystemExit) as exit_info:
        main([*split, "--wire-format", "int4", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2


@pytest.mark.tf
def test_a_node_cutting_the_model_itself_plans_for_its_configured_link(
    small_model: Path, tmp_path: Path
) -> None:
    from edgenode.config import ModelConfig
    from edgenode.model.manifest import LinkSpec
    from edgenode.node import prepare_model

    wifi = ModelConfig(source=str(small_model), link_mbps=20.0, hop_latency_ms=3.0)
    manifest, _ = prepare_model(wifi, tmp_path / "a")
    assert manifest.link == LinkSpec(bandwidth_bytes_per_s=2.5e6, latency_s=0.003)
    wired, _ = prepare_model(ModelConfig(source=str(small_model)), tmp_path / "b")
    assert wired.link is None and wired.identity != manifest.identity
    compact = ModelConfig(source=str(small_model), wire_format="int8")
    int8, _ = prepare_model(compact, tmp_path / "b")  # beside the float32 cut, not over it
    assert int8.wire_format == "int8" and int8.identity != wired.identity
