"""Logits -> next token ids (scheduler -> runner -> here): the names of ``sglkit.runtime.executor.sampling``.

The sampler lives in the ``sampling`` package (one module per concept); this module keeps the old import path.
"""

from sglkit.runtime.executor.sampling import (
    PenaltyCounts,
    Sampler,
    SamplingBatchInfo,
    apply_logit_processors,
    compute_logprobs,
    draw_from_probs,
    filter_probs,
    get_token_logprobs,
    get_top_logprobs,
    make_generator,
)

__all__ = [
    "PenaltyCounts",
    "Sampler",
    "SamplingBatchInfo",
    "apply_logit_processors",
    "compute_logprobs",
    "draw_from_probs",
    "filter_probs",
    "get_token_logprobs",
    "get_top_logprobs",
    "make_generator",
]
