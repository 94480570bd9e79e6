"""The questions benchmarks/inference.py answers, one module each (the script's sections)."""
