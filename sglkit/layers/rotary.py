"""Model layers: rotary position embedding (attention: qkv_proj -> [q/k norm] -> rotary -> RadixAttention).

Rotate-half (NeoX) layout as in HF Llama: dimension i is paired with i + D/2. cos/sin for every position
up to ``max_position`` are precomputed once in float32 and cast to the query dtype on use (as HF does).
Supported ``rope_type``: default, linear, llama3.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """[D/2] float32 inverse frequencies theta^(-2i/D)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))


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


class RotaryEmbedding(nn.Module):
    """Applies RoPE to packed q/k using a [max_position, D] cos|sin cache (float32, not saved in checkpoints)."""

    def __init__(
        self, head_dim: int, max_position: int, rope_parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.rope_parameters = dict(rope_parameters or {})
        self.rope_type = _rope_type(self.rope_parameters)
        # inv_freq on CPU (as HF), cos/sin on the device being built on (meta included).
        inv_freq = compute_inv_freq(head_dim, max_position, self.rope_parameters)
        cache = self._compute_cache(inv_freq.to(torch.get_default_device()))
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def _compute_cache(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """inv_freq: [D/2] -> [max_position, D] = cat(cos, sin) of position * inv_freq."""
        positions = torch.arange(self.max_position, dtype=torch.float32, device=inv_freq.device)
        freqs = positions[:, None] * inv_freq[None, :]
        return torch.cat((freqs.cos(), freqs.sin()), dim=-1)

    def reset_cache(self) -> None:
        """Recompute the cache on its current device (needed after ``Module.to_empty``)."""
        inv_freq = compute_inv_freq(self.head_dim, self.max_position, self.rope_parameters)
        self.cos_sin_cache = self._compute_cache(inv_freq.to(self.cos_sin_cache.device))

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [T, H, D], cos/sin: [T, 1, D/2] -> [T, H, D]."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T], q: [T, Hq, D], k: [T, Hkv, D] -> rotated (q, k), same shapes and dtype."""
        cos, sin = self.cos_sin_cache[positions].to(q.dtype).unsqueeze(1).chunk(2, dim=-1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def extra_repr(self) -> str:
        """Sizes and settings, for ``print(model)``."""
        return f"head_dim={self.head_dim}, max_position={self.max_position}, rope_type={self.rope_type}"


def _rope_type(params: dict[str, Any]) -> str:
    return params.get("rope_type", params.get("type", "default"))


def compute_inv_freq(
    head_dim: int, max_position: int, rope_parameters: dict[str, Any] | None
) -> torch.Tensor:
    """[D/2] float32 inverse frequencies for ``rope_parameters`` (HF ``config.rope_parameters`` layout)."""
    params = dict(rope_parameters or {})
    rope_type = _rope_type(params)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"Unsupported rope_type {rope_type!r}; sglkit supports {SUPPORTED_ROPE_TYPES}.")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported by sglkit's rotary embedding.")
    inv_freq = _default_inv_freq(head_dim, float(params.get("rope_theta", 10000.0)))
    if rope_type == "linear":
        inv_freq = inv_freq / params["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, params, max_position)
    return inv_freq


def get_rope(head_dim: int, max_position: int, rope_parameters: dict[str, Any] | None) -> RotaryEmbedding:
    """The RotaryEmbedding for ``rope_parameters`` ({'rope_type', 'rope_theta', ...}); ValueError if unsupported."""
    return RotaryEmbedding(head_dim, max_position, rope_parameters)
