"""Benchmarks: run ``python -m benchmarks.run`` (the same as ``scirs2-optim bench``)."""
