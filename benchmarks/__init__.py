"""make bench: `python -m benchmarks.run` from the repository root (benchmarks/README.md)."""
