"""What every subcommand's parser shares: argument types that refuse bad values with a
clear message, and help that shows each option's default (argv is parsed in edgenode.cli)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from edgenode.units import parse_size

__all__ = ["HelpFormatter", "Parser", "finite_float", "int_list", "node_speeds",
           "non_negative_float", "positive_float", "positive_int", "shape", "size"]  # fmt: skip


# -- argument types ------------------------------------------------------------------


def positive_int(text: str) -> int:
    """A whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number, 0 or more."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None


def shape(text: str) -> tuple[int, ...]:
    """'224,224,3' or '224x224x3': a shape without the batch dimension."""
    values = int_list(text.replace("x", ","))
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected a shape such as 224,224,3, got {text!r}")
    return tuple(values)


def size(text: str) -> int:
    """'512MiB', '2GB', '1000': a size in bytes (edgenode.units)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def node_speeds(text: str) -> list[float]:
    """'5' -> five equal nodes; '1,1,2' -> three nodes with those relative speeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return [1.0] * count
        speeds = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a node count (5) or relative speeds (1,1,2), got {text!r}"
        ) from None
    if any(s <= 0 for s in speeds):
        raise argparse.ArgumentTypeError("node speeds must be positive")
    return speeds


# -- help ---------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Shows the default of every option that takes a value and has one, in one form.

    Options whose default is None say in their help what happens when they are not given;
    flags (store_true, count) have nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            return text
        if "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser (also for every subcommand) whose help shows defaults."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
