"""Model layers: rotary position embedding (attention: qkv_proj -> [q/k norm] -> rotary -> RadixAttention).

Rotate-half (NeoX) layout as in HF Llama: dimension i is paired with i + R/2, where R = ``rotary_dim`` is the
head_dim, or its first ``int(head_dim * partial_rotary_factor)`` dims (Phi-4-mini: 0.75) with the rest passed
through unrotated. cos/sin for every position up to ``max_position`` are precomputed once in float32 and cast
to the query dtype on use (as HF does). Supported ``rope_type``: default, linear, llama3, longrope ("su").

LongRoPE (Phi-3 / Phi-3.5 / Phi-4-mini) has two frequency sets. HF picks one per forward pass: the long set
when ``max(position_ids) + 1 > original_max_position_embeddings``, else the short one, for every position of
the pass; cos/sin are scaled by the attention factor in both cases. ``LongRopeRotaryEmbedding`` keeps both
([short rows | long rows]) and the model maps each packed token to its row with ``cache_rows`` from its
request's total length (see that class for how this relates to HF's cache-less recomputation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sglkit.layers.cpu_kernels import fused_ops as cpu_fused_ops
from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled
from sglkit.layers.triton_fused import fused_ops_enabled

__all__ = [
    "LongRopeRotaryEmbedding",
    "RotaryEmbedding",
    "SUPPORTED_ROPE_TYPES",
    "compute_inv_freq",
    "get_rope",
    "rotary_dim",
]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
ROPE_TYPE_ALIASES = {"su": "longrope"}  # the name of longrope in early Phi-3 configs


def _rope_type(params: dict[str, Any]) -> str:
    """``rope_type`` (or the older ``type``), aliases resolved; "default" when absent."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    return ROPE_TYPE_ALIASES.get(rope_type, rope_type)


def rotary_dim(head_dim: int, rope_parameters: dict[str, Any] | None) -> int:
    """Rotated dims per head: ``int(head_dim * partial_rotary_factor)`` (HF's rule); ValueError unless even, > 0."""
    factor = float((rope_parameters or {}).get("partial_rotary_factor", 1.0) or 1.0)
    dim = int(head_dim * factor)
    if not 0 < dim <= head_dim or dim % 2:
        raise ValueError(
            f"partial_rotary_factor={factor} gives {dim} rotary dims of head_dim={head_dim}; "
            "sglkit needs an even number in (0, head_dim]."
        )
    return dim


def _default_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """[dim/2] float32 inverse frequencies theta^(-2i/dim)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any], max_position: int) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths / factor, short kept, smooth blend in between."""
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context_len = params.get("original_max_position_embeddings", max_position)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _check_supported(params: dict[str, Any]) -> str:
    rope_type = _rope_type(params)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"Unsupported rope_type {rope_type!r}; sglkit supports {SUPPORTED_ROPE_TYPES}.")
    return rope_type


def compute_inv_freq(
    head_dim: int, max_position: int, rope_parameters: dict[str, Any] | None
) -> torch.Tensor:
    """[R/2] float32 inverse frequencies (R = rotary_dim) for ``rope_parameters`` (HF ``config.rope_parameters``).

    For longrope: the short set (``LongRopeRotaryEmbedding`` also builds the long one).
    """
    params = dict(rope_parameters or {})
    rope_type = _check_supported(params)
    dim = rotary_dim(head_dim, params)
    theta = float(params.get("rope_theta", 10000.0))
    if rope_type == "longrope":
        return _longrope_inv_freq(dim, theta, _longrope_factors(params, dim, "short_factor"))
    inv_freq = _default_inv_freq(dim, theta)
    if rope_type == "linear":
        inv_freq = inv_freq / params["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, params, max_position)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Applies RoPE to packed q/k using a [num_rows, R] cos|sin cache (float32, not saved in checkpoints).

    Row p holds position p (``cache_rows`` is the identity here). With R < head_dim only the first R dims of
    each head rotate. On CUDA ``forward`` is one fused Triton kernel for q and k (``sglkit.layers.triton_fused``),
    on an AVX-512 CPU one C++ pass (``sglkit.layers.cpu_kernels.fused_ops``).
    """

    def __init__(
        self, head_dim: int, max_position: int, rope_parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.rope_parameters = dict(rope_parameters or {})
        self.rope_type = _check_supported(self.rope_parameters)
        self.rotary_dim = rotary_dim(head_dim, self.rope_parameters)
        # inv_freq on CPU (as HF), cos/sin on the device being built on (meta included).
        self.register_buffer("cos_sin_cache", self._build_cache(torch.get_default_device()), persistent=False)

    def _build_cache(self, device: torch.device) -> torch.Tensor:
        """[max_position, R] cos|sin of the config's frequencies."""
        inv_freq = compute_inv_freq(self.head_dim, self.max_position, self.rope_parameters)
        return self._compute_cache(inv_freq.to(device), self.max_position)

    @staticmethod
    def _compute_cache(inv_freq: torch.Tensor, num_positions: int, scale: float = 1.0) -> torch.Tensor:
        """inv_freq: [R/2] -> [num_positions, R] = cat(cos, sin) of position * inv_freq, times ``scale``."""
        positions = torch.arange(num_positions, dtype=torch.float32, device=inv_freq.device)
        freqs = positions[:, None] * inv_freq[None, :]
        cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
        return cache * scale if scale != 1.0 else cache

    def reset_cache(self) -> None:
        """Recompute the cache on its current device (needed after ``Module.to_empty``)."""
        self.cos_sin_cache = self._build_cache(self.cos_sin_cache.device)

    def cache_rows(self, positions: torch.Tensor, token_seq_lens: torch.Tensor | None = None) -> torch.Tensor:
        """positions: [T] -> the cache row of each token: the position itself (LongRoPE also reads lengths)."""
        return positions

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [T, H, R], cos/sin: [T, 1, R/2] -> [T, H, R]."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] (cache rows), q: [T, Hq, D], k: [T, Hkv, D] -> rotated (q, k), same shapes and dtype."""
        if fused_ops_enabled(q):
            from sglkit.layers.triton_fused.rope import apply_rope

            return apply_rope(positions, q, k, self.cos_sin_cache, self.rotary_dim)
        if cpu_fused_ops_enabled(q) and k.dtype == q.dtype and self.cos_sin_cache.dtype == torch.float32:
            return cpu_fused_ops.apply_rope(positions, q, k, self.cos_sin_cache, self.rotary_dim)
        cos, sin = self.cos_sin_cache[positions].to(q.dtype).unsqueeze(1).chunk(2, dim=-1)
        if self.rotary_dim == self.head_dim:
            return self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        r = self.rotary_dim  # partial: rotate the first r dims of each head, pass the rest through
        q = torch.cat((self._rotate(q[..., :r], cos, sin), q[..., r:]), dim=-1)
        k = torch.cat((self._rotate(k[..., :r], cos, sin), k[..., r:]), dim=-1)
        return q, k

    def extra_repr(self) -> str:
        """Sizes and settings, for ``print(model)``."""
        partial = f", rotary_dim={self.rotary_dim}" if self.rotary_dim != self.head_dim else ""
        return (
            f"head_dim={self.head_dim}, max_position={self.max_position}, rope_type={self.rope_type}{partial}"
        )


def _longrope_factors(params: dict[str, Any], dim: int, key: str) -> list[float]:
    """``short_factor`` / ``long_factor``: R/2 numbers; ValueError naming the field otherwise."""
    factors = params.get(key)
    if not isinstance(factors, (list, tuple)) or len(factors) != dim // 2:
        raise ValueError(
            f"longrope needs rope_parameters[{key!r}]: a list of {dim // 2} numbers; got {factors!r}."
        )
    return [float(f) for f in factors]


def _longrope_inv_freq(dim: int, theta: float, ext_factors: list[float]) -> torch.Tensor:
    """[dim/2] float32: 1 / (ext_factor_i * theta^(2i/dim)), HF's exact expression."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (torch.tensor(ext_factors, dtype=torch.float32) * theta**exponents)


def longrope_attention_factor(params: dict[str, Any], max_position: int) -> float:
    """The cos/sin scale: ``attention_factor``, else sqrt(1 + ln(factor) / ln(original_max)) (1 if factor <= 1).

    ``factor`` defaults to max_position_embeddings / original_max_position_embeddings (HF, Phi-3).
    """
    original = int(params["original_max_position_embeddings"])
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    factor = params.get("factor")
    factor = max_position / original if factor is None else float(factor)
    if factor <= 1.0:
        return 1.0
    if original <= 1:
        raise ValueError(
            "longrope with original_max_position_embeddings <= 1 needs an explicit attention_factor."
        )
    return math.sqrt(1 + math.log(factor) / math.log(original))


class LongRopeRotaryEmbedding(RotaryEmbedding):
    """LongRoPE: short and long frequency sets, cos/sin scaled by the attention factor; cache [orig + max, R].

    Rows [0, orig) are positions 0 .. orig - 1 with the short factors, rows [orig, orig + max) positions
    0 .. max - 1 with the long ones (orig = ``original_max_position_embeddings``). ``cache_rows`` sends every
    token of a request whose total length after this pass exceeds orig to the long rows, else to the short
    ones: HF's rule (``max(position_ids) + 1 > orig``) applied per request, so a batch never changes a
    request's result. The model must call ``cache_rows`` (``uses_cache_rows`` says this one does); a decoder
    that passes raw positions gets a ValueError on its first forward instead of silently short factors.

    Served requests: a KV cache keeps keys rotated by the set in force when they were computed. That equals
    HF's model forward with a KV cache (``model(ids, cache=...)`` also picks the set per call). A request that
    crosses orig after part of it is cached (chunked prefill, decode, a radix prefix) keeps its earlier keys
    on the short set; HF ``generate`` instead drops its cache once at the crossing and recomputes the whole
    sequence with the long set, so from that step on the logits differ. SGLang and vLLM choose per position
    (< orig short) or per batch (any position > orig: all long), which also differs from HF.
    """

    def __init__(self, head_dim: int, max_position: int, rope_parameters: dict[str, Any]) -> None:
        params = dict(rope_parameters)
        if params.get("original_max_position_embeddings") is None:
            raise ValueError(
                "rope_type 'longrope' needs rope_parameters['original_max_position_embeddings']."
            )
        self.original_max_position = int(params["original_max_position_embeddings"])
        self.attention_factor = longrope_attention_factor(params, max_position)
        self.uses_cache_rows = False  # set by a decoder that maps positions through cache_rows
        super().__init__(head_dim, max_position, params)

    def _build_cache(self, device: torch.device) -> torch.Tensor:
        """[orig + max_position, R]: short rows for positions < orig, then long rows for all positions."""
        theta = float(self.rope_parameters.get("rope_theta", 10000.0))
        short, long = (
            _longrope_inv_freq(
                self.rotary_dim, theta, _longrope_factors(self.rope_parameters, self.rotary_dim, k)
            )
            for k in ("short_factor", "long_factor")
        )
        scale = self.attention_factor
        return torch.cat(
            (
                self._compute_cache(short.to(device), self.original_max_position, scale),
                self._compute_cache(long.to(device), self.max_position, scale),
            )
        )

    def cache_rows(self, positions: torch.Tensor, token_seq_lens: torch.Tensor | None = None) -> torch.Tensor:
        """positions, token_seq_lens (each token's request length after this pass): [T] -> cache rows [T]."""
        if token_seq_lens is None:
            raise ValueError("LongRoPE picks short or long factors by request length: pass token_seq_lens.")
        return positions + self.original_max_position * (token_seq_lens > self.original_max_position)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (from ``cache_rows``): [T], q: [T, Hq, D], k: [T, Hkv, D] -> rotated (q, k)."""
        if not self.uses_cache_rows:
            raise ValueError(
                "rope_type 'longrope' needs a decoder that maps positions through cache_rows "
                "(sglkit's Phi3ForCausalLM does); this model's decoder does not."
            )
        return super().forward(positions, q, k)

    def extra_repr(self) -> str:
        """Settings, for ``print(model)``."""
        return (
            f"{super().extra_repr()}, original_max_position={self.original_max_position}, "
            f"attention_factor={self.attention_factor:.4f}"
        )


def get_rope(head_dim: int, max_position: int, rope_parameters: dict[str, Any] | None) -> RotaryEmbedding:
    """The RotaryEmbedding for ``rope_parameters`` ({'rope_type', 'rope_theta', ...}); ValueError if unsupported."""
    params = dict(rope_parameters or {})
    if _check_supported(params) == "longrope":
        return LongRopeRotaryEmbedding(head_dim, max_position, params)
    return RotaryEmbedding(head_dim, max_position, params)
