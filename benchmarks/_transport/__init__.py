"""The questions benchmarks/transport.py answers, one module each, and the child processes
that measure them."""
