"""Embedding model runner: token id lists -> one prefill pass -> pooled vectors (embedding scheduler -> here -> model).

Prefill only. Decoder embedders and reward models run through the paged KV pool and the attention backend like
generation prefill: each pass takes KV slots for its tokens and gives them all back at the end, so the pool only
needs room for one batch (``max(max_prefill_tokens, context_len)`` tokens, or ``--max-total-tokens``).
Encoders (BERT, ``uses_kv_cache = False``) need no pool at all. A sentence-transformers folder's pooling
(``modules.json``) replaces the model's default pooling, and its ``max_seq_length`` caps the context.

``ModelRunner``'s loading path, weight swapping and context-length rule; only the sizing hooks differ.
"""

from __future__ import annotations

import logging

import torch

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.pooler import Pooler
from sglkit.models.pooling_config import read_max_seq_length, read_pooling_config
from sglkit.runtime.executor.model_runner import ModelRunner

logger = logging.getLogger("sglkit.runtime.executor.model_runner")

DEFAULT_MAX_BATCH_SIZE = 256  # inputs per pass when --max-running-requests is unset


class EmbeddingModelRunner(ModelRunner):
    """Loads an embedding / reward model and turns batches of token id lists into vectors."""

    def _after_load(self) -> None:
        """A sentence-transformers folder's pooling replaces the model's default."""
        pooling = read_pooling_config(self.model_path)
        if pooling is not None:
            self.model.pooler = Pooler.from_config(pooling)

    def _resolve_context_len(self) -> int:
        """The generation rule, then the sentence-transformers ``max_seq_length`` cap."""
        context_len = super()._resolve_context_len()
        max_seq_length = read_max_seq_length(self.model_path)
        if max_seq_length and max_seq_length < context_len:
            logger.info(
                f"Context length capped to the sentence-transformers max_seq_length ({max_seq_length})."
            )
            context_len = max_seq_length
        return context_len

    def _resolve_pool_size(self) -> int:
        """Room for one batch; an encoder keeps no KV (the context length, for bookkeeping only)."""
        if not self.uses_kv_cache:
            return self.context_len
        args = self.server_args
        return args.max_total_tokens or max(args.max_prefill_tokens, self.context_len)

    def _resolve_max_running_requests(self) -> int:
        """Inputs per pass: --max-running-requests, else DEFAULT_MAX_BATCH_SIZE."""
        return self.server_args.max_running_requests or DEFAULT_MAX_BATCH_SIZE

    @property
    def max_input_len(self) -> int:
        """Longest input one pass can take: the context length, or the KV pool if that is smaller."""
        return min(self.context_len, self.max_total_num_tokens)

    @property
    def pooling_description(self) -> str:
        """e.g. 'last, normalized' or 'score head' (for logs and /get_server_info)."""
        pooler = getattr(self.model, "pooler", None)
        if hasattr(self.model, "score"):
            return "score head on the last token"
        if pooler is None:
            return "model-defined"
        return f"{pooler.pooling_type.value}" + (", normalized" if pooler.normalize else "")

    @torch.inference_mode()
    def embed(self, input_ids: list[list[int]]) -> torch.Tensor:
        """One prefill pass over ``input_ids`` (B lists) -> float32 [B, D] (pooled vectors or scores)."""
        seq_lens = [len(ids) for ids in input_ids]
        starts = [0]
        for n in seq_lens[:-1]:
            starts.append(starts[-1] + n)
        num_tokens = sum(seq_lens)
        device = self.device
        lens_t = torch.tensor(seq_lens, dtype=torch.int64, device=device)
        flat_ids = torch.tensor([t for ids in input_ids for t in ids], dtype=torch.int64, device=device)
        positions = torch.arange(num_tokens, device=device) - torch.repeat_interleave(
            torch.tensor(starts, dtype=torch.int64, device=device), lens_t
        )
        slots: list[int] = []
        out_cache_loc = torch.empty(0, dtype=torch.int64, device=device)
        try:
            if self.uses_kv_cache:
                out_cache_loc = self._take_slots(seq_lens, starts, slots)
            forward_batch = ForwardBatch(
                forward_mode=ForwardMode.EXTEND,
                batch_size=len(seq_lens),
                input_ids=flat_ids,
                positions=positions,
                out_cache_loc=out_cache_loc,
                req_pool_indices=torch.tensor(slots or [0] * len(seq_lens), dtype=torch.int64, device=device),
                seq_lens=lens_t,
                seq_lens_cpu=seq_lens,
                extend_prefix_lens_cpu=[0] * len(seq_lens),
                extend_seq_lens_cpu=seq_lens,
                logits_indices=torch.empty(0, dtype=torch.int64, device=device),
                req_to_token_pool=self.req_to_token_pool,
                token_to_kv_pool=self.token_to_kv_pool,
                attn_backend=self.attn_backend,
                extend_start_loc_cpu=starts,
            )
            if self.uses_kv_cache:
                self.attn_backend.init_forward_metadata(forward_batch)
            hidden = self.model(flat_ids, positions, forward_batch)  # [T, H]
            return self.model.pool(hidden, forward_batch).float()
        finally:
            for slot in slots:
                self.req_to_token_pool.free(slot)
            if out_cache_loc.numel():
                self.token_to_kv_pool_allocator.free(out_cache_loc)

    def _take_slots(self, seq_lens: list[int], starts: list[int], slots: list[int]) -> torch.Tensor:
        """Take one request slot per input (appended to ``slots``) and KV slots for every token."""
        if len(seq_lens) > self.req_to_token_pool.available_size():
            raise RuntimeError(
                f"A batch of {len(seq_lens)} inputs exceeds {self.req_to_token_pool.size} slots."
            )
        out_cache_loc = self.token_to_kv_pool_allocator.alloc(sum(seq_lens))
        if out_cache_loc is None:
            raise RuntimeError(
                f"A batch of {sum(seq_lens)} tokens exceeds the KV pool ({self.max_total_num_tokens})."
            )
        for n, start in zip(seq_lens, starts):
            slot = self.req_to_token_pool.alloc()
            slots.append(slot)
            self.req_to_token_pool.write(slot, 0, out_cache_loc[start : start + n])
        return out_cache_loc

    def forward(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Not available: embedding models produce vectors (``embed``), not logits."""
        raise RuntimeError("An embedding model runner has no logits; use embed().")
