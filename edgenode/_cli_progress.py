"""Progress of `edgenode infer` on stderr: 'k/n done' lines, or a bar with the rate and the
time left (--progress; argv is parsed in edgenode.cli)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Protocol, TextIO

__all__ = ["PROGRESS_LINES", "Progress", "add_progress_arguments", "progress_for"]

PROGRESS_LINES = 10  # away from a terminal, progress is one line per tenth of the inputs
BAR_REFRESH_S = 0.2  # the bar is redrawn at most this often (and once at the end)
# The screen the bar assumes where the terminal's size is unknown (0x0, or not a terminal):
# tqdm would draw nothing on a screen 0 wide or 0 high.
BAR_SCREEN = os.terminal_size((80, 24))


class Progress(Protocol):
    def step(self, *, failed: bool) -> None:
        """One more input answered (or ``failed``)."""

    def close(self) -> None:
        """The last input is done: leave the terminal on a new line."""


def add_progress_arguments(p: argparse.ArgumentParser) -> None:
    """`infer --progress` and `--force-progress`."""
    p.add_argument(
        "--progress",
        action="store_const",
        const="bar",
        help="a bar with the rate and the time left on stderr when it is a terminal "
        "(elsewhere the lines as without it), even with --quiet",
    )
    p.add_argument(
        "--force-progress",
        dest="progress",
        action="store_const",
        const="always",
        help="the bar even when stderr is not a terminal",
    )


def progress_for(
    total: int, *, mode: str | None, quiet: bool, stream: TextIO | None = None
) -> Progress:
    """How ``total`` inputs show their progress: ``mode`` None (no --progress) counts on a
    terminal and writes whole lines elsewhere, for more than one input and not ``quiet``;
    "bar" draws a bar on a terminal; "always" draws it anywhere."""
    stream = stream or sys.stderr
    terminal = stream.isatty()
    if mode == "always" or (mode == "bar" and terminal):
        return _Bar(total, stream)
    return _Lines(total, enabled=mode is not None or (total > 1 and not quiet), stream=stream)


class _Lines:
    """'k/n done' on stderr: on a terminal one line rewritten in place; elsewhere (a log
    file, a pipe) a whole line per tenth of the inputs and for the last one."""

    def __init__(self, total: int, *, enabled: bool, stream: TextIO) -> None:
        self._stream = stream
        self._total = total
        self._enabled = enabled
        self._terminal = self._stream.isatty()
        self._every = max(1, total // PROGRESS_LINES)
        self._done = self._failed = 0

    def step(self, *, failed: bool) -> None:
        self._done += 1
        self._failed += failed
        if not self._enabled:
            return
        text = f"edgenode: {self._done}/{self._total} done"
        if self._failed:
            text += f" ({self._failed} failed)"
        if self._terminal:
            self._stream.write(f"\r{text}")
        elif self._done % self._every == 0 or self._done == self._total:
            self._stream.write(f"{text}\n")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._terminal and self._done:
            self._stream.write("\n")
            self._stream.flush()


class _Bar:
    """tqdm's bar: 'edgenode:  40%|████      | 2/5 [00:01<00:01,  1.95input/s, 1 failed]'."""

    def __init__(self, total: int, stream: TextIO) -> None:
        from tqdm import tqdm

        class _Quiet(tqdm):  # type: ignore[type-arg]  # tqdm[NoReturn] needs an iterable
            monitor_interval = 0  # no monitor thread: steps come from one event loop

        try:
            size = os.get_terminal_size(stream.fileno())
        except (AttributeError, OSError, ValueError):
            size = os.terminal_size((0, 0))
        self._failed = 0
        self._bar = _Quiet(
            total=total,
            desc="edgenode",
            unit="input",
            file=stream,
            mininterval=BAR_REFRESH_S,
            dynamic_ncols=size.columns > 0,  # follows the terminal's width
            ncols=None if size.columns else BAR_SCREEN.columns,
            nrows=None if size.lines else BAR_SCREEN.lines,
            disable=False,  # tqdm's None would hide it away from a terminal: asked for here
        )

    def step(self, *, failed: bool) -> None:
        if failed:
            self._failed += 1
            self._bar.set_postfix_str(f"{self._failed} failed", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
