"""Benchmarks: offline throughput (Engine vs HF transformers, radix on/off) and online serving."""
