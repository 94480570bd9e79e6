"""What every benchmark shares: node processes and clusters, models and plans, statistics,
tables and plots.

The benchmarks run as scripts (``.venv/bin/python benchmarks/NAME.py``), so ``benchmarks/``
is on ``sys.path`` and this package imports as ``harness``; the repository root is put there
too, so that ``edgenode`` imports from the work tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
