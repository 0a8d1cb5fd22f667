"""Benchmark peer workers: self-contained scripts each side runs in its own Python (see peer_harness)."""
