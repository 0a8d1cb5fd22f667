"""A paged forward for tensor-parallel tests, run the same way at tp_size 1 (in pytest) and on each rank.

Mirrors ``tests/models/conftest.py``'s ``PagedRunner``, with a KV pool of this rank's KV heads
(``model.num_kv_heads_per_rank``, as the model runner sizes it). ``scenario_logits(path)`` loads a checkpoint
in float32 (this process's parallel state decides the shard), packs the linear weights for oneDNN as the model
runner does on CPU, and returns the logits of packed prompts, two decode steps, a chunked prefill and a
request reusing a cached prefix (a radix hit).
"""

from __future__ import annotations

import torch

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend

PROMPT_LENGTHS = (11, 5, 23)


class RankPagedRunner:
    """KV pools of this rank's heads and the torch-native backend; requests by any hashable id."""

    def __init__(self, model, config, pool_size: int = 512) -> None:
        self.model = model
        self.req_to_token_pool = ReqToTokenPool(size=8, max_context_len=128)
        self.allocator = TokenToKVPoolAllocator(pool_size)
        self.kv_pool = MHATokenToKVPool(
            pool_size, config.num_hidden_layers, model.num_kv_heads_per_rank, config.head_dim, torch.float32
        )
        self.backend = TorchNativeAttnBackend()
        self.slots: dict = {}  # request id -> req_to_token row
        self.lens: dict = {}  # request id -> tokens already in the pool

    def fork(self, src, dst, num_tokens: int) -> None:
        """Start request ``dst`` sharing the first ``num_tokens`` KV slots of ``src``."""
        slot = self.req_to_token_pool.alloc()
        row = self.req_to_token_pool.req_to_token[self.slots[src], :num_tokens]
        self.req_to_token_pool.write(slot, 0, row.clone())
        self.slots[dst], self.lens[dst] = slot, num_tokens

    @torch.no_grad()
    def forward(self, items: list[tuple[object, list[int]]], mode: ForwardMode = ForwardMode.EXTEND) -> list:
        """items: [(request id, new token ids)] -> per request, logits [num_new, V] float32."""
        input_ids, positions, out_locs, starts = [], [], [], []
        for rid, tokens in items:
            if rid not in self.slots:
                self.slots[rid], self.lens[rid] = self.req_to_token_pool.alloc(), 0
            loc = self.allocator.alloc(len(tokens))
            self.req_to_token_pool.write(self.slots[rid], self.lens[rid], loc)
            starts.append(len(input_ids))
            input_ids += tokens
            positions += range(self.lens[rid], self.lens[rid] + len(tokens))
            out_locs.append(loc)
        prefix_lens = [self.lens[rid] for rid, _ in items]
        ext_lens = [len(tokens) for _, tokens in items]
        seq_lens = [p + e for p, e in zip(prefix_lens, ext_lens, strict=True)]
        batch = ForwardBatch(
            forward_mode=mode,
            batch_size=len(items),
            input_ids=torch.tensor(input_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            out_cache_loc=torch.cat(out_locs),
            req_pool_indices=torch.tensor([self.slots[rid] for rid, _ in items], dtype=torch.int64),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=prefix_lens if mode.is_extend() else [0] * len(items),
            extend_seq_lens_cpu=ext_lens,
            logits_indices=torch.arange(len(input_ids)),
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool=self.kv_pool,
            attn_backend=self.backend,
            extend_start_loc_cpu=starts,
        )
        self.backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)  # [T, H]
        logits = self.model.compute_logits(hidden[batch.logits_indices])  # [T, V]
        for (rid, _), n in zip(items, ext_lens, strict=True):
            self.lens[rid] += n
        return [logits[s : s + n] for s, n in zip(starts, ext_lens, strict=True)]


def scenario_logits(path) -> dict:
    """Load ``path`` (float32) and run the scenarios; {"logits": [[N_i, V] ...], "kv_heads", "kv_pool_shape"}."""
    from sglkit.layers.linear import pack_linear_weights
    from sglkit.models import load_model

    model, config = load_model(path, dtype="float32")
    pack_linear_weights(model)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(6, config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    out: list[torch.Tensor] = []
    runner = RankPagedRunner(model, config)  # packed prefill, then two decode steps
    out += runner.forward([(i, p) for i, p in enumerate(prompts)])
    for step in range(2):
        next_ids = [(7 * i + 3 * step + 40) % config.vocab_size for i in range(len(prompts))]
        out += runner.forward([(i, [t]) for i, t in enumerate(next_ids)], ForwardMode.DECODE)
    runner = RankPagedRunner(model, config)  # chunked prefill, then a request reusing a cached prefix
    out += runner.forward([("a", prompts[2][:9])])
    runner.fork("a", "b", 6)
    out += runner.forward([("a", prompts[2][9:]), ("b", prompts[0])])
    k_buffer, _ = runner.kv_pool.get_kv_buffer(0)
    return {"logits": out, "kv_heads": model.num_kv_heads_per_rank, "kv_pool_shape": tuple(k_buffer.shape)}
