"""A paged forward for tensor-parallel tests, run the same way at tp_size 1 (in pytest) and on each rank.

Uses ``sglkit.testing.paged_runner.PagedRunner``, whose KV pool holds this rank's KV heads
(``model.num_kv_heads_per_rank``, as the model runner sizes it). ``scenario_logits(path)`` loads a checkpoint
in float32 (this process's parallel state decides the shard), packs the linear weights for oneDNN as the model
runner does on CPU, and returns the logits of packed prompts, two decode steps, a chunked prefill and a
request reusing a cached prefix (a radix hit).
"""

from __future__ import annotations

import torch

from sglkit.core.forward_batch import ForwardMode
from sglkit.testing.paged_runner import PagedRunner

PROMPT_LENGTHS = (11, 5, 23)


def scenario_logits(path) -> dict:
    """Load ``path`` (float32) and run the scenarios; {"logits": [[N_i, V] ...], "kv_heads", "kv_pool_shape"}."""
    from sglkit.layers.linear import pack_linear_weights
    from sglkit.models import load_model

    model, config = load_model(path, dtype="float32")
    pack_linear_weights(model)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(6, config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    out: list[torch.Tensor] = []
    runner = PagedRunner(model, config, pool_size=512)  # packed prefill, then two decode steps
    out += runner.forward([(i, p) for i, p in enumerate(prompts)])
    for step in range(2):
        next_ids = [(7 * i + 3 * step + 40) % config.vocab_size for i in range(len(prompts))]
        out += runner.forward([(i, [t]) for i, t in enumerate(next_ids)], ForwardMode.DECODE)
    runner = PagedRunner(
        model, config, pool_size=512
    )  # chunked prefill, then a request reusing a cached prefix
    out += runner.forward([("a", prompts[2][:9])])
    runner.fork("a", "b", 6)
    out += runner.forward([("a", prompts[2][9:]), ("b", prompts[0])])
    k_buffer, _ = runner.kv_pool.get_kv_buffer(0)
    return {"logits": out, "kv_heads": model.num_kv_heads_per_rank, "kv_pool_shape": tuple(k_buffer.shape)}
