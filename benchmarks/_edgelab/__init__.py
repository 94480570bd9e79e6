"""Pieces of benchmarks/edgelab.py, one module per concern."""
