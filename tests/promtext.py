"""Checks on Prometheus text and PromQL shared by the metrics and dashboard tests.

``lint`` applies promtool's metric lint rules that concern a node's metrics (so a machine
without promtool still checks them); ``promtool`` runs the real tool when it is installed
(Debian's ``prometheus`` package ships it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

PROMTOOL = shutil.which("promtool")

_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
_HELP = re.compile(r"^# HELP (\S+) (.*)$", re.M)
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? ", re.M)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="')
_SUFFIXES = {
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}
# As promtool's lint: abbreviated units, and units that are not the base unit.
_ABBREVIATIONS = frozenset({"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb",
                            "m", "h", "d"})  # fmt: skip
_BASE_UNITS = ("seconds", "bytes", "meters", "grams", "joules", "volts", "amperes")
_PREFIXES = ("nano", "micro", "milli", "centi", "deci", "kilo", "mega", "giga", "tera", "peta")
_NOT_BASE = {p + u: u for p in _PREFIXES for u in _BASE_UNITS} | {
    "minutes": "seconds", "hours": "seconds", "days": "seconds", "millis": "seconds",
}  # fmt: skip


def families(text: str) -> dict[str, str]:
    """Metric family name -> type, from the ``# TYPE`` lines."""
    return dict(_TYPE.findall(text))


def series(text: str) -> dict[str, set[str]]:
    """Every series name the text declares (histograms: ``_bucket``, ``_count``, ``_sum``),
    with the label names its samples carry (empty for a family with no sample yet)."""
    out: dict[str, set[str]] = {}
    for name, kind in families(text).items():
        for suffix in _SUFFIXES.get(kind, ("",)):
            out.setdefault(name + suffix, set())
    for name, labels in _SAMPLE.findall(text):
        out.setdefault(name, set()).update(_LABEL.findall(labels or ""))
    return out


def lint(text: str) -> list[str]:
    """Problems promtool's lint would report on these metrics (the rules that apply here)."""
    problems = []
    helps = dict(_HELP.findall(text))
    for name, kind in families(text).items():
        if not helps.get(name, "").strip():
            problems.append(f"{name}: no help text")
        if name != name.lower():
            problems.append(f"{name}: metric names should be written in snake_case")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: counter metrics should have _total suffix")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: non-counter metrics should not have _total suffix")
        if kind not in ("histogram", "summary") and name.endswith(("_bucket", "_count", "_sum")):
            problems.append(f"{name}: non-histogram metrics should not have {name[-4:]} suffix")
        words = name.lower().split("_")
        for word in words[1:]:
            if word in _ABBREVIATIONS:
                problems.append(f"{name}: metric names should not contain abbreviated units")
            if word in _NOT_BASE:
                problems.append(f"{name}: use base unit {_NOT_BASE[word]} instead of {word}")
        if kind in words[1:]:
            problems.append(f"{name}: metric name should not include type '{kind}'")
    for name in series(text):
        if name not in families(text) and not any(
            name == f + s for f, k in families(text).items() for s in _SUFFIXES.get(k, ("",))
        ):
            problems.append(f"{name}: a sample without a # TYPE line")
    return problems


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    """Run promtool (it must be installed); its output when it succeeds, else AssertionError."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


# -- PromQL -------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
GRAFANA_VARIABLES = {  # what Grafana puts in place of its variables, for checking a query
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


def substitute(expr: str) -> str:
    """``expr`` as Prometheus would get it: Grafana's interval variables replaced, and the
    dashboard's own (``$job``, ``$instance``, in label matchers) by a match-all regex."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names and
    grouping clauses left out)."""
    text = _STRING.sub('""', substitute(expr))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group()
        rest = text[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or rest.startswith("("):
            continue  # a keyword, or a function or an aggregation being called
        names.add(name)
    return names
