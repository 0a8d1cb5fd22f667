"""Benchmark peer worker for HF transformers (the project's own venv): batched greedy ``generate``.

``python -m hf_worker < job.json`` (PYTHONPATH = this folder). ``AutoModelForCausalLM`` on ``job['model']`` in
``job['dtype']`` (SDPA attention, its default cache); prompts of one call are left-padded into batches of
``max_batch``; ``min_new_tokens = max_new_tokens`` so no EOS ends a row early. ``torch.set_num_threads``.
"""

from __future__ import annotations

import sys

try:
    from . import peer_harness
except ImportError:  # run as a top-level module
    import peer_harness


def load(job: dict):
    """(generate, version) for the harness."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from sglkit.bench.offline_throughput import hf_greedy_batches  # the project's venv: sglkit is importable

    torch.set_num_threads(job["threads"])
    model = AutoModelForCausalLM.from_pretrained(
        job["model"], dtype=getattr(torch, job["dtype"]), attn_implementation="sdpa", local_files_only=True
    ).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def generate(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        return hf_greedy_batches(model, prompts, job["max_batch"], max_tokens, pad)

    return generate, f"transformers {transformers.__version__} (torch {torch.__version__})"


if __name__ == "__main__":
    sys.exit(peer_harness.main("HF transformers", load))
