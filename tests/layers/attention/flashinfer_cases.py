"""Shared cases for the FlashInfer backend tests: ForwardBatches over random paged layouts (``triton_cases``).

``make_batch`` builds the batch of requests adding tokens after their prefixes; ``static_decode_batch`` pads a
decode batch as the CUDA-graph runner does; ``twin_pools`` gives two identical layouts, one per backend compared.
"""

from __future__ import annotations

import torch

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention.base import RadixAttention
from tests.layers.attention.triton_cases import DEVICE, make_batch, make_paged

NUM_KV_HEADS, HEAD_DIM = 2, 64


def static_decode_batch(paged, backend, reqs, lens, bs) -> ForwardBatch:
    """The CUDA-graph runner's padded DECODE batch: ``reqs`` at KV lengths ``lens``, rows past them padding
    (request row 0, length 1, writing slot 0)."""
    batch = make_batch(paged, backend, ForwardMode.DECODE, reqs, [n - 1 for n in lens], [1] * len(reqs))
    pad = bs - len(reqs)
    batch.batch_size = bs
    for name in ("input_ids", "positions", "out_cache_loc", "req_pool_indices"):
        setattr(batch, name, torch.cat([getattr(batch, name), getattr(batch, name).new_zeros(pad)]))
    batch.seq_lens = torch.cat([batch.seq_lens, batch.seq_lens.new_ones(pad)])
    batch.seq_lens_cpu = list(lens) + [1] * pad
    return batch


def twin_pools(dtype, lengths, num_layers=2):
    """Two identical random layouts (same slots, same stale K/V): one for torch_native, one for flashinfer."""
    pools = [make_paged(NUM_KV_HEADS, HEAD_DIM, dtype, num_layers=num_layers, seed=11) for _ in range(2)]
    for paged in pools:
        torch.manual_seed(1)
        for n in lengths:
            paged.add_request(n)
    return pools


def qkv_maker(num_heads: int, dtype: torch.dtype, seed: int = 2):
    """qkv(num_tokens) -> random q [T, Hq, D], k and v [T, Hkv, D] on DEVICE, from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)

    def qkv(num_tokens: int):
        shapes = [(num_tokens, num_heads, HEAD_DIM)] + [(num_tokens, NUM_KV_HEADS, HEAD_DIM)] * 2
        return [torch.randn(s, generator=gen).to(DEVICE, dtype) for s in shapes]

    return qkv


def run_layer(layer: RadixAttention, batch: ForwardBatch, q, k, v) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq * D] through RadixAttention (store K/V, then attend)."""
    return layer(q.flatten(1), k.flatten(1), v.flatten(1), batch)
