"""Sizes written by people ("400 MiB", "2GB", "1000"), read the same way by the command line
and node.toml. Imports nothing."""

from __future__ import annotations

import re

__all__ = ["SIZE_EXAMPLE", "SIZE_UNITS", "parse_size"]

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
}
SIZE_EXAMPLE = "512MiB or 2GB"

_SIZE_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number and an optional unit (B, kB, KiB, MB, MiB, GB, GiB; case
    does not matter); ValueError when it is not one."""
    match = _SIZE_RE.fullmatch(text)
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"expected a size such as {SIZE_EXAMPLE}, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])
