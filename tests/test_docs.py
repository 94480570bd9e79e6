"""The documentation holds: links resolve, the README's commands parse and write only to
ignored paths, `.ci/run` runs the README's test command, headline figures carry a date."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenode.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Options whose value is a path a command writes (a file, or a directory it fills).
WRITE_OPTIONS = {"--out", "--save-outputs", "--state-dir"}
REDIRECTIONS = {">", ">>", "&>", "&>>"}
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)


# -- markdown ---------------------------------------------------------------------------


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _without_code(path.read_text()), re.MULTILINE)
    return {_slug(h) for h in headings}


def _broken_links(path: Path, text: str) -> list[str]:
    """Relative links in ``text`` (the file ``path``) to files or headings that do not exist."""
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _without_code(text)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {heading}'"
    return match.group(1)


def test_the_documents_exist() -> None:
    names = [str(p.relative_to(ROOT)) for p in DOCS]
    assert {"README.md", "benchmarks/README.md", "docs/how-it-works.md"} <= set(names)
    assert "docs/measurements.md" in names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert _broken_links(path, path.read_text()) == []


def test_the_link_check_sees_a_broken_link() -> None:
    text = "[ok](docs/how-it-works.md#the-pieces) [file](docs/nothing.md) [anchor](#no-such)"
    assert [b.split(": ")[1] for b in _broken_links(README, text)] == [
        "docs/nothing.md (no such file)",
        "#no-such (no such heading)",
    ]


# -- the README's shell commands ----------------------------------------------------------


def _commands(text: str) -> Iterator[list[str]]:
    """Every simple command of the shell blocks in ``text``, its variables replaced by x."""
    for block in SHELL_BLOCK.findall(text):
        for line in block.splitlines():
            lexer = shlex.shlex(
                re.sub(r"\$\{?\w+\}?", "x", line), posix=True, punctuation_chars=True
            )
            lexer.whitespace_split = True
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token in {";", "&", "&&", "|", "||"}:
                    if command:
                        yield command
                    command = []
                elif token not in {"do", "done", "then", "fi"}:
                    command.append(token)


def _written_paths(commands: list[list[str]]) -> list[str]:
    """Paths that these commands write: the values of WRITE_OPTIONS and redirections."""
    paths = []
    for command in commands:
        for i, token in enumerate(command):
            option, equals, value = token.partition("=")
            if option in WRITE_OPTIONS and equals:
                paths.append(value)
            elif (token in WRITE_OPTIONS or token in REDIRECTIONS) and i + 1 < len(command):
                paths.append(command[i + 1])
    return paths


def _is_ignored(path: str) -> bool:
    """Whether git ignores ``path``, or everything written inside it (a directory)."""
    for probe in (path, f"{path.rstrip('/')}/probe"):
        done = subprocess.run(
            ["git", "check-ignore", "--quiet", "--no-index", probe], cwd=ROOT, check=False
        )
        if done.returncode == 0:
            return True
    return False


@pytest.fixture
def git_checkout() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")


def test_what_the_readme_commands_write_is_ignored(git_checkout: None) -> None:
    written = _written_paths(list(_commands(README.read_text())))
    inside = [p for p in written if not p.startswith(("/", "~"))]
    assert inside, f"no path the README's commands write was found: {written}"
    assert [p for p in inside if not _is_ignored(p)] == []


def test_the_ignore_check_sees_a_tracked_path(git_checkout: None) -> None:
    text = (
        "```sh\nedgenode split --out README.md && edgenode infer x --save-outputs=edgenode\n```\n"
    )
    assert _written_paths(list(_commands(text))) == ["README.md", "edgenode"]
    assert not _is_ignored("README.md") and not _is_ignored("edgenode")
    assert _is_ignored("keys") and _is_ignored("outputs.npz")


def _edgenode_arguments(command: list[str]) -> list[str] | None:
    """The arguments of an `edgenode` command, without redirections; None for others."""
    if not command or Path(command[0]).name != "edgenode":
        return None
    arguments = []
    for token in command[1:]:
        if token in REDIRECTIONS or token in {"<", "2>", ">&"}:
            break
        arguments.append(token)
    return arguments


def test_the_readme_commands_parse() -> None:
    parser = build_parser()
    found = 0
    for command in _commands(README.read_text()):
        arguments = _edgenode_arguments(command)
        if arguments is None:
            continue
        found += 1
        try:
            parser.parse_args(arguments)
        except SystemExit:
            pytest.fail(f"the README's `{shlex.join(command)}` does not parse")
    assert found >= 3


def test_the_commands_table_names_real_options() -> None:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    table = _section(README.read_text(), "Commands")
    rows = re.findall(r"^\| `edgenode (\w+)([^`]*)`", table, re.MULTILINE)
    assert {name for name, _ in rows} == set(sub.choices)
    for name, usage in rows:
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        for flag in re.findall(r"--[\w-]+", usage):
            assert flag in options, f"the README's row for {name} shows {flag}"


# -- what the README promises --------------------------------------------------------------


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = SHELL_BLOCK.findall(_section(README.read_text(), "Test it"))
    assert len(blocks) == 1 and len(blocks[0].splitlines()) == 1
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert blocks[0].strip() in ci_lines


def test_the_quick_start_is_one_command_that_runs_the_demo() -> None:
    blocks = SHELL_BLOCK.findall(_section(README.read_text(), "Quick start"))
    assert blocks and len(blocks[0].splitlines()) == 1
    assert blocks[0].strip().endswith(".venv/bin/edgenode demo")


def test_headline_figures_carry_a_date_and_a_machine() -> None:
    table = _section(README.read_text(), "Measured")
    rows = [
        r
        for r in table.splitlines()
        if r.startswith("| ") and not r.startswith(("| what", "| ---"))
    ]
    assert len(rows) >= 5
    for row in rows:
        assert re.search(r"\d{4}-\d\d-\d\d", row) and "core" in row, row
    timings = _section(README.read_text(), "Test it")
    assert len(re.findall(r"\d{4}-\d\d-\d\d, 2-core", timings)) >= 2
