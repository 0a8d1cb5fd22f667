"""Logits -> next token ids: the batched sampler behind ``ModelRunner.sample`` (scheduler -> runner -> here).

Order of operations on a row: logit_bias -> min_new_tokens (EOS / stop_token_ids masked; not on constrained rows,
whose grammar decides where the output ends) -> penalties (repetition over prompt+output tokens, vLLM's rule;
frequency/presence over output tokens, OpenAI's rule) -> the grammar's vocabulary mask (constrained rows) ->
greedy rows take argmax -> other rows: temperature, softmax, top_k, top_p (on the top-k-renormalized
distribution), min_p, one inverse-CDF draw.

Each sampled row uses one uniform number: seeded rows (``sampling_seed``) take ``hash(seed, position)``
(``seeded.py``), the others come from one ``torch.rand`` over the batch on the default generator. The CDF runs in
vocabulary order, so a seeded row gives the same tokens whatever else is in the batch. The device path has no
host sync (control flow comes from flags computed on the host), so ``sample`` can run inside a CUDA graph.
``sample`` never modifies ``logits``: logprobs are computed from the raw logits.
"""

from __future__ import annotations

import torch

from sglkit.runtime.executor.sampling.batch_info import SamplingBatchInfo
from sglkit.runtime.executor.sampling.filters import draw_from_probs, filter_probs
from sglkit.runtime.executor.sampling.penalties import apply_penalties, apply_penalties_sparse
from sglkit.runtime.executor.sampling.seeded import seeded_uniforms

__all__ = ["Sampler", "apply_logit_processors", "make_generator"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (the runner's generator for unseeded rows)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def apply_logit_processors(
    logits: torch.Tensor, info: SamplingBatchInfo, sparse_penalties: bool | None = None
) -> torch.Tensor:
    """logits: [B, V] -> new float32 [B, V] with bias, min_new_tokens ban, penalties and the grammar mask applied.

    The input is untouched (see ``penalties.py`` for the penalty rules). ``sparse_penalties``: apply penalties
    only at the seen tokens (reads back; default: on CPU) rather than densely over the rows.
    """
    if sparse_penalties is None:
        sparse_penalties = logits.device.type == "cpu"
    out = logits.to(torch.float32, copy=True).contiguous()
    flat = out.view(-1)
    if info.bias_index is not None:
        flat.index_add_(0, info.bias_index, info.bias_values)
    if info.banned_index is not None:
        flat.index_fill_(0, info.banned_index, float("-inf"))
    if info.penalty_rows is not None:
        table, rows, batch_rows = info.penalty_counts, info.penalty_rows, info.penalty_batch_rows
        part = out if batch_rows is None else out.index_select(0, batch_rows)  # [P, V]
        penalties = (info.repetition_penalties, info.frequency_penalties, info.presence_penalties)
        if sparse_penalties:  # only the seen tokens; the nonzero() it needs is free on CPU
            part = apply_penalties_sparse(part, table, rows, *penalties)
        else:  # dense and sync-free: graph-safe on accelerators
            part = apply_penalties(
                part, table.counts.index_select(0, rows), table.seen.index_select(0, rows), *penalties
            )
        if batch_rows is None:
            out = part
        else:
            out.index_copy_(0, batch_rows, part)
    if info.vocab_mask is not None:
        info.apply_vocab_mask(out, info.vocab_mask, info.vocab_mask_rows)
    return out


class Sampler:
    """Turns a batch of logits into next token ids (see the module docstring for the order of steps).

    ``cpu_readback``: on CPU, take the paths that read values back (free there): top_p looks only as wide as it
    needs (``filters.py``) and penalties touch only the seen tokens (``penalties.py``). Off, CPU runs the
    accelerator's sync-free path.
    """

    def __init__(self, cpu_readback: bool = True) -> None:
        self.cpu_readback = cpu_readback

    def sample(
        self, logits: torch.Tensor, info: SamplingBatchInfo, default_generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """logits: [B, V] -> next_token_ids: [B] int64. ``logits`` is left unchanged.

        Unseeded rows draw from ``default_generator`` (torch's global RNG when None): one ``torch.rand(B)`` per
        step that has any unseeded sampled row.
        """
        private = info.needs_logit_processing  # logits becomes our own float32 copy, scaled in place below
        if private:
            logits = apply_logit_processors(logits, info, self.cpu_readback and logits.device.type == "cpu")
        if info.all_greedy:
            return logits.argmax(dim=-1)
        greedy_ids = logits.argmax(dim=-1) if info.any_greedy else None
        temperatures = info.temperatures.unsqueeze(1)  # [B, 1]
        scaled = logits.div_(temperatures) if private else logits.float() / temperatures
        probs = torch.softmax(scaled, dim=-1)  # [B, V]
        del logits, scaled  # the processed copy, if any, is not needed past this point
        probs = filter_probs(
            probs,
            info.top_ks,
            info.top_ps,
            info.min_ps,
            info.need_top_k,
            info.need_top_p,
            info.need_min_p,
            info.filter_width,
            adaptive_width=self.cpu_readback and probs.device.type == "cpu",
        )
        next_ids = draw_from_probs(probs, self.uniforms(info, default_generator, probs.device))
        if greedy_ids is not None:
            next_ids = torch.where(info.is_greedy, greedy_ids, next_ids)
        return next_ids

    @staticmethod
    def uniforms(
        info: SamplingBatchInfo, default_generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """[B] float32 U[0, 1): hash(seed, position) on seeded rows, the default generator's draws elsewhere."""
        if info.all_seeded:
            return seeded_uniforms(info.seed_lo, info.seed_hi, info.positions)
        draws = torch.rand(info.batch_size, generator=default_generator, device=device)
        if not info.any_seeded:
            return draws
        return torch.where(info.is_seeded, seeded_uniforms(info.seed_lo, info.seed_hi, info.positions), draws)
