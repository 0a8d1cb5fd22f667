"""Schedule batch: turns a list of admitted Req into KV allocations and a ForwardBatch (scheduler -> model runner).

Extend: request i feeds fill_ids[prefix_len_i : prefix_len_i + extend_len_i] at those positions; logits are
computed for the last token of requests whose fill completes (to sample) and for prompt positions whose
logprobs were asked for. Decode: every request feeds its last sampled token at position kv_len.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from sglkit.cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.core.req import Req


@dataclass
class LogitRows:
    """Where each request's logit rows sit in the logits the runner returns."""

    sample_row: dict[int, int] = field(default_factory=dict)  # batch index -> row used to sample
    input_rows: dict[int, tuple[int, int, int]] = field(
        default_factory=dict
    )  # idx -> (first row, count, first pos)


@dataclass
class ScheduleBatch:
    """A batch of requests for one forward pass, plus the layout of its logits."""

    reqs: list[Req]
    forward_mode: ForwardMode
    extend_lens: list[int] = field(default_factory=list)
    prefix_lens: list[int] = field(default_factory=list)
    rows: LogitRows = field(default_factory=LogitRows)

    def batch_size(self) -> int:
        """Number of requests."""
        return len(self.reqs)

    def num_new_tokens(self) -> int:
        """Tokens fed by this pass."""
        return sum(self.extend_lens) if self.forward_mode.is_extend() else len(self.reqs)


def input_logprob_start(req: Req) -> int | None:
    """Next prompt position whose logits are needed for input logprobs; None when none are asked for or all
    are collected. A prompt prefilled in chunks continues where the previous chunk stopped; a request
    re-admitted after a retraction does not collect them twice."""
    if not req.return_logprob or req.logprob_start_len < 0:
        return None
    collected = len(req.input_token_logprobs)
    if req.logprob_start_len == 0 and collected:
        collected -= 1  # the first prompt token's (None, id) entry has no logits row
    position = max(req.logprob_start_len - 1, 0) + collected
    return position if position < len(req.origin_input_ids) - 1 else None


def build_extend_batch(
    batch: ScheduleBatch,
    out_cache_loc: torch.Tensor,
    req_to_token_pool: ReqToTokenPool,
    device: str,
) -> dict:
    """Write req_to_token for the new tokens and return ForwardBatch fields for an extend pass."""
    input_ids: list[int] = []
    positions: list[int] = []
    logits_indices: list[int] = []
    offset = 0
    start_locs = []
    for i, req in enumerate(batch.reqs):
        prefix_len, ext_len = batch.prefix_lens[i], batch.extend_lens[i]
        end = prefix_len + ext_len
        start_locs.append(offset)
        input_ids.extend(req.fill_ids[prefix_len:end])
        positions.extend(range(prefix_len, end))
        req_to_token_pool.write(req.req_pool_idx, prefix_len, out_cache_loc[offset : offset + ext_len])
        first_pos = input_logprob_start(req)
        prompt_end = len(req.origin_input_ids) - 1  # logits at positions < prompt_end score prompt tokens
        if first_pos is not None:
            lo, hi = max(first_pos, prefix_len), min(prompt_end, end)
            if hi > lo:
                batch.rows.input_rows[i] = (len(logits_indices), hi - lo, lo)
                logits_indices.extend(offset + p - prefix_len for p in range(lo, hi))
        if end == len(req.fill_ids):  # this pass completes the fill: sample from the last token
            batch.rows.sample_row[i] = len(logits_indices)
            logits_indices.append(offset + ext_len - 1)
        offset += ext_len
    seq_lens = [p + e for p, e in zip(batch.prefix_lens, batch.extend_lens)]
    return dict(
        input_ids=input_ids,
        positions=positions,
        seq_lens=seq_lens,
        logits_indices=logits_indices,
        extend_prefix_lens_cpu=list(batch.prefix_lens),
        extend_seq_lens_cpu=list(batch.extend_lens),
        extend_start_loc_cpu=start_locs,
    )


def build_decode_batch(
    batch: ScheduleBatch, out_cache_loc: torch.Tensor, req_to_token_pool: ReqToTokenPool
) -> dict:
    """ForwardBatch fields for a decode pass; ``to_forward_batch`` records each request's new slot in
    req_to_token on the device (``write_decode_slots``)."""
    input_ids, positions = [], []
    for i, req in enumerate(batch.reqs):
        input_ids.append(req.output_ids[-1])
        positions.append(req.kv_len)
        batch.rows.sample_row[i] = i
    return dict(
        input_ids=input_ids,
        positions=positions,
        seq_lens=[p + 1 for p in positions],
        logits_indices=list(range(len(batch.reqs))),
        extend_prefix_lens_cpu=positions,
        extend_seq_lens_cpu=[1] * len(batch.reqs),
        extend_start_loc_cpu=list(range(len(batch.reqs))),
    )


def stage_int_lists(parts: list[list[int]], device: str | torch.device) -> list[torch.Tensor]:
    """Lists of ints -> int64 tensors on ``device`` through one host buffer and one copy (pinned and
    non-blocking on CUDA, none at all on CPU); the results are views of one device tensor, in order."""
    sizes = [len(part) for part in parts]
    host = torch.tensor(list(itertools.chain.from_iterable(parts)), dtype=torch.int64)  # [sum(sizes)]
    if torch.device(device).type == "cuda":
        host = host.pin_memory().to(device, non_blocking=True)
    return list(host.split(sizes))


def write_decode_slots(
    req_to_token_pool: ReqToTokenPool,
    req_pool_indices: torch.Tensor,
    positions: torch.Tensor,
    out_cache_loc: torch.Tensor,
) -> None:
    """req_to_token[req_pool_indices[i], positions[i]] = out_cache_loc[i], all tensors on the pool's device."""
    table = req_to_token_pool.req_to_token
    table[req_pool_indices, positions] = out_cache_loc.to(table.dtype)


def to_forward_batch(batch: ScheduleBatch, fields: dict, out_cache_loc: torch.Tensor, runner) -> ForwardBatch:
    """Pack python lists into device tensors (one staged copy) and wrap them in a ForwardBatch for ``runner``;
    in decode, also record each request's new KV slot in req_to_token (on the device)."""
    device = runner.device
    input_ids, positions, req_pool_indices, seq_lens, logits_indices = stage_int_lists(
        [
            fields["input_ids"],
            fields["positions"],
            [r.req_pool_idx for r in batch.reqs],
            fields["seq_lens"],
            fields["logits_indices"],
        ],
        device,
    )
    out_cache_loc = out_cache_loc.to(device)
    if batch.forward_mode.is_decode():
        write_decode_slots(runner.req_to_token_pool, req_pool_indices, positions, out_cache_loc)
    return ForwardBatch(
        forward_mode=batch.forward_mode,
        batch_size=len(batch.reqs),
        input_ids=input_ids,
        positions=positions,
        out_cache_loc=out_cache_loc,
        req_pool_indices=req_pool_indices,
        seq_lens=seq_lens,
        seq_lens_cpu=fields["seq_lens"],
        extend_prefix_lens_cpu=fields["extend_prefix_lens_cpu"],
        extend_seq_lens_cpu=fields["extend_seq_lens_cpu"],
        extend_start_loc_cpu=fields["extend_start_loc_cpu"],
        logits_indices=logits_indices,
        req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool=runner.token_to_kv_pool,
        attn_backend=runner.attn_backend,
    )


def alloc_token_slots(allocator: TokenToKVPoolAllocator, tree_cache, num_tokens: int) -> torch.Tensor | None:
    """Allocate ``num_tokens`` KV slots, evicting unlocked radix-cache leaves when short; None if impossible."""
    shortfall = num_tokens - allocator.available_size()
    if shortfall > 0:
        tree_cache.evict(shortfall)
    return allocator.alloc(num_tokens)
