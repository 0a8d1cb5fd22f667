"""Sampled tokens -> host lists (sampler -> here -> output path): one device -> host copy per step.

After ``ModelRunner.sample`` the next token ids and, for the rows that asked, the logprobs (the chosen token's,
the top ``top_logprobs_num`` and those of ``token_ids_logprob``) are gathered on the device, packed into one
float64 tensor (token ids are exact in float64) and read with a single ``.tolist()``. Without logprobs the read
is ``next_ids.tolist()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sglkit.core.req import Req
from sglkit.runtime.executor.sampling.logprobs import compute_logprobs

__all__ = ["RowLogprobs", "StepReadout", "read_step"]


@dataclass
class RowLogprobs:
    """One row's logprobs for the token it just sampled."""

    token_logprob: float
    top: list[tuple[float, int]] | None = None  # top_logprobs_num (logprob, token_id), most likely first
    token_ids: list[tuple[float, int]] | None = None  # (logprob, token_id) for each of token_ids_logprob


@dataclass
class StepReadout:
    """The host copy of one step's sampling results."""

    next_ids: list[int]
    logprobs: dict[int, RowLogprobs] = field(default_factory=dict)  # batch row -> its logprobs


def read_step(next_ids: torch.Tensor, logits: torch.Tensor, reqs: list[Req]) -> StepReadout:
    """next_ids: [B] int64, logits: [B, V] raw -> next ids and the requested logprobs, in one host copy."""
    rows = [i for i, r in enumerate(reqs) if r.return_logprob and not r.finished()]
    if not rows:
        return StepReadout(next_ids.tolist())
    device = logits.device
    index = None if len(rows) == len(reqs) else torch.tensor(rows, dtype=torch.int64, device=device)
    lp = compute_logprobs(logits if index is None else logits.index_select(0, index))  # [R, V]
    ids = next_ids if index is None else next_ids.index_select(0, index)  # [R]
    chosen = lp.gather(1, ids.unsqueeze(1)).squeeze(1)  # [R]
    num_top = max(reqs[i].top_logprobs_num for i in rows)
    num_top = min(num_top, lp.shape[-1])
    top_values, top_ids = lp.topk(num_top, dim=-1) if num_top > 0 else (lp[:, :0], lp[:, :0])  # [R, k]
    asked = [reqs[i].token_ids_logprob or [] for i in rows]
    width = max(len(a) for a in asked)
    if width:
        padded = torch.tensor([a + [0] * (width - len(a)) for a in asked], dtype=torch.int64)
        listed = lp.gather(1, padded.to(device, non_blocking=True))  # [R, width]
    else:
        listed = lp[:, :0]
    parts = [next_ids, chosen, top_values.flatten(), top_ids.flatten(), listed.flatten()]
    flat = torch.cat([p.to(torch.float64) for p in parts]).tolist()
    num_rows, batch = len(rows), len(reqs)
    out = StepReadout([int(x) for x in flat[:batch]])
    offset = batch + num_rows
    chosen_values = flat[batch:offset]
    top_v = flat[offset : offset + num_rows * num_top]
    offset += num_rows * num_top
    top_i = flat[offset : offset + num_rows * num_top]
    offset += num_rows * num_top
    listed_v = flat[offset:]
    for j, i in enumerate(rows):
        req = reqs[i]
        row = RowLogprobs(chosen_values[j])
        if req.top_logprobs_num > 0:
            k = min(req.top_logprobs_num, num_top)
            start = j * num_top
            row.top = [(top_v[start + c], int(top_i[start + c])) for c in range(k)]
        if req.token_ids_logprob is not None:
            start = j * width
            row.token_ids = [(listed_v[start + c], t) for c, t in enumerate(req.token_ids_logprob)]
        out.logprobs[i] = row
    return out
