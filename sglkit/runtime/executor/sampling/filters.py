"""Probabilities -> filtered probabilities -> token ids (sampler -> here): top-k / top-p / min-p and the draw.

One descending sort (or a ``topk`` as wide as the largest top_k, when no row needs the full order) per step gives
every row's thresholds; on an accelerator nothing here reads a value back to the host, so a step costs the same
whatever the rows ask for and runs inside a CUDA graph. On CPU, where reading back costs nothing and a full sort
is slow (~4 ms per 32k-token row), top_p without top_k looks at the 256, 1024, ... largest probabilities until
every row's kept mass is inside (``adaptive_width``); the result is the same.
"""

from __future__ import annotations

import torch

__all__ = ["DRAW_BLOCK", "draw_from_probs", "filter_probs"]


def filter_probs(
    probs: torch.Tensor,
    top_ks: torch.Tensor,
    top_ps: torch.Tensor,
    min_ps: torch.Tensor,
    need_top_k: bool = True,
    need_top_p: bool = True,
    need_min_p: bool = True,
    width: int | None = None,
    adaptive_width: bool | None = None,
) -> torch.Tensor:
    """probs: [N, V] -> [N, V] with tokens outside top_k / top_p / min_p zeroed (not renormalized).

    Each filter is a per-row probability threshold (ties at the threshold are kept, so the result depends only
    on the row): top_k keeps probabilities >= the k-th largest; top_p keeps the most likely tokens whose mass
    reaches top_p of the top-k-renormalized distribution; min_p keeps probabilities >= min_p * the largest.
    The most likely token is always kept. ``top_ks``: [N] int, clamped to [1, V] (V: no limit); ``top_ps``,
    ``min_ps``: [N].

    ``width`` (default V): how many of each row's largest probabilities to look at; it must be >= every limited
    top_k, and V when a row with top_p < 1 has no top_k (the sampler computes it from the params on the host).
    Past the width only ties with a row's k-th value can be kept, so the result does not depend on it.
    ``adaptive_width`` (default: on CPU tensors): narrow a full width to what top_p needs (reads values back).
    """
    if not (need_top_k or need_top_p or need_min_p):
        return probs
    vocab = probs.shape[-1]
    width = vocab if width is None else max(1, min(int(width), vocab))
    top_ks = top_ks.clamp(1, vocab)
    if adaptive_width is None:
        adaptive_width = probs.device.type == "cpu"
    ranked = None
    if adaptive_width and need_top_p and width == vocab:
        ranked = _adaptive_ranked(probs, top_ks, top_ps, need_top_k)
        width = ranked.shape[-1]
    elif width < vocab:
        ranked = probs.topk(width, dim=-1).values  # [N, width], descending
    else:
        ranked = probs.sort(dim=-1, descending=True).values  # [N, V]
    zero = ranked.new_zeros(())
    threshold = ranked.new_zeros(probs.shape[0])
    largest = ranked[:, 0].clone()  # [N]
    if need_top_k or need_top_p:
        threshold = _top_k_threshold(ranked, top_ks, vocab)
    if need_top_p:
        # In place on the sorted copy (peak memory: probs, the sorted copy, its cumsum).
        kept = ranked.mul_(ranked >= threshold.unsqueeze(1))  # the top-k part, still descending
        mass_before = kept.cumsum(dim=-1)
        if width < vocab:  # ties with the k-th value past the width are kept: count their mass too
            total = _kept_total(probs, threshold, need_top_k)
        else:
            total = mass_before[:, -1].clone()
        mass_before.sub_(kept)
        num_kept = (mass_before < (top_ps * total).unsqueeze(1)).sum(dim=-1).clamp(1, width)
        top_p_thr = kept.gather(1, (num_kept - 1).unsqueeze(1)).squeeze(1)
        threshold = torch.maximum(threshold, torch.where(top_ps < 1.0, top_p_thr, zero))
    if need_min_p:
        threshold = torch.maximum(threshold, largest * min_ps)
    return probs * (probs >= threshold.unsqueeze(1))


def _top_k_threshold(ranked: torch.Tensor, top_ks: torch.Tensor, vocab: int) -> torch.Tensor:
    """ranked: [N, W] descending, top_ks: [N] in [1, V] (<= W where < V) -> [N] k-th largest (0 where k == V)."""
    kth = ranked.gather(1, (top_ks.clamp(max=ranked.shape[-1]) - 1).unsqueeze(1)).squeeze(1)
    return torch.where(top_ks < vocab, kth, ranked.new_zeros(()))


def _kept_total(probs: torch.Tensor, threshold: torch.Tensor, need_top_k: bool) -> torch.Tensor:
    """probs: [N, V], threshold: [N] top-k thresholds -> [N] mass of the probabilities >= the threshold."""
    if not need_top_k:  # every threshold is 0
        return probs.sum(dim=-1)
    return (probs * (probs >= threshold.unsqueeze(1))).sum(dim=-1)


def _adaptive_ranked(probs: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor, need_top_k: bool):
    """probs: [N, V] -> the [N, W] largest probabilities, descending, for the narrowest W in 256 * 4**i (or V)
    holding every top_p row's kept mass. Reads values back: CPU only."""
    vocab = probs.shape[-1]
    width = max(256, int(torch.where(top_ks < vocab, top_ks, 1).max()))
    while width < vocab:
        ranked = probs.topk(width, dim=-1).values  # [N, width]
        threshold = _top_k_threshold(ranked, top_ks, vocab)
        inside = (ranked * (ranked >= threshold.unsqueeze(1))).sum(dim=-1)
        enough = inside >= top_ps * _kept_total(probs, threshold, need_top_k)
        cut_inside = ranked[:, -1] < threshold  # every kept token is within the width
        if bool((enough | cut_inside | (top_ps >= 1.0)).all()):
            return ranked
        width *= 4
    return probs.sort(dim=-1, descending=True).values


DRAW_BLOCK = 256
"""Vocabulary block of the two-level draw: block sums and their cumsum first, then one block's cumsum per row."""


def draw_from_probs(probs: torch.Tensor, uniforms: torch.Tensor, block: int = DRAW_BLOCK) -> torch.Tensor:
    """probs: [N, V] (unnormalized, >= 0, some mass per row), uniforms: [N] in [0, 1) -> token ids [N] int64.

    Inverse CDF in vocabulary order: the first token whose cumulative mass exceeds ``u * total``. A token with no
    mass is never returned: when round-off puts the target at the very end, the last token with mass is taken.
    Two levels, so no [N, V] scan is made (a cumsum is serial per row; block sums are one vectorized pass): the
    block is picked on the cumulative block sums, then the token on that block's own cumsum. Fixed shapes and no
    read-back, as on every accelerator path.
    """
    num_rows, vocab = probs.shape
    if vocab <= 2 * block:
        return _first_above(probs, uniforms.unsqueeze(1).to(probs.dtype) * probs.sum(-1, keepdim=True))
    probs = probs.contiguous()
    full = vocab // block
    block_sums = probs.as_strided((num_rows, full, block), (vocab, block, 1)).sum(-1)  # [N, full]
    if full * block < vocab:
        block_sums = torch.cat([block_sums, probs[:, full * block :].sum(-1, keepdim=True)], dim=1)  # [N, nb]
    block_cdf = block_sums.cumsum(dim=-1)  # [N, nb]
    target = uniforms.unsqueeze(1).to(block_cdf.dtype) * block_cdf[:, -1:]  # [N, 1]
    chosen = _first_above_in_cdf(block_cdf, target)  # [N, 1]: a block with mass
    before = torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp(min=0)), 0.0)  # [N, 1]
    offsets = chosen * block + torch.arange(block, device=probs.device)  # [N, block]
    in_vocab = offsets < vocab
    values = probs.gather(1, offsets.clamp(max=vocab - 1)) * in_vocab  # [N, block]; past the end: no mass
    within = _first_above(values, (target - before).clamp(min=0))  # [N]
    return chosen.squeeze(1) * block + within


def _first_above(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """probs: [N, W] with some mass per row, target: [N, 1] -> [N] the first column whose cumulative mass exceeds
    ``target``, or the last column with mass when none does (round-off)."""
    return _first_above_in_cdf(probs.cumsum(dim=-1), target).squeeze(1)


def _first_above_in_cdf(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cdf: [N, W] non-decreasing with a positive end, target: [N, 1] -> [N, 1] int64 (see ``_first_above``)."""
    index = torch.searchsorted(cdf, target, right=True)
    last_with_mass = torch.searchsorted(
        cdf, cdf[:, -1:].contiguous(), right=False
    )  # where it reaches its end
    return torch.minimum(index, last_with_mass)
