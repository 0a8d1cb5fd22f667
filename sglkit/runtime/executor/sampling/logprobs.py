"""Logprobs from raw logits (sampler side -> scheduler's output path): log-softmax, chosen tokens, top-k.

Logprobs are always computed from the logits as the model returned them (before bias, penalties, temperature
or filters), as SGLang reports them.
"""

from __future__ import annotations

import torch

__all__ = ["compute_logprobs", "get_token_logprobs", "get_top_logprobs"]


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """logits: [N, V] (raw, before any sampling transform) -> log-softmax [N, V] float32."""
    return torch.log_softmax(logits.float(), dim=-1)


def get_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """logprobs: [N, V], token_ids: [N] -> the chosen tokens' logprobs [N]."""
    ids = token_ids.to(device=logprobs.device, dtype=torch.int64).unsqueeze(1)
    return logprobs.gather(1, ids).squeeze(1)


def get_top_logprobs(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs: [N, V] -> (values [N, k'], ids [N, k']) with k' = min(k, V), most likely first."""
    k = max(0, min(int(k), logprobs.shape[-1]))
    values, ids = logprobs.topk(k, dim=-1)
    return values, ids
