"""Benchmark worker for sglkit itself (the project's venv): ``sglkit.Engine`` on the same job as the peers.

``python -m sglkit_worker < job.json`` (PYTHONPATH = this folder). Running sglkit in its own process, like each
peer, makes its peak RSS its own. The Engine runs its scheduler in this process; ``max_running_requests =
max_batch``; greedy, ``ignore_eos``; ``torch.set_num_threads(threads)``.
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

    import sglkit

    torch.set_num_threads(job["threads"])
    longest = max([len(p) for p in job["prompts"]] + [len(job["decode_prompt"]), len(job["ttft_prompt"])])
    per_seq = longest + max(job["output_len"], job["decode_len"]) + 8
    engine = sglkit.Engine(
        model_path=job["model"],
        dtype=job["dtype"],
        random_seed=job["seed"],
        max_running_requests=max(1, job["max_batch"]),
        max_total_tokens=per_seq * max(1, job["max_batch"]) + 1,
        disable_radix_cache=True,  # the peers' runs do not reuse prefixes either
    )

    def generate(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        params = {"temperature": 0, "max_new_tokens": max_tokens, "ignore_eos": True}
        outs = engine.generate(input_ids=prompts, sampling_params=[params] * len(prompts))
        return [o["output_ids"] for o in outs]

    return generate, f"sglkit {getattr(sglkit, '__version__', '')}".strip()


if __name__ == "__main__":
    sys.exit(peer_harness.main("sglkit", load))
