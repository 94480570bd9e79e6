"""Matplotlib helpers: grouped bars, and figures saved with a footer naming the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def grouped_bars(
    ax: Any, series: Sequence[tuple[str, Sequence[Any]]], ticks: Sequence[str]
) -> None:
    """One bar group per tick, one bar per series (values in seconds, drawn in ms). A value
    that is a list of samples is drawn as its median with a p10-p90 whisker."""
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * width
        x = np.arange(len(ticks)) + offset
        if values and isinstance(values[0], (list, tuple, np.ndarray)):
            ms = [np.asarray(v) * 1e3 for v in values]
            mid = np.array([np.median(v) for v in ms])
            low = mid - np.array([np.percentile(v, 10) for v in ms])
            high = np.array([np.percentile(v, 90) for v in ms]) - mid
            ax.bar(x, mid, width, label=f"{label}, p10-p90")
            ax.errorbar(x, mid, yerr=[low, high], fmt="none", ecolor="black", capsize=3, lw=1)
        else:
            ax.bar(x, np.asarray(values) * 1e3, width, label=label)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def save_figures(plt: Any, figures: Mapping[str, Any], footer: str, out_dir: Path) -> list[str]:
    """Save each figure as ``out_dir/NAME`` with ``footer`` (command, machine, date) under
    it, and close it; the names written."""
    for name, fig in figures.items():
        fig.text(0.01, 0.01, footer, fontsize=7, color="0.35", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
    return list(figures)
