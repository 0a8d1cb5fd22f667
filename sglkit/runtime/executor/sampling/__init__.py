"""Sampling (scheduler -> model runner -> here): logits -> next token ids, with no host sync on the device path.

- ``batch_info``: ``SamplingBatchInfo``, one step's per-row parameters as device tensors (built on the host).
- ``penalties``: ``PenaltyCounts``, per-request token counts kept on the device across steps.
- ``seeded``: counter-based uniforms ``hash(seed, position)`` for seeded rows.
- ``filters``: top-k / top-p / min-p thresholds from one sort, and the inverse-CDF draw.
- ``sampler``: ``Sampler.sample`` (the order of operations) and ``apply_logit_processors``.
- ``logprobs``: log-softmax of the raw logits, chosen tokens' logprobs, top-k logprobs.
"""

from sglkit.runtime.executor.sampling.batch_info import SamplingBatchInfo
from sglkit.runtime.executor.sampling.filters import draw_from_probs, filter_probs
from sglkit.runtime.executor.sampling.logprobs import compute_logprobs, get_token_logprobs, get_top_logprobs
from sglkit.runtime.executor.sampling.penalties import (
    PenaltyCounts,
    apply_penalties,
    apply_penalties_sparse,
    has_penalties,
)
from sglkit.runtime.executor.sampling.sampler import Sampler, apply_logit_processors, make_generator
from sglkit.runtime.executor.sampling.seeded import seeded_uniforms

__all__ = [
    "PenaltyCounts",
    "Sampler",
    "SamplingBatchInfo",
    "apply_logit_processors",
    "apply_penalties",
    "apply_penalties_sparse",
    "compute_logprobs",
    "draw_from_probs",
    "filter_probs",
    "get_token_logprobs",
    "get_top_logprobs",
    "has_penalties",
    "make_generator",
    "seeded_uniforms",
]
