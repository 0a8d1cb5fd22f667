"""Counter-based random numbers for seeded rows (sampler -> here): u = hash(seed, position), no generator state.

A request with ``sampling_seed`` draws the uniform of its n-th output token (``position`` n, counting from 0) as
MurmurHash3 (x86, 32-bit, hash seed 0) of the 12 bytes ``seed_lo, seed_hi, position`` (little-endian uint32
words), top 24 bits scaled to [0, 1). The draw depends only on (seed, position): the same tokens whatever else
is in the batch, whichever order rows come in, and after a retraction or a restart.

Everything runs as int64 tensor ops on values kept below 2**49 (32-bit products are split into 16-bit halves), so
the result is exact and identical on CPU and CUDA, needs no host sync and can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["murmur3_words", "seed_words", "seeded_uniforms"]

_MASK32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_F1 = 0x85EBCA6B
_F2 = 0xC2B2AE35
_INV_2_24 = 1.0 / (1 << 24)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x: int64 in [0, 2**32) -> (x * c) mod 2**32 without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    """x: int64 in [0, 2**32) -> 32-bit rotate left by r."""
    return ((x << r) & _MASK32) | (x >> (32 - r))


def murmur3_words(words: Sequence[torch.Tensor], seed: int = 0) -> torch.Tensor:
    """words: each [N] int64 in [0, 2**32) -> [N] int64 MurmurHash3_x86_32 of the 4*len(words) little-endian bytes."""
    h = torch.full_like(words[0], seed & _MASK32)
    for word in words:
        k = _mul32(_rotl32(_mul32(word, _C1), 15), _C2)
        h = _rotl32(h ^ k, 13)
        h = (_mul32(h, 5) + 0xE6546B64) & _MASK32
    h = h ^ (4 * len(words))
    h = h ^ (h >> 16)
    h = _mul32(h, _F1)
    h = h ^ (h >> 13)
    h = _mul32(h, _F2)
    return h ^ (h >> 16)


def seed_words(seed: int) -> tuple[int, int]:
    """A sampling_seed (any int; taken mod 2**64) -> its (low, high) 32-bit words."""
    seed &= (1 << 64) - 1
    return seed & _MASK32, seed >> 32


def seeded_uniforms(seed_lo: torch.Tensor, seed_hi: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """seed_lo, seed_hi, positions: [N] int64 (32-bit values) -> [N] float32 uniforms in [0, 1 - 2**-24]."""
    h = murmur3_words([seed_lo, seed_hi, positions & _MASK32])
    return (h >> 8).to(torch.float32) * _INV_2_24
