"""Seeded uniforms (sglkit/runtime/executor/sampling/seeded.py): MurmurHash3 on tensors equals the reference
algorithm (published test vectors and a byte-wise Python version), uniforms cover [0, 1) evenly, and a draw
depends only on (seed, position)."""

from __future__ import annotations

import struct

import pytest
import torch

from sglkit.runtime.executor.sampling.seeded import murmur3_words, seed_words, seeded_uniforms
from tests.runtime.executor.host_sync import no_host_sync


def murmur3_bytes(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 in plain Python (Austin Appleby's algorithm, whole 4-byte blocks only)."""
    assert len(data) % 4 == 0
    mask = 0xFFFFFFFF
    h = seed & mask
    for (k,) in struct.iter_unpack("<I", data):
        k = (k * 0xCC9E2D51) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * 0x1B873593) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def words(*values: int) -> list[torch.Tensor]:
    return [torch.tensor([v], dtype=torch.int64) for v in values]


@pytest.mark.parametrize(
    "key, seed, expected",
    [  # published MurmurHash3_x86_32 vectors (little-endian 4-byte keys)
        (b"\x21\x43\x65\x87", 0, 0xF55B516B),
        (b"\x21\x43\x65\x87", 0x5082EDEE, 0x2362F9DE),
        (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
        (b"\xff\xff\xff\xff", 0, 0x76293B50),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
    ],
)
def test_published_vectors(key, seed, expected):
    assert murmur3_bytes(key, seed) == expected
    assert int(murmur3_words(words(*struct.unpack("<I", key)), seed)) == expected


def test_three_words_match_the_bytewise_reference():
    gen = torch.Generator().manual_seed(0)
    cols = [torch.randint(0, 2**32, (500,), generator=gen, dtype=torch.int64) for _ in range(3)]
    cols[0][:4] = torch.tensor([0, 2**32 - 1, 1, 2**31])  # edge words
    got = murmur3_words(cols).tolist()
    for i in range(500):
        key = struct.pack("<III", *(int(c[i]) for c in cols))
        assert got[i] == murmur3_bytes(key)


def test_seed_words_cover_every_sampling_seed():
    assert seed_words(0) == (0, 0)
    assert seed_words(2**64 - 1) == (2**32 - 1, 2**32 - 1)
    assert seed_words(-1) == seed_words(2**64 - 1)  # taken mod 2**64
    assert seed_words((7 << 32) | 5) == (5, 7)
    assert seed_words(2**64 + 3) == (3, 0)  # seed + j of an n > 1 request may pass 2**64


def test_uniforms_are_even_and_depend_only_on_seed_and_position():
    n = 20_000
    positions = torch.arange(n, dtype=torch.int64)
    lo, hi = (torch.full((n,), w, dtype=torch.int64) for w in seed_words(1234))
    with no_host_sync():
        u = seeded_uniforms(lo, hi, positions)
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    assert torch.all((counts - n / 10).abs() < 5 * (n / 10) ** 0.5)  # ~5 sigma per bin
    # Serial correlation between consecutive positions is small.
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.03
    # The same (seed, position) pairs in another order and among other seeds give the same numbers.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:100]
    other_lo, other_hi = seed_words(99)
    mixed_lo = torch.cat([lo[perm], torch.full((50,), other_lo, dtype=torch.int64)])
    mixed_hi = torch.cat([hi[perm], torch.full((50,), other_hi, dtype=torch.int64)])
    mixed_pos = torch.cat([positions[perm], torch.arange(50, dtype=torch.int64)])
    again = seeded_uniforms(mixed_lo, mixed_hi, mixed_pos)
    assert torch.equal(again[:100], u[perm])
    assert not torch.equal(again[100:], u[:50])  # another seed, other numbers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_equals_cpu_bit_for_bit():
    gen = torch.Generator().manual_seed(2)
    cols = [torch.randint(0, 2**32, (4096,), generator=gen, dtype=torch.int64) for _ in range(3)]
    cpu = seeded_uniforms(*cols)
    cuda = seeded_uniforms(*(c.cuda() for c in cols))
    assert torch.equal(cpu, cuda.cpu())
