"""Torch-native attention backend (sglkit/layers/attention/torch_native.py) vs a naive per-token softmax.

Random paged layouts (random pool slots, cached prefixes, slots shared between requests) run through
``RadixAttention`` in extend and decode passes; every path of the backend is hit: extend with and without a
cached prefix, decode through the padded gather, the workspace (rebuilt, then appended to) and the shared-prefix
path. Each pass runs several layers at once, one per option set (none, sliding window, logit cap, both), and
each output token is compared with softmax(cap(q k^T * scale)) v over the keys its position may see.
"""

from __future__ import annotations

import math

import pytest
import torch

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention import torch_native
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 4, 2, 8
# (sliding_window, logit_cap) of each layer of a pass; layer id = index.
OPTIONS = [(None, None), (5, None), (None, 1.5), (7, 2.0), (1, None)]


def naive_attention(q, keys, values, q_pos: int, scaling: float, window, cap) -> torch.Tensor:
    """q: [Hq, D]; keys/values: [L, Hkv, D] by position -> [Hq, D]; float64, softmax over the allowed keys."""
    group = q.shape[0] // keys.shape[1]
    keys = keys.double().repeat_interleave(group, dim=1)  # [L, Hq, D]: query head h reads KV head h // group
    values = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("hd,lhd->hl", q.double(), keys) * scaling
    if cap is not None:
        scores = cap * torch.tanh(scores / cap)
    allowed = torch.tensor([p <= q_pos and (window is None or p > q_pos - window) for p in range(len(keys))])
    weights = torch.softmax(scores[:, allowed], dim=-1)
    return torch.einsum("hl,lhd->hd", weights, values[allowed])


class Paged:
    """A KV pool with one layer per option set, request rows and a random slot order."""

    def __init__(self, seed: int, pool_size: int = 600) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.kv_pool = MHATokenToKVPool(pool_size, len(OPTIONS), NUM_KV_HEADS, HEAD_DIM, torch.float32)
        self.req_pool = ReqToTokenPool(size=8, max_context_len=256)
        self.free = (torch.randperm(pool_size, generator=self.gen) + 1).tolist()  # random, never slot 0
        self.lens: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.backend = TorchNativeAttnBackend()
        self.layers = [
            RadixAttention(
                i, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM**-0.5, sliding_window=w, logit_cap=c
            )
            for i, (w, c) in enumerate(OPTIONS)
        ]

    def alloc(self, n: int) -> torch.Tensor:
        out, self.free = self.free[:n], self.free[n:]
        return torch.tensor(out, dtype=torch.int64)

    def randn(self, *shape) -> torch.Tensor:
        return 2.0 * torch.randn(*shape, generator=self.gen)  # scores large enough for the cap to matter

    def add_cached(self, rid: str, length: int, share_from: str | None = None, shared: int = 0) -> None:
        """A request whose first ``length`` tokens are already in the pool (the first ``shared`` slots are
        ``share_from``'s, as after a radix hit); random K/V in every layer."""
        self.rows[rid] = self.req_pool.alloc()
        if shared:
            src = self.req_pool.req_to_token[self.rows[share_from], :shared].clone()
            self.req_pool.write(self.rows[rid], 0, src)
        loc = self.alloc(length - shared)
        self.req_pool.write(self.rows[rid], shared, loc)
        for layer in range(len(OPTIONS)):
            self.kv_pool.set_kv_buffer(
                layer,
                loc,
                self.randn(len(loc), NUM_KV_HEADS, HEAD_DIM),
                self.randn(len(loc), NUM_KV_HEADS, HEAD_DIM),
            )
        self.lens[rid] = length

    def run(self, items: list[tuple[str, int]], mode: ForwardMode) -> None:
        """One pass: request ``rid`` adds ``n`` new tokens; checks every layer's output against the reference."""
        prefix_lens = [self.lens.get(rid, 0) for rid, _ in items]
        ext_lens = [n for _, n in items]
        locs = []
        for rid, n in items:
            if rid not in self.rows:
                self.rows[rid], self.lens[rid] = self.req_pool.alloc(), 0
            loc = self.alloc(n)
            self.req_pool.write(self.rows[rid], self.lens[rid], loc)
            locs.append(loc)
        seq_lens = [p + e for p, e in zip(prefix_lens, ext_lens)]
        num_tokens = sum(ext_lens)
        batch = ForwardBatch(
            forward_mode=mode,
            batch_size=len(items),
            input_ids=torch.zeros(num_tokens, dtype=torch.int64),
            positions=torch.cat([torch.arange(p, s) for p, s in zip(prefix_lens, seq_lens)]),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor([self.rows[rid] for rid, _ in items]),
            seq_lens=torch.tensor(seq_lens),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=prefix_lens if mode.is_extend() else [0] * len(items),
            extend_seq_lens_cpu=ext_lens,
            logits_indices=torch.arange(num_tokens),
            req_to_token_pool=self.req_pool,
            token_to_kv_pool=self.kv_pool,
            attn_backend=self.backend,
            extend_start_loc_cpu=[sum(ext_lens[:i]) for i in range(len(items))],
        )
        self.backend.init_forward_metadata(batch)
        for layer, (window, cap) in zip(self.layers, OPTIONS):
            q = self.randn(num_tokens, NUM_HEADS * HEAD_DIM)
            k = self.randn(num_tokens, NUM_KV_HEADS * HEAD_DIM)
            v = self.randn(num_tokens, NUM_KV_HEADS * HEAD_DIM)
            out = layer(q, k, v, batch).view(num_tokens, NUM_HEADS, HEAD_DIM)
            k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
            token = 0
            for (rid, _), prefix, seq_len in zip(items, prefix_lens, seq_lens):
                slots = self.req_pool.req_to_token[self.rows[rid], :seq_len]
                for pos in range(prefix, seq_len):
                    ref = naive_attention(
                        q[token].view(NUM_HEADS, HEAD_DIM),
                        k_buf[slots],
                        v_buf[slots],
                        pos,
                        layer.scaling,
                        window,
                        cap,
                    )
                    torch.testing.assert_close(
                        out[token].double(), ref, atol=1e-5, rtol=1e-5, msg=f"{window=} {cap=} {rid=} {pos=}"
                    )
                    token += 1
        for rid, n in items:
            self.lens[rid] += n


@pytest.mark.parametrize("seed", [0, 1])
def test_extend_with_and_without_cached_prefix(seed):
    paged = Paged(seed)
    paged.add_cached("a", 9)
    paged.add_cached("b", 12, share_from="a", shared=6)  # a radix hit: b's first 6 slots are a's
    paged.run([("fresh", 11), ("a", 4), ("b", 1), ("fresh2", 3)], ForwardMode.EXTEND)


@pytest.mark.parametrize("use_workspace", [True, False], ids=["workspace", "padded-gather"])
def test_decode_steps(monkeypatch, use_workspace):
    if not use_workspace:
        monkeypatch.setattr(torch_native, "WORKSPACE_MAX_BYTES", 0)
    paged = Paged(2)
    for rid, length in (("a", 3), ("b", 17), ("c", 9)):
        paged.add_cached(rid, length)
    for _ in range(3):  # the workspace is built on the first step, then appended to
        paged.run([("a", 1), ("b", 1), ("c", 1)], ForwardMode.DECODE)
        assert (paged.backend.workspace is not None) == use_workspace


def test_decode_with_shared_prefix():
    paged = Paged(3)
    prefix = torch_native.SHARED_PREFIX_MIN_TOKENS + 8
    paged.add_cached("a", prefix + 5)
    paged.add_cached("b", prefix + 2, share_from="a", shared=prefix)
    paged.add_cached("c", prefix + 11, share_from="a", shared=prefix)
    paged.run([("a", 1), ("b", 1), ("c", 1)], ForwardMode.DECODE)
    assert paged.backend.workspace is None  # the shared-prefix path ran, not the workspace


def test_options_default_to_off_and_are_validated():
    layer = RadixAttention(0, 2, 1, 4, 0.5)
    assert layer.sliding_window is None and layer.logit_cap is None and not layer.has_options
    with pytest.raises(ValueError, match="sliding_window"):
        RadixAttention(0, 2, 1, 4, 0.5, sliding_window=0)
    with pytest.raises(ValueError, match="logit_cap"):
        RadixAttention(0, 2, 1, 4, 0.5, logit_cap=-1.0)


def test_capped_attention_matches_hf_gemma2_eager():
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    gen = torch.Generator().manual_seed(4)
    q, k, v = (3 * torch.randn(1, 2, 5, 8, generator=gen) for _ in range(3))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    module = torch.nn.Module()
    module.head_dim, module.num_key_value_groups, module.training = 8, 1, False
    additive = torch.zeros(5, 5).masked_fill(~causal, -math.inf)
    ref, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.3, softcap=2.0)
    ours = torch_native.capped_attention(q, k, v, causal, 0.3, 2.0)
    torch.testing.assert_close(ours.transpose(1, 2), ref, atol=1e-6, rtol=1e-6)
