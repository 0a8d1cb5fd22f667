"""Test fixtures: a minimal paged forward (tests -> PagedRunner -> model over the real KV pools, torch-native).

Model tests compare logits through sglkit's paged KV pool (packed requests, cached prefixes, decode steps)
with HF transformers without the scheduler; tensor-parallel tests run the same forward on every rank.
"""

from __future__ import annotations

import torch

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend

__all__ = ["PagedRunner"]


class PagedRunner:
    """A minimal model runner over the real KV pools and torch-native backend, for tests.

    Requests are identified by any hashable id; each owns a req_to_token row and a growing KV length.
    """

    def __init__(self, model, config, dtype: torch.dtype = torch.float32, pool_size: int = 2048) -> None:
        self.model = model
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # This rank's KV heads under tensor parallelism (as the model runner sizes its pool), else the config's.
        kv_heads = getattr(model, "num_kv_heads_per_rank", None) or config.num_key_value_heads
        self.req_to_token_pool = ReqToTokenPool(size=8, max_context_len=512)
        self.allocator = TokenToKVPoolAllocator(pool_size)
        self.kv_pool = MHATokenToKVPool(pool_size, config.num_hidden_layers, kv_heads, head_dim, dtype)
        self.backend = TorchNativeAttnBackend()
        self.slots: dict = {}  # request id -> req_to_token row
        self.lens: dict = {}  # request id -> tokens already in the pool

    def fork(self, src, dst, num_tokens: int) -> None:
        """Start request ``dst`` whose first ``num_tokens`` KV slots are shared with ``src`` (a radix hit)."""
        slot = self.req_to_token_pool.alloc()
        src_row = self.req_to_token_pool.req_to_token[self.slots[src], :num_tokens]
        self.req_to_token_pool.write(slot, 0, src_row.clone())
        self.slots[dst], self.lens[dst] = slot, num_tokens

    @torch.no_grad()
    def forward(self, items: list[tuple[object, list[int]]], mode: ForwardMode = ForwardMode.EXTEND) -> list:
        """items: [(request id, new token ids)] -> per request, logits [num_new, V] float32 of its new tokens."""
        input_ids, positions, out_locs, starts = [], [], [], []
        for rid, tokens in items:
            if rid not in self.slots:
                self.slots[rid], self.lens[rid] = self.req_to_token_pool.alloc(), 0
            prefix = self.lens[rid]
            loc = self.allocator.alloc(len(tokens))
            self.req_to_token_pool.write(self.slots[rid], prefix, loc)
            starts.append(len(input_ids))
            input_ids += tokens
            positions += range(prefix, prefix + len(tokens))
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
        hidden = self.model(batch.input_ids, batch.positions, batch)
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        for (rid, _), n in zip(items, ext_lens, strict=True):
            self.lens[rid] += n
        return [logits[s : s + n] for s, n in zip(starts, ext_lens, strict=True)]
